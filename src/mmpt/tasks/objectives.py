"""Training objectives: what one training step minimizes. The training loop asks for an objective by name
(``train.objective``) and calls its ``loss``; it knows nothing of answers, heads or rewards.

=========  ========================================  ==========================================================
objective  batch (its ``collate``)                   loss
=========  ========================================  ==========================================================
lm         prompt + answer, ``labels``               cross-entropy on the labelled tokens; the LM head runs only
                                                     on the positions that predict a label (:func:`answer_loss`)
classify   prompt, ``class_labels``                  cross-entropy of the ``answer_head`` method; the LM head
                                                     runs on one position (its logits are unused)
scst       prompt, ``references`` (one per image)    self-critical sequence training with a CIDEr-D reward
=========  ========================================  ==========================================================

**Logits only where a label is.** A quickstart row holds 86 tokens and 2 labels (the answer and the end token);
the LM head (vocabulary x width) and the cross-entropy over the full sequence cost ~17% of a step for logits that
are thrown away. Decoder-only models take ``logits_to_keep=K`` (transformers' own argument: the last ``K``
positions go through the head), where ``K`` reaches back to the position before the batch's first label. The
tail is counted from the end, so it stays right when methods or models put tokens in front (input prompts,
GIT's image tokens), and it covers labels wherever the padding is (left: the tail is just the answers; right:
it also holds the shorter rows' padding, which is ignored). A model that takes the argument but returns another
number of positions raises :class:`~mmpt.contract.ContractError`; models whose loss is their own (encoder-decoder
models, whose decoder already runs on the targets only, and BLIP's label-smoothed loss) keep computing it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mmpt.contract import ContractError
from mmpt.data import Sample
from mmpt.tasks.common import open_images

log = logging.getLogger("mmpt")

IGNORE_INDEX = -100
Autocast = Callable[[], AbstractContextManager[Any]]


class TrainingError(ValueError):
    """An objective cannot train this model, task or method set (a config problem: one line, the fix)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / Accelerate / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def keeps_logits(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes transformers' ``logits_to_keep`` and computes a plain causal-LM loss
    over the logits (then :func:`answer_loss` may compute the loss from the kept logits itself).

    mmpt-tiny's VLM passes keyword arguments through to its LM, which decides. Encoder-decoder models (labels are
    decoder targets) and BLIP (label-smoothed loss of its own) keep their own loss.
    """
    model = unwrap(model)
    inner = getattr(model, "language_model", None)
    if type(model).__name__ == "VisionLanguageModel" and isinstance(inner, nn.Module):
        model = inner
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "model_type", "") == "blip":
        return False
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def label_tail(labels: torch.Tensor) -> int:
    """How many trailing positions' logits the labelled tokens need: from the position before the batch's first
    label to the end (the last position's logit predicts nothing, but transformers' tail always ends there)."""
    labelled = (labels != IGNORE_INDEX).any(0).nonzero()
    if labelled.numel() == 0:
        raise TrainingError("a training batch holds no labelled token (every answer was cut or empty); check the "
                            "data's answers and data.max_length")
    length = labels.shape[1]
    return min(length, length - int(labelled[0]) + 1)


def tail_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens, from the logits of the last ``K`` positions (``logits`` is
    ``(B, K, V)``; position ``t`` predicts token ``t + 1``), computed in float32 as transformers' causal-LM loss."""
    keep = logits.shape[1]
    targets = labels[:, labels.shape[1] - keep + 1 :]
    return nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                       targets.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX)


def answer_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The causal-LM loss of a batch with ``labels``, the LM head computed only where a label needs it.

    Equal to ``model(**batch).loss`` (same mean over labelled tokens, float32), at a fraction of the head and
    cross-entropy cost. Models that do not qualify (:func:`keeps_logits`) compute their own loss.
    """
    if not keeps_logits(model):
        return model(**batch, use_cache=False).loss
    inputs = dict(batch)
    labels = inputs.pop("labels")
    keep = label_tail(labels)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    if logits.ndim != 3 or logits.shape[1] != keep:
        raise ContractError(f"{type(unwrap(model)).__name__} was asked for the logits of the last {keep} positions "
                            f"(logits_to_keep) and returned {tuple(logits.shape)}; mmpt cannot tell which "
                            "positions these are, so it stops instead of training on misaligned labels")
    return tail_loss(logits, labels)


def one_logit(model: nn.Module) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` for models that take it (a forward run for its hidden states or its cache needs
    at most the last position's logits), else ``{}``."""
    return {"logits_to_keep": 1} if keeps_logits(model) else {}


class Collator:
    """Opens images and calls the processor: a list of samples -> a training batch.

    With ``classes`` (objective ``classify``) the batch holds the prompts only, plus ``class_labels``. With
    ``on_error="skip"`` a sample whose image cannot be decoded is replaced by one of ``pool`` (see
    :func:`~mmpt.tasks.common.open_images`).
    """

    def __init__(self, processor: Any, classes: dict[str, int] | None = None, on_error: str = "raise",
                 pool: Sequence[Sample] = ()) -> None:
        self.processor = processor
        self.classes = classes
        self.on_error = on_error
        self.pool = pool

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        images, samples = open_images(samples, self.on_error, self.pool)
        contexts = [s.context for s in samples] if any(s.context for s in samples) else None
        answers = None if self.classes is not None else [s.target for s in samples]
        batch = self.processor(images, [s.prompt for s in samples], answers, contexts)
        if self.classes is not None:
            batch["class_labels"] = torch.tensor([self.classes.get(s.target, -100) for s in samples])
        return batch


class Objective(Protocol):
    """What the training loop needs of an objective."""

    samples: list[Sample]
    """The training samples as this objective iterates them (SCST: one per image)."""
    collate: Callable[[list[Sample]], dict[str, Any]]
    """A list of samples -> a batch."""

    def loss(self, model: nn.Module, batch: dict[str, Any], autocast: Autocast) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's loss and extra statistics to log (``model`` may be wrapped by DDP / Accelerate)."""
        ...


@dataclass
class LMObjective:
    """``lm``: cross-entropy on the answer tokens (see :func:`answer_loss`)."""

    samples: list[Sample]
    collate: Callable[[list[Sample]], dict[str, Any]]

    def loss(self, model: nn.Module, batch: dict[str, Any], autocast: Autocast) -> tuple[torch.Tensor, dict[str, float]]:
        return answer_loss(model, batch), {}


@dataclass
class ClassifyObjective:
    """``classify``: cross-entropy of the ``answer_head`` method's logits over its answer list."""

    samples: list[Sample]
    collate: Callable[[list[Sample]], dict[str, Any]]
    head: Any

    def loss(self, model: nn.Module, batch: dict[str, Any], autocast: Autocast) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch.pop("class_labels")
        model(**batch, use_cache=False, **one_logit(model))  # the head pools the backbone's output
        logits = self.head.logits()
        return nn.functional.cross_entropy(logits.float(), labels.to(logits.device), ignore_index=-100), {}


@dataclass
class SCSTObjective:
    """``scst``: sample captions, reward them with CIDEr-D against the image's references, and raise the
    log-probability of those that beat the baseline (see :func:`mmpt.tasks.caption.scst_loss`)."""

    samples: list[Sample]
    collate: Callable[[list[Sample]], dict[str, Any]]
    processor: Any
    scorer: Any
    num_samples: int
    max_new_tokens: int
    baseline: str

    def loss(self, model: nn.Module, batch: dict[str, Any], autocast: Autocast) -> tuple[torch.Tensor, dict[str, float]]:
        from mmpt.tasks.caption import scst_loss

        references = batch.pop("references")
        with autocast():  # generate() bypasses the autocast Accelerate puts on forward
            return scst_loss(model, self.processor, batch, references, self.scorer, num_samples=self.num_samples,
                             max_new_tokens=self.max_new_tokens, baseline=self.baseline)  # type: ignore[arg-type]


def build_objective(name: str, task: str, processor: Any, applied: dict[str, Any], samples: list[Sample],
                    train: Any, on_error: str = "raise") -> Objective:
    """The objective ``name`` (``train.objective``) for ``task`` over ``samples``.

    Args:
        processor: the model's processor (builds the batches).
        applied: the methods applied to the model by name (``classify`` needs an ``answer_head``).
        train: the stage's :class:`~mmpt.runconfig.TrainConfig` (SCST settings).
        on_error: ``data.on_error`` (``skip`` replaces unreadable images by readable training samples).

    Raises :class:`TrainingError` (one line, with the fix) when the objective does not fit the task or model.
    """
    if name == "classify":
        if "answer_head" not in applied:
            raise TrainingError("train.objective: 'classify' trains an answer_head method; add {name: answer_head, "
                                "answers: [...]} to the stage's methods")
        head = applied["answer_head"]
        outside = sum(s.target not in head.index for s in samples)
        if outside:
            log.warning("answer_head: %d of %d training answers are not in its answer list (ignored by the loss)",
                        outside, len(samples))
        return ClassifyObjective(samples, Collator(processor, head.index, on_error, samples), head)
    if name == "scst":
        from mmpt.models import VLMProcessor
        from mmpt.tasks.caption import CiderD, SCSTCollator, group_by_image

        if task != "caption":
            raise TrainingError(f"train.objective: 'scst' optimizes CIDEr-D of captions; the task is {task}")
        if not isinstance(processor, VLMProcessor):  # HF generate() output and inputs differ per family
            raise TrainingError("train.objective: 'scst' runs on mmpt's own models (mmpt-tiny) so far; train "
                                "Hugging Face checkpoints with objective: lm")
        grouped = group_by_image(samples)  # one sample per image with all its references
        scorer = CiderD(s.references for s in grouped)  # document frequencies of the training references
        return SCSTObjective(grouped, SCSTCollator(processor, on_error, grouped), processor, scorer,
                             train.scst_samples, train.scst_max_new_tokens, train.scst_baseline)
    if name == "lm":
        return LMObjective(samples, Collator(processor, on_error=on_error, pool=samples))
    raise TrainingError(f"train.objective: unknown objective '{name}'; known: {', '.join(OBJECTIVES)}")


OBJECTIVES = ("lm", "classify", "scst")
"""The objectives :func:`build_objective` knows (``train.objective``)."""
