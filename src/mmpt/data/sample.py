"""The record every reader produces and every task consumes, and the box-as-text convention."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset file or record that cannot be used; the message names the file, the record and the fix."""


@dataclass(frozen=True)
class Sample:
    """One example.

    Attributes:
        image: an image file, or an RGB uint8 array.
        prompt: the user's text (template applied), e.g. ``"What color is the shape? Answer with one word."``.
        target: the text to learn (an answer, a caption, a label word, a box as text).
        kind: a group for per-kind metrics (VQA answer type, SNLI-VE label, MME subtask, ...).
        image_id: the dataset's image id.
        id: the record's own id (question id, ref id, pair id, conversation id).
        answers: every reference (VQAv2's 10 answers; a caption's 5 references). Empty means ``(target,)``.
        box: target box ``(x1, y1, x2, y2)`` in pixels of the original image (referring expressions).
        image_size: ``(width, height)`` of the original image, when the reader knows it.
        context: earlier ``(user, assistant)`` turns of a conversation; the image belongs to the first turn.
    """

    image: Path | np.ndarray
    prompt: str
    target: str
    kind: str = ""
    image_id: int | str = -1
    id: str = ""
    answers: tuple[str, ...] = ()
    box: tuple[float, float, float, float] | None = None
    image_size: tuple[int, int] | None = None
    context: tuple[tuple[str, str], ...] = ()

    @property
    def references(self) -> tuple[str, ...]:
        """``answers`` or, when empty, the target alone."""
        return self.answers or (self.target,)


# Boxes as text: "[x1, y1, x2, y2]" with each coordinate an integer in 0..999, the position in thousandths of
# the image width (x) or height (y): x_text = floor(x / width * 1000) clipped to 999. Independent of the
# resolution the model sees, so predictions map back to pixels of the original image for Acc@0.5.
BOX_BINS = 1000
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def box_to_text(box: tuple[float, float, float, float], size: tuple[int, int]) -> str:
    """``(x1, y1, x2, y2)`` in pixels of an image of ``size = (width, height)`` -> ``"[x1, y1, x2, y2]"``."""
    w, h = size
    scaled = [c / (w if i % 2 == 0 else h) * BOX_BINS for i, c in enumerate(box)]
    return "[" + ", ".join(str(min(BOX_BINS - 1, max(0, int(v)))) for v in scaled) + "]"


def text_to_box(text: str, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Inverse of :func:`box_to_text` (bin centres, in pixels); None when the text holds fewer than 4 numbers."""
    numbers = [float(n) for n in _NUMBER.findall(text)[:4]]
    if len(numbers) < 4:
        return None
    w, h = size
    x1, y1, x2, y2 = ((v + 0.5) / BOX_BINS * (w if i % 2 == 0 else h) for i, v in enumerate(numbers))
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
