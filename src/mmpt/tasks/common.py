"""What every task shares: opening images, batching, generation, exact-match accuracy."""

from __future__ import annotations

import contextlib
import logging
import re
import string
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from mmpt.data import DataError, Sample
from mmpt.data.formats.common import IMAGE_ERRORS
from mmpt.data.images import load_rgb
from mmpt.models import VLMProcessor

log = logging.getLogger("mmpt")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: ``" Blue."`` -> ``"blue"``."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def open_image(image: Any, sample: Sample | None = None) -> Image.Image | np.ndarray | torch.Tensor:
    """A sample's image: a path is opened as RGB (8 bits a channel; 16-bit and float images are scaled, not
    clipped: :func:`~mmpt.data.images.to_rgb`), an array or an already-transformed pixel tensor is passed through.

    An unreadable file raises :class:`~mmpt.data.DataError` naming the file and the sample's record id.
    """
    if isinstance(image, np.ndarray | torch.Tensor):
        return image
    try:
        return load_rgb(image)
    except IMAGE_ERRORS as exc:
        record = f" (record {sample.id!r})" if sample is not None and sample.id else ""
        raise DataError(f"cannot read image {image}{record}: {exc}; replace the file or drop the record") from None


def open_images(
    samples: Sequence[Sample], on_error: str = "raise", pool: Sequence[Sample] = ()
) -> tuple[list[Any], list[Sample]]:
    """The samples' images and the samples they belong to.

    With ``on_error="skip"`` a sample whose image cannot be decoded is replaced, with a warning naming it, by a
    readable sample of ``pool`` (the training set; the choice depends only on the file name, so every run and
    process picks the same), or dropped when there is none; the batch keeps its size. Otherwise
    :class:`~mmpt.data.DataError` names the file and the record.
    """
    images, kept = [], []
    for sample in samples:
        try:
            images.append(open_image(sample.image, sample))
            kept.append(sample)
            continue
        except DataError as exc:
            if on_error != "skip":
                raise
            problem = str(exc)
        start = zlib.crc32(str(sample.image).encode())
        for k in range(min(len(pool), 20)):
            spare = pool[(start + k) % len(pool)]
            try:
                images.append(open_image(spare.image, spare))
            except DataError:
                continue
            kept.append(spare)
            log.warning("data.on_error: skip: %s; trained on record %r instead", problem, spare.id)
            break
        else:
            log.warning("data.on_error: skip: %s; left out of its batch", problem)
    if not kept:
        raise DataError(f"none of the {len(samples)} images of a batch could be read (e.g. {samples[0].image})")
    return images, kept


def _batch(processor: VLMProcessor, chunk: Sequence[Sample], answers: Sequence[str] | None = None) -> Any:
    contexts = [s.context for s in chunk] if any(s.context for s in chunk) else None
    return processor([open_image(s.image, s) for s in chunk], [s.prompt for s in chunk], answers, contexts)


def _in_batches(
    model: nn.Module, processor: Any, samples: Sequence[Sample], batch_size: int, desc: str, progress: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Model inputs for consecutive chunks of ``samples`` on the model's device, the model in eval mode
    meanwhile (its mode is restored afterwards) and a progress bar over samples."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    bar = tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress, leave=False)
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            yield {k: v.to(device) for k, v in _batch(processor, chunk).items()}
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)


@torch.no_grad()
def predict(
    model: nn.Module,
    processor: VLMProcessor,
    samples: Sequence[Sample],
    batch_size: int = 16,
    max_new_tokens: int = 8,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    progress: bool = True,
    num_beams: int = 1,
    label: str = "eval",
) -> list[str]:
    """Generated answers for ``samples``, in order: greedy, or beam search with ``num_beams > 1`` (``label``
    names the progress bar)."""
    ends = getattr(processor, "generation_kwargs", None)  # HF processors: the family's pad/eos tokens
    if ends is None:
        ends = {"pad_token_id": processor.pad_token_id, "eos_token_id": processor.tokenizer.eos_token_id}
    out: list[str] = []
    for batch in _in_batches(model, processor, samples, batch_size, label, progress):
        batch.pop("position_ids", None)  # generate() counts positions itself (PaliGemma adds 1 to given ones)
        with autocast():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams, **ends)
        if hasattr(processor, "generated_tokens"):  # HF decoder-only models return prompt + continuation
            ids = processor.generated_tokens(ids, batch["input_ids"])
        out.extend(processor.decode(ids))
    return out


def image_size(sample: Sample) -> tuple[int, int]:
    """(width, height) of a sample's original image (from the reader, else read from the file)."""
    if sample.image_size is not None:
        return sample.image_size
    if isinstance(sample.image, torch.Tensor):  # an already-transformed (3, H, W) pixel tensor
        return sample.image.shape[-1], sample.image.shape[-2]
    if isinstance(sample.image, np.ndarray):  # an (H, W, 3) array
        return sample.image.shape[1], sample.image.shape[0]
    with Image.open(sample.image) as im:
        return im.size


def accuracy(samples: Sequence[Sample], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy after :func:`normalize`, overall and per sample kind (``accuracy/color`` ...)."""
    if not samples:
        return {"accuracy": float("nan"), "n": 0}
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, pred in zip(samples, predictions, strict=True):
        ok = normalize(pred) == normalize(sample.target)
        hits["accuracy"].append(ok)
        if sample.kind:
            hits[f"accuracy/{sample.kind}"].append(ok)
    metrics: dict[str, float] = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    metrics["n"] = len(samples)
    return metrics
