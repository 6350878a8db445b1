"""Tasks: how a run is evaluated. One function per task turns predictions into the papers' metrics.

==========  =================================================  =======================================
task        predictions                                        metrics (``metrics.json`` keys)
==========  =================================================  =======================================
vqa         generation, ranking ``eval.candidates``, or the   ``accuracy`` (exact match, per kind);
            ``answer_head`` method's class (classification)
                                                               ``vqa_accuracy`` (official VQAv2) when
                                                               samples carry several answers
caption     beam search (``eval.num_beams``, default 5)        ``bleu1..4``, ``meteor``, ``rouge_l``,
                                                               ``cider`` (CIDEr-D), ``spice`` optional
ve          ranking yes / maybe / no                           ``accuracy`` (per gold label)
refexp      generation of ``[x1, y1, x2, y2]`` (thousandths)   ``acc@0.5``, ``miou``, ``unparsed``
instruct    generation                                         ``accuracy``; with ``eval.mme``:
                                                               ``mme/acc``, ``mme/acc_plus``, ``mme/score``
==========  =================================================  =======================================
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import nn

from mmpt.data import Sample, text_to_box
from mmpt.evaluate import accuracy, classify, predict
from mmpt.methods import ATTACH_PREFIX
from mmpt.metrics import caption_scores, grounding_scores, mme_scores, vqa_scores
from mmpt.ranking import rank_candidates
from mmpt.runconfig import EvalConfig

MAIN_METRIC = {"vqa": "accuracy", "caption": "cider", "ve": "accuracy", "refexp": "acc@0.5", "instruct": "accuracy"}
"""The metric that picks the best checkpoint unless ``eval.metric`` names another (higher is better)."""

TASK_METRICS = {
    "vqa": {"accuracy", "vqa_accuracy"},
    "caption": {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice"},
    "ve": {"accuracy"},
    "refexp": {"acc@0.5", "miou"},
    "instruct": {"accuracy"},
}
"""Overall metrics each task can report (``eval.metric`` may also name a per-kind one, e.g. ``accuracy/color``)."""

VE_CANDIDATES = ("yes", "maybe", "no")
log = logging.getLogger("mmpt")


@dataclass
class Evaluation:
    """Metrics (flat ``name -> number``) and one row per sample for ``predictions_<tag>.jsonl``."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]


def candidates_of(config: EvalConfig, task: str) -> list[str] | None:
    """The answers to rank: ``eval.candidates`` (a list or a file of one answer per line), else the task's own."""
    value = config.candidates
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"eval.candidates: answer list {path} not found (one answer per line)")
        value = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if value is not None:
        return list(value)
    return list(VE_CANDIDATES) if task == "ve" else None


def image_size(sample: Sample) -> tuple[int, int]:
    """(width, height) of a sample's original image (from the reader, else read from the file)."""
    if sample.image_size is not None:
        return sample.image_size
    if not isinstance(sample.image, Path | str):
        return sample.image.shape[1], sample.image.shape[0]
    with Image.open(sample.image) as im:
        return im.size


def task_metrics(task: str, samples: Sequence[Sample], predictions: Sequence[str], config: EvalConfig) -> dict[str, float]:
    """The task's metrics for ``predictions`` (one per sample, in order)."""
    if task == "caption":
        ids = [str(i) for i in range(len(samples))]
        return caption_scores(
            dict(zip(ids, predictions, strict=True)),
            {i: list(s.references) for i, s in zip(ids, samples, strict=True)},
            spice=config.spice,
        )
    if task == "refexp":
        missing = [s.id for s in samples if s.box is None]
        if missing:
            raise ValueError(f"refexp evaluation needs a box per sample; {len(missing)} have none (e.g. {missing[0]})")
        boxes = [text_to_box(p, image_size(s)) for s, p in zip(samples, predictions, strict=True)]
        return grounding_scores(boxes, [s.box for s in samples])  # type: ignore[misc]
    metrics = accuracy(samples, predictions)
    if task == "vqa" and any(len(s.answers) > 1 for s in samples):
        metrics.update(vqa_scores(predictions, [s.references for s in samples], [s.kind for s in samples]))
    if task == "instruct" and config.mme:
        records = [(s.kind or "all", str(s.image_id), p, s.target) for s, p in zip(samples, predictions, strict=True)]
        per_image = Counter((r[0], r[1]) for r in records)
        odd = sum(n != 2 for n in per_image.values())
        if odd:
            log.warning("MME scoring: %d of %d images do not have exactly 2 questions (accuracy+ needs the pair; "
                        "keep data.eval_size: null)", odd, len(per_image))
        metrics.update(mme_scores(records))
    return metrics


def predict_task(
    task: str,
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    config: EvalConfig,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    progress: bool = True,
) -> list[str]:
    """The predictions for ``samples``: the answer head's class, a ranked candidate, or generated text."""
    candidates = candidates_of(config, task)
    head = getattr(model, f"{ATTACH_PREFIX}answer_head", None)
    if head is not None:  # VQA as classification over the head's answer list
        return classify(model, processor, samples, head, config.batch_size, autocast, progress)
    if candidates is not None:
        return rank_candidates(model, processor, samples, candidates, config.batch_size, autocast, progress,
                               candidate_batch_size=config.candidate_batch_size)
    beams = config.num_beams or (5 if task == "caption" else 1)
    return predict(model, processor, samples, config.batch_size, config.max_new_tokens, autocast, progress,
                   num_beams=beams)


def evaluation(task: str, samples: Sequence[Sample], predictions: Sequence[str], config: EvalConfig) -> Evaluation:
    """Metrics and per-sample rows for ``predictions``."""
    rows = [
        {"id": s.id, "image_id": s.image_id, "image": str(s.image) if isinstance(s.image, Path) else None,
         "prompt": s.prompt, "target": s.target, "prediction": p, "kind": s.kind}
        for s, p in zip(samples, predictions, strict=True)
    ]
    return Evaluation(task_metrics(task, samples, predictions, config), rows)


def evaluate_task(
    task: str,
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    config: EvalConfig,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    progress: bool = True,
) -> Evaluation:
    """Predict ``samples`` as ``task`` and ``config`` say, and score the predictions."""
    predictions = predict_task(task, model, processor, samples, config, autocast, progress)
    return evaluation(task, samples, predictions, config)


def main_metric(task: str, config: EvalConfig) -> str:
    """The metric used to pick the best checkpoint."""
    return config.metric or MAIN_METRIC[task]
