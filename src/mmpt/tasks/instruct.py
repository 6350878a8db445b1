"""Instruction following: exact-match accuracy and, with ``eval.mme``, MME's accuracy, accuracy+ and score per
subtask (as MME's ``eval_tool/calculation.py``)."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from mmpt.data import Sample
from mmpt.tasks.common import accuracy

log = logging.getLogger("mmpt")


MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_mme_answer(text: str) -> str:
    """MME's ``parse_pred_ans``: ``"yes"``, ``"no"`` or ``"other"`` from a generated answer.

    Lower-cased (and stripped, which the official script does not do); exactly "yes"/"no" is taken as is,
    else "yes" within the first 4 characters gives yes, else "no" within them gives no ("Yes, there is" ->
    yes; also "not sure" -> no, as officially), else other.
    """
    text = text.lower().strip()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def mme_scores(records: Sequence[tuple[str, str, str, str]]) -> dict[str, float]:
    """MME metrics from ``(subtask, image_id, prediction, answer)`` records, answers "yes"/"no".

    Per subtask, as MME's ``calculation.py``: ``mme/<subtask>/acc`` is the fraction of questions answered
    right (prediction parsed by :func:`parse_mme_answer`, "other" is wrong), ``mme/<subtask>/acc_plus`` the
    fraction of images whose questions (two per image in MME) are all right, and ``mme/<subtask>/score`` =
    100 * acc + 100 * acc_plus (out of 200). Totals: ``mme/acc`` and ``mme/acc_plus`` over all questions and
    images, ``mme/score`` the sum of subtask scores; ``mme/perception`` (out of 2000) and ``mme/cognition``
    (out of 800), MME's reported sums, when any of their official subtasks is present; ``n`` questions.
    """
    if not records:
        return {"mme/acc": float("nan"), "mme/acc_plus": float("nan"), "mme/score": 0.0, "n": 0}
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for subtask, image_id, prediction, answer in records:
        gold = answer.strip().lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"MME answers are yes/no; got {answer!r} (subtask {subtask}, image {image_id})")
        images[subtask][image_id].append(parse_mme_answer(prediction) == gold)
    out: dict[str, float] = {}
    right = questions = all_right = image_count = 0
    for subtask in sorted(images):
        per_image = images[subtask].values()
        s_right = sum(sum(hits) for hits in per_image)
        s_questions = sum(len(hits) for hits in per_image)
        s_all_right = sum(all(hits) for hits in per_image)
        acc, acc_plus = s_right / s_questions, s_all_right / len(per_image)
        out[f"mme/{subtask}/acc"] = acc
        out[f"mme/{subtask}/acc_plus"] = acc_plus
        out[f"mme/{subtask}/score"] = 100 * acc + 100 * acc_plus
        right, questions = right + s_right, questions + s_questions
        all_right, image_count = all_right + s_all_right, image_count + len(per_image)
    out["mme/acc"] = right / questions
    out["mme/acc_plus"] = all_right / image_count
    out["mme/score"] = sum(out[f"mme/{subtask}/score"] for subtask in images)
    for name, group in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [subtask for subtask in images if subtask in group]
        if present:
            out[f"mme/{name}"] = sum(out[f"mme/{subtask}/score"] for subtask in present)
    out["n"] = questions
    return out


def score(samples: Sequence[Sample], predictions: Sequence[str], config: Any) -> dict[str, float]:
    """Accuracy, and MME's scores with ``config.mme``."""
    metrics = accuracy(samples, predictions)
    if config.mme:
        records = [(s.kind or "all", str(s.image_id), p, s.target) for s, p in zip(samples, predictions, strict=True)]
        per_image = Counter((r[0], r[1]) for r in records)
        odd = sum(n != 2 for n in per_image.values())
        if odd:
            log.warning("MME scoring: %d of %d images do not have exactly 2 questions (accuracy+ needs the pair; "
                        "keep data.eval_size: null)", odd, len(per_image))
        metrics.update(mme_scores(records))
    return metrics
