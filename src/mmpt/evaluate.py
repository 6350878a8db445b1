"""Generation-based evaluation: greedy answers compared with targets after normalization."""

from __future__ import annotations

import contextlib
import re
import string
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from mmpt.data import Sample
from mmpt.models import VLMProcessor

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: ``" Blue."`` -> ``"blue"``."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def open_image(image: Any) -> Image.Image | np.ndarray:
    """A sample's image: a path is opened as RGB, an array is passed through."""
    if isinstance(image, np.ndarray):
        return image
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise ValueError(f"cannot read image {image}: {exc}") from None


@torch.no_grad()
def predict(
    model: nn.Module,
    processor: VLMProcessor,
    samples: Sequence[Sample],
    batch_size: int = 16,
    max_new_tokens: int = 8,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    progress: bool = True,
) -> list[str]:
    """Greedy generations for ``samples``, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    bar = tqdm(total=len(samples), desc="eval", unit="sample", disable=not progress, leave=False)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = processor([open_image(s.image) for s in chunk], [s.prompt for s in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            ids = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=processor.pad_token_id,
                eos_token_id=processor.tokenizer.eos_token_id,
            )
        out.extend(processor.decode(ids))
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return out


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
