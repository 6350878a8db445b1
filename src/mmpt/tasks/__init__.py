"""Tasks: how a run is evaluated. One module per task holds its scoring (and its own prediction machinery);
this package picks the predictions and dispatches to the task.

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

Modules: :mod:`~mmpt.tasks.vqa` (VQAv2 accuracy, the answer head, candidate ranking), :mod:`~mmpt.tasks.caption`
(COCO caption metrics, SCST), :mod:`~mmpt.tasks.ve`, :mod:`~mmpt.tasks.refexp`, :mod:`~mmpt.tasks.instruct`
(MME), and :mod:`~mmpt.tasks.common` (images, batches, generation, exact-match accuracy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mmpt.data import Sample
from mmpt.methods import ATTACH_PREFIX
from mmpt.runconfig import EvalConfig
from mmpt.tasks import caption, instruct, refexp, ve, vqa
from mmpt.tasks.common import image_size, predict
from mmpt.tasks.vqa import classify, rank_candidates


@dataclass(frozen=True)
class Task:
    """A task: its scoring function, the metrics it reports, the one that picks the best checkpoint (higher is
    better), the answers it ranks by default and its default beam count."""

    name: str
    score: Callable[[Sequence[Sample], Sequence[str], EvalConfig], dict[str, float]]
    metrics: frozenset[str]
    main_metric: str
    candidates: tuple[str, ...] | None = None
    num_beams: int = 1


TASKS = {t.name: t for t in (
    Task("vqa", vqa.score, frozenset({"accuracy", "vqa_accuracy"}), "accuracy"),
    Task("caption", caption.score, frozenset({"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider",
                                              "spice"}), "cider", num_beams=5),
    Task("ve", ve.score, frozenset({"accuracy"}), "accuracy", candidates=ve.CANDIDATES),
    Task("refexp", refexp.score, frozenset({"acc@0.5", "miou"}), "acc@0.5"),
    Task("instruct", instruct.score, frozenset({"accuracy"}), "accuracy"),
)}

MAIN_METRIC = {name: t.main_metric for name, t in TASKS.items()}
"""The metric that picks the best checkpoint unless ``eval.metric`` names another (higher is better)."""

TASK_METRICS = {name: set(t.metrics) for name, t in TASKS.items()}
"""Overall metrics each task can report (``eval.metric`` may also name a per-kind one, e.g. ``accuracy/color``)."""


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
    own = TASKS[task].candidates
    return list(own) if own is not None else None


def task_metrics(task: str, samples: Sequence[Sample], predictions: Sequence[str], config: EvalConfig) -> dict[str, float]:
    """The task's metrics for ``predictions`` (one per sample, in order)."""
    return TASKS[task].score(samples, predictions, config)


def predict_task(
    task: str,
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    config: EvalConfig,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    progress: bool = True,
    label: str = "eval",
) -> list[str]:
    """The predictions for ``samples``: the answer head's class, a ranked candidate, or generated text
    (``label`` names the generation progress bar: ``eval``, ``predict``)."""
    candidates = candidates_of(config, task)
    head = getattr(model, f"{ATTACH_PREFIX}answer_head", None)
    if head is not None:  # VQA as classification over the head's answer list
        return classify(model, processor, samples, head, config.batch_size, autocast, progress)
    if candidates is not None:
        return rank_candidates(model, processor, samples, candidates, config.batch_size, autocast, progress,
                               candidate_batch_size=config.candidate_batch_size)
    beams = config.num_beams or TASKS[task].num_beams
    return predict(model, processor, samples, config.batch_size, config.max_new_tokens, autocast, progress,
                   num_beams=beams, label=label)


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


__all__ = [
    "MAIN_METRIC", "TASKS", "TASK_METRICS", "Evaluation", "Task", "candidates_of", "evaluate_task",
    "evaluation", "image_size", "main_metric", "predict_task", "task_metrics",
]
