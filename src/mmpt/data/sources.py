"""From a run's ``data`` section to (train, eval) samples: the packaged datasets or files read by a reader."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from mmpt.data.easyvqa import easy_vqa_captions, load_easy_vqa
from mmpt.data.keys import READER_KEYS
from mmpt.data.photos import skimage_captions
from mmpt.data.readers import READERS
from mmpt.data.sample import Sample

if TYPE_CHECKING:
    from mmpt.runconfig import DataConfig, SourceConfig

log = logging.getLogger("mmpt")

_TEMPLATE_ARG = {"coco-karpathy": "prompt", "flickr30k-karpathy": "prompt", "vqav2": "prompt_template",
                 "snli-ve": "prompt_template", "refcoco": "prompt_template"}


def read_source(source: SourceConfig, on_error: str = "raise") -> list[Sample]:
    """Samples of one :class:`~mmpt.runconfig.SourceConfig`; skipped records are counted in a warning."""
    kwargs: dict[str, Any] = {k: getattr(source, k) or None for k in READER_KEYS[source.format]}
    if source.format in _TEMPLATE_ARG and source.prompt_template:
        kwargs[_TEMPLATE_ARG[source.format]] = source.prompt_template
    if source.format == "jsonl" and kwargs["images"] is None:
        kwargs["images"] = "."
    if source.format == "refcoco":
        kwargs["allow_pickle"] = bool(getattr(source, "allow_pickle", False))
    if source.format == "hf":
        kwargs.update(columns=dict(source.columns), box_format=source.box_format, split=source.split or "",
                      prompt_template=source.prompt_template or "{question}")
    result = READERS[source.format](**kwargs, on_error=on_error, limit=source.limit)
    if result.skipped:
        shown = "\n  ".join(result.problems[:3])
        log.warning("%s: skipped %d record(s), malformed or with a missing/unreadable image (on_error: skip), e.g.\n  %s",
                    source.format, result.skipped, shown)
    return result.samples


def _hf_splits(data: DataConfig, name: str) -> tuple[list[Sample], list[Sample]]:
    """``data.dataset: hf:<name>``: the ``train`` split and the first of ``validation``/``val``/``test``."""
    from mmpt.data.formats.common import DataError
    from mmpt.data.formats.hf import read_hf

    def read(split: str) -> list[Sample]:
        return read_hf(name, split, prompt_template=data.prompt_template, on_error=data.on_error).samples

    train = read("train")
    for split in ("validation", "val", "test"):
        try:
            return train, read(split)
        except DataError as exc:
            if f"has no split {split!r}" not in str(exc):
                raise
    log.warning("hf:%s has no validation, val or test split: the run trains without an evaluation (never on its "
                "training rows); save the dataset with one of those splits", name)
    return train, []


def build_data(data: DataConfig, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, eval) samples. ``train_size`` / ``eval_size`` keep that many after a seeded shuffle."""
    if data.dataset == "easy-vqa":
        train = load_easy_vqa("train", data.question_types, data.train_size, seed, data.prompt_template)
        evals = load_easy_vqa("test", data.eval_question_types, data.eval_size, seed, data.prompt_template)
        return train, evals
    if data.dataset.startswith("hf:"):
        train, evals = _hf_splits(data, data.dataset[3:])
    elif data.dataset == "easy-vqa-captions":
        train = easy_vqa_captions("train") + (skimage_captions() if data.include_photos else [])
        evals = easy_vqa_captions("test")
    else:
        train = read_source(data.train, data.on_error) if data.train is not None else []
        evals = read_source(data.eval, data.on_error) if data.eval is not None else []
    random.Random(seed).shuffle(train)
    random.Random(seed).shuffle(evals)
    return train[: data.train_size], evals[: data.eval_size]
