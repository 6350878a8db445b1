"""Visual entailment (SNLI-VE): the answers yes / maybe / no are ranked; accuracy overall and per gold label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmpt.data import Sample
from mmpt.tasks.common import accuracy

CANDIDATES = ("yes", "maybe", "no")


def score(samples: Sequence[Sample], predictions: Sequence[str], config: Any) -> dict[str, float]:
    """Exact-match accuracy, overall and per gold label (``accuracy/entailment`` ...)."""
    return accuracy(samples, predictions)
