"""``mmpt analyze fgsm``: robustness to a one-step FGSM attack on the image (OFA prompt tuning, Fig. 3).

For each sample, the gradient of the model's training loss (the target answer given image and prompt) with
respect to the pixels gives the attack direction ``sign(grad)``; the attacked image is
``clip(x + eps * sign(grad))`` in [0, 1] pixel units (one step, no iteration), and the task metric is measured on
the attacked images for every epsilon. Epsilon 0 is the clean image: its metric is the clean metric. Each subject
is attacked through its own gradient (a white-box attack on that model, as in the paper).

``eps`` is in units of the [0, 1] pixel range: the model's inputs are normalized per channel (``(x - mean) /
std``), so the step there is ``eps / std`` and the clip is the normalized image of [0, 1]. Models whose processor
declares no normalization take ``eps`` in their input units, without clipping.

``target="text"`` attacks the text instead: the input embeddings of the prompt's text tokens (not image
placeholders) move by ``eps * sign(grad)`` in embedding units (the notes give the embedding table's standard
deviation for scale). Samples are then evaluated one at a time: a hook on the input embedding layer adds each
sample's perturbation to the forward call whose tokens start with that sample's prompt (the prefill; generated
tokens and ranked answers that follow are not perturbed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mmpt.analysis.common import Result, Subject, batches
from mmpt.data import Sample
from mmpt.plots import fraction_axis
from mmpt.runfolder import save_figure


def pixel_normalization(processor: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) per channel of the processor's image normalization, shaped (3, 1, 1); None if unknown."""
    for owner in (getattr(processor, "image_transform", None), getattr(processor, "image_processor", None),
                  getattr(getattr(processor, "hf", None), "image_processor", None)):
        mean = getattr(owner, "mean", None) or getattr(owner, "image_mean", None)
        std = getattr(owner, "std", None) or getattr(owner, "image_std", None)
        if mean is not None and std is not None:
            return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return None


def attack_direction(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sign`` of the gradient of the model's loss (``batch`` holds ``labels``) with respect to ``pixel_values``."""
    if "labels" not in batch:
        raise ValueError("the attack needs the loss: give the batch with labels (the target answers)")
    pixels = batch["pixel_values"].detach().clone().requires_grad_(True)
    loss = model(**{**batch, "pixel_values": pixels}, use_cache=False).loss
    if loss is None or not torch.isfinite(loss):
        raise RuntimeError(f"the model's loss is {loss}: no gradient to attack with")
    (grad,) = torch.autograd.grad(loss, pixels)
    return grad.sign()


def perturb(pixels: torch.Tensor, direction: torch.Tensor, eps: float,
            normalization: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``pixels + eps * direction`` in [0, 1] pixel units, clipped to the valid image (see the module docstring)."""
    if eps < 0:
        raise ValueError(f"epsilon must be >= 0, got {eps}")
    if eps == 0:
        return pixels
    if normalization is None:
        return pixels + eps * direction
    mean, std = (t.to(pixels.device, pixels.dtype).view(-1, 1, 1) for t in normalization)  # channels at dim -3
    low, high = (0 - mean) / std, (1 - mean) / std
    return torch.maximum(torch.minimum(pixels + eps / std * direction, high), low)


class _PixelOverride:
    """A processor that builds batches as the real one does but with given pixel tensors: sample images are
    keys (tensors) into ``table``, which holds each one's original image and the pixels to use."""

    def __init__(self, processor: Any, table: dict[int, tuple[Any, torch.Tensor]]) -> None:
        self._processor = processor
        self._table = table

    def __call__(self, images: Sequence[Any], prompts: Sequence[str], answers: Any = None, contexts: Any = None
                 ) -> dict[str, torch.Tensor]:
        entries = [self._table[id(im)] for im in images]
        batch = self._processor([e[0] for e in entries], prompts, answers, contexts)
        pixels = torch.stack([e[1] for e in entries]).to(batch["pixel_values"].dtype)
        if pixels.shape != batch["pixel_values"].shape:
            raise RuntimeError(f"attacked pixels {tuple(pixels.shape)} do not match the processor's "
                               f"{tuple(batch['pixel_values'].shape)}")
        batch["pixel_values"] = pixels
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


def attacked_samples(subject: Subject, samples: Sequence[Sample], batch_size: int, progress: bool
                     ) -> tuple[list[Any], list[torch.Tensor], list[torch.Tensor]]:
    """Per sample: its original image, its clean pixels and its attack direction."""
    from mmpt.tasks.common import open_image

    originals, clean, directions = [], [], []
    bar = tqdm(total=len(samples), desc=f"fgsm grad {subject.label}", unit="sample", disable=not progress,
               leave=False)
    for chunk, batch in batches(subject, samples, batch_size, answers=True):
        if batch["pixel_values"].shape[0] != len(chunk):
            raise ValueError(f"{subject.loaded.family.name} gives {batch['pixel_values'].shape[0]} pixel tensors for "
                             f"{len(chunk)} images (tiles or packed patches): FGSM supports one tensor per image")
        with torch.enable_grad():
            direction = attack_direction(subject.loaded.model, batch)
        originals.extend(open_image(s.image, s) for s in chunk)
        clean.extend(batch["pixel_values"].detach().cpu())
        directions.extend(direction.cpu())
        bar.update(len(chunk))
    bar.close()
    return originals, clean, directions


def text_directions(subject: Subject, samples: Sequence[Sample]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sample: its prompt's token ids and the sign of the loss gradient at their input embeddings (zero at
    image placeholders)."""
    from mmpt.analysis.common import image_token_id

    model = subject.loaded.model
    embedding = model.get_input_embeddings()
    token = image_token_id(model)
    out = []
    for sample in samples:
        (_, prompt), (_, full) = next(batches(subject, [sample], 1)), next(batches(subject, [sample], 1, answers=True))
        ids = prompt["input_ids"][0]
        if not torch.equal(full["input_ids"][0, : len(ids)], ids):
            raise RuntimeError("the prompt's tokens are not a prefix of prompt + answer: mmpt cannot align the text "
                               "attack with evaluation for this processor; attack the pixels")
        captured: list[torch.Tensor] = []

        def keep(module: nn.Module, args: Any, output: torch.Tensor,
                 store: list[torch.Tensor] = captured) -> torch.Tensor:
            leaf = output.detach().requires_grad_(True)  # the frozen table gives no gradient: start one here
            store.append(leaf)
            return leaf

        handle = embedding.register_forward_hook(keep)
        try:
            with torch.enable_grad():
                loss = model(**full, use_cache=False).loss
                loss.backward()
        finally:
            handle.remove()
        grad = captured[0].grad[0, : len(ids)].sign()
        if token is not None:
            grad[ids == token] = 0
        out.append((ids.cpu(), grad.detach().cpu()))
        model.zero_grad(set_to_none=True)
    return out


class _TextAttack:
    """Adds ``eps * direction`` to the input embeddings of a forward call whose tokens start with ``ids``."""

    def __init__(self, embedding: nn.Module) -> None:
        self.current: tuple[torch.Tensor, torch.Tensor, float] | None = None
        self.hits = 0
        self._handle = embedding.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self.current is None or self.current[2] == 0:
            return None
        ids, direction, eps = self.current
        given = args[0]
        n = len(ids)
        if given.ndim != 2 or given.shape[1] < n or not torch.equal(given[0, :n].cpu(), ids):
            return None
        self.hits += 1
        delta = torch.zeros_like(output)
        delta[:, :n] = eps * direction.to(output.device, output.dtype)
        return output + delta

    def remove(self) -> None:
        self._handle.remove()


def _text_metric(subject: Subject, samples: Sequence[Sample], directions: list[tuple[torch.Tensor, torch.Tensor]],
                 eps: float, task: str, eval_config: Any) -> float:
    from mmpt.tasks import evaluation, main_metric, predict_task

    loaded = subject.loaded
    attack = _TextAttack(loaded.model.get_input_embeddings())
    predictions = []
    try:
        for sample, (ids, direction) in zip(samples, directions, strict=True):
            attack.current = (ids, direction, eps)
            predictions += predict_task(task, loaded.model, loaded.processor, [sample], eval_config, progress=False)
    finally:
        attack.remove()
    if eps and attack.hits < len(samples):
        raise RuntimeError(f"the text attack reached {attack.hits} of {len(samples)} samples' prompts: the model does "
                           "not embed the prompt tokens it was given through its input embedding layer")
    return evaluation(task, samples, predictions, eval_config).metrics[main_metric(task, eval_config)]


def analyze_fgsm(subjects: Sequence[Subject], samples: Sequence[Sample], epsilons: Sequence[float], task: str,
                 eval_config: Any, batch_size: int = 8, progress: bool = True, target: str = "pixels") -> Result:
    """The task metric of every subject on images (or, with ``target="text"``, prompts) attacked with each
    epsilon."""
    from mmpt.tasks import evaluate_task, image_size, main_metric

    if target not in ("pixels", "text"):
        raise ValueError(f"fgsm target must be pixels or text, got {target!r}")
    from mmpt.analysis import check_options

    check_options({"epsilons": epsilons})
    metric = main_metric(task, eval_config)
    rows: list[dict[str, Any]] = []
    if target == "text":
        for subject in subjects:
            directions = text_directions(subject, samples)
            for eps in tqdm(epsilons, desc=f"fgsm text {subject.label}", disable=not progress, leave=False):
                rows.append({"subject": subject.label, "epsilon": eps,
                             metric: _text_metric(subject, samples, directions, eps, task, eval_config)})
        scale = float(subjects[0].loaded.model.get_input_embeddings().weight.detach().std())
        notes = [f"One-step FGSM on the prompt's text-token embeddings: e + eps * sign(grad); eps in embedding units "
                 f"(the embedding table's std is {scale:.4f}); each subject attacked through its own gradient.",
                 "Epsilon 0 is the clean evaluation."]
        return Result("fgsm", rows, {"metric": metric}, {"fgsm.png": lambda path: _plot(rows, metric, path, target)},
                      notes, {"epsilons": list(epsilons), "samples": len(samples), "metric": metric, "target": target})
    for subject in subjects:
        loaded = subject.loaded
        originals, clean, directions = attacked_samples(subject, samples, batch_size, progress)
        normalization = pixel_normalization(loaded.processor)
        for eps in epsilons:
            table: dict[int, tuple[Any, torch.Tensor]] = {}
            keyed = []
            for sample, image, pixels, direction in zip(samples, originals, clean, directions, strict=True):
                key = perturb(pixels, direction, eps, normalization)
                key = key.clone()  # a distinct object per sample and epsilon: the processor looks it up by id
                table[id(key)] = (image, key)
                keyed.append(replace(sample, image=key, image_size=image_size(sample)))  # boxes: the original size
            result = evaluate_task(task, loaded.model, _PixelOverride(loaded.processor, table), keyed, eval_config,
                                   progress=progress)
            rows.append({"subject": subject.label, "epsilon": eps, metric: result.metrics[metric]})
    notes = ["One-step FGSM on the pixels: x + eps * sign(grad of the answer's loss), clipped to the image range; "
             "eps in [0, 1] pixel units; each subject attacked through its own gradient.",
             "Epsilon 0 is the clean evaluation."]
    return Result("fgsm", rows, {"metric": metric}, {"fgsm.png": lambda path: _plot(rows, metric, path, target)},
                  notes, {"epsilons": list(epsilons), "samples": len(samples), "metric": metric, "target": target})


def _plot(rows: list[dict[str, Any]], metric: str, path: Path, target: str = "pixels") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for label in dict.fromkeys(r["subject"] for r in rows):
        mine = [r for r in rows if r["subject"] == label]
        ax.plot([r["epsilon"] for r in mine], [r[metric] for r in mine], marker="o", label=label)
    unit, what = ("pixel range 0-1", "the image") if target == "pixels" else ("embedding units", "the text embeddings")
    ax.set(xlabel=f"epsilon ({unit})", ylabel=metric, title=f"FGSM attack on {what}")
    fraction_axis(ax, metric)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
