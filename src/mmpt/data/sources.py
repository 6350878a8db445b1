"""From a run's ``data`` section to (train, eval) samples: the packaged datasets or files read by a reader."""

from __future__ import annotations

import inspect
import logging
import random
import string
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


def prompt_format(data: DataConfig) -> str:
    """The template a run's prompts were built with, for ``predict`` / ``chat`` / ``eval`` on new text: one
    placeholder (``{question}``, ``{hypothesis}``, ``{expression}``...) that the user's text fills, a fixed prompt
    (captions: no placeholder), or ``""`` when the data's prompts are the records' own text (JSONL, LLaVA)."""
    if data.dataset in ("easy-vqa",) or data.dataset.startswith("hf:"):
        return data.prompt_template
    if data.dataset == "easy-vqa-captions":
        return str(inspect.signature(easy_vqa_captions).parameters["prompt"].default)
    source = data.eval or data.train
    if source is None or source.format not in _TEMPLATE_ARG:
        return ""
    arg = _TEMPLATE_ARG[source.format]
    return source.prompt_template or str(inspect.signature(READERS[source.format]).parameters[arg].default)


def fill_prompt(template: str, text: str) -> str:
    """``text`` put into ``template`` (:func:`prompt_format`): its one placeholder filled, a fixed prompt kept,
    ``text`` itself for ``""``. Raises ValueError naming the placeholders a template needs beyond one."""
    if not template:
        return text
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if not names:
        return template
    if len(set(names)) > 1:
        raise ValueError(f"the run's prompt template {template!r} needs {', '.join(sorted(set(names)))}; give the "
                         "whole prompt and --raw-prompt")
    return template.format(**{names[0]: text})


def placeholder(template: str) -> str | None:
    """The one placeholder of ``template``, or None (a fixed prompt, raw text, or several placeholders)."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return names.pop() if len(names) == 1 else None


def with_prompt_format(data: DataConfig, template: str) -> DataConfig:
    """``data`` building its prompts with ``template`` (a run's :func:`prompt_format`), its placeholder renamed to
    the one this data's reader fills (``{question}`` -> ``{hypothesis}``...); ``data`` unchanged when either has
    no single placeholder or they already agree."""
    from dataclasses import replace

    mine, theirs = prompt_format(data), template
    name, other = placeholder(mine), placeholder(theirs)
    if name is None or other is None or mine == theirs.replace("{" + other + "}", "{" + name + "}"):
        return data
    adapted = theirs.replace("{" + other + "}", "{" + name + "}")
    if data.dataset == "easy-vqa" or data.dataset.startswith("hf:"):
        return replace(data, prompt_template=adapted)
    return replace(data, train=data.train and replace(data.train, prompt_template=adapted),
                   eval=data.eval and replace(data.eval, prompt_template=adapted))


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
