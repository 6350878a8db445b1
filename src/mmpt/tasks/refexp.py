"""Referring expressions: the box is generated as text (``[x1, y1, x2, y2]`` in thousandths of the image) and
scored with Acc@0.5 (IoU >= 0.5 with the gold box), mean IoU and the count of unparsed answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmpt.data import Sample, text_to_box
from mmpt.tasks.common import image_size

Box = tuple[float, float, float, float]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` pixel boxes, in 0..1.

    Continuous coordinates: area = (x2 - x1) * (y2 - y1), no "+1" pixel convention; a box with x2 <= x1 or
    y2 <= y1 has area 0. RefCOCO-style evaluation (OFA, ...) counts a prediction as a hit when IoU >= 0.5.
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def grounding_scores(predicted: Sequence[Box | None], gold: Sequence[Box]) -> dict[str, float]:
    """Referring-expression metrics: ``acc@0.5`` (fraction with IoU >= 0.5), ``miou`` (mean IoU), ``n``, and
    ``unparsed`` (how many predictions are None, i.e. text that :func:`~mmpt.data.sample.text_to_box` could
    not read; they count as misses with IoU 0)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted boxes for {len(gold)} gold boxes")
    if not gold:
        return {"acc@0.5": float("nan"), "miou": float("nan"), "n": 0, "unparsed": 0}
    ious = [0.0 if p is None else box_iou(p, g) for p, g in zip(predicted, gold, strict=True)]
    return {
        "acc@0.5": sum(iou >= 0.5 for iou in ious) / len(ious),
        "miou": sum(ious) / len(ious),
        "n": len(ious),
        "unparsed": sum(p is None for p in predicted),
    }


def score(samples: Sequence[Sample], predictions: Sequence[str], config: Any) -> dict[str, float]:
    """Acc@0.5, mean IoU and unparsed answers of the generated boxes."""
    missing = [s.id for s in samples if s.box is None]
    if missing:
        raise ValueError(f"refexp evaluation needs a box per sample; {len(missing)} have none (e.g. {missing[0]})")
    boxes = [text_to_box(p, image_size(s)) for s, p in zip(samples, predictions, strict=True)]
    return grounding_scores(boxes, [s.box for s in samples])  # type: ignore[misc]
