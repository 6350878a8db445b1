"""Reader for the packaged easy-VQA dataset (``pip install --no-deps easy-vqa==1.0``).

easy-VQA has 4,000 train / 1,000 test images (64x64 PNG, one colored shape each) and 38,575 / 9,673 questions
with 13 possible answers. Questions fall into three types, told apart by their answer:

========  ===================================================  ==========================
type      examples                                             answers
========  ===================================================  ==========================
color     "what color is the shape?", "what is the color of"   8 colors
shape     "what shape is in the image?", "what is the red X?"  circle, rectangle, triangle
yes_no    "is there a red shape?", "does the image not..."     yes, no
========  ===================================================  ==========================

Hold a type out of training (``data.question_types``) to evaluate it zero-shot later.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from mmpt.data.sample import Sample

COLORS = ("red", "green", "blue", "black", "gray", "yellow", "teal", "brown")
SHAPES = ("circle", "rectangle", "triangle")
QUESTION_TYPES = ("color", "shape", "yes_no")
Split = Literal["train", "test"]


def question_type(answer: str) -> str:
    """``color``, ``shape`` or ``yes_no`` from an easy-VQA answer."""
    if answer in COLORS:
        return "color"
    if answer in SHAPES:
        return "shape"
    if answer in ("yes", "no"):
        return "yes_no"
    raise ValueError(f"'{answer}' is not an easy-VQA answer")


def data_root() -> Path:
    """Folder of the installed easy-VQA data (found without importing the package)."""
    from mmpt.models.tiny import package_dir

    return package_dir("easy_vqa") / "data"


def _questions(split: Split) -> list[tuple[str, str, int]]:
    path = data_root() / split / "questions.json"
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read easy-VQA questions {path}: {exc}; reinstall easy-vqa==1.0") from None
    return [(q, a, int(i)) for q, a, i in rows]


def load_easy_vqa(
    split: Split,
    question_types: tuple[str, ...] | list[str] = QUESTION_TYPES,
    limit: int | None = None,
    seed: int = 0,
    prompt_template: str = "{question}",
) -> list[Sample]:
    """easy-VQA questions of the given types, shuffled with ``seed`` and cut to ``limit``.

    Args:
        split: ``train`` or ``test``.
        question_types: subset of ``color``, ``shape``, ``yes_no``.
        limit: keep at most this many (after a seeded shuffle); None keeps all.
        prompt_template: how the question becomes the prompt, e.g. ``"{question} Answer with one word."``.
    """
    unknown = set(question_types) - set(QUESTION_TYPES)
    if unknown:
        raise ValueError(f"unknown easy-VQA question types {sorted(unknown)}; choose from {QUESTION_TYPES}")
    images = data_root() / split / "images"
    rows = [(q, a, i) for q, a, i in _questions(split) if question_type(a) in question_types]
    random.Random(seed).shuffle(rows)  # the same order as shuffling the samples; only the kept ones are built
    return [Sample(images / f"{i}.png", prompt_template.format(question=q), a, question_type(a), i)
            for q, a, i in (rows[:limit] if limit is not None else rows)]


def easy_vqa_captions(split: Split, prompt: str = "Describe the image briefly.") -> list[Sample]:
    """One caption per easy-VQA image, e.g. "A blue rectangle.", derived from its color and shape answers."""
    color: dict[int, str] = {}
    shape: dict[int, str] = {}
    for q, a, i in _questions(split):
        kind = question_type(a)
        if kind == "color":
            color[i] = a
        elif kind == "shape":
            shape[i] = a
        else:  # "is there (not) a red shape?" -> presence of the named color or shape
            negated = " not " in f" {q} " or q.startswith("is no ")
            if (a == "yes") != negated:
                words = q.rstrip("?").split()
                for w in words:
                    if w in COLORS:
                        color[i] = w
                    elif w in SHAPES:
                        shape[i] = w
    images = data_root() / split / "images"
    return [
        Sample(images / f"{i}.png", prompt, f"A {color[i]} {shape[i]}.", "caption", i)
        for i in sorted(set(color) & set(shape))
    ]
