"""Question answering and entailment: the official VQAv2 files and SNLI-VE's JSONL files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmpt.data.formats.common import (
    OnError,
    ReadResult,
    as_dict,
    check_args,
    check_image,
    check_template,
    collect,
    decode_line,
    get_key,
    get_list,
    index_by,
    is_file,
    jsonl_lines,
    load_json,
    nonempty,
    require_dir,
    require_file,
    with_id,
)
from mmpt.data.sample import DataError, Sample

SNLI_VE_ANSWERS = {"entailment": "yes", "neutral": "maybe", "contradiction": "no"}
"""SNLI-VE gold label -> target word (OFA's mapping)."""


def _load_annotations(path: str | Path, subtype: str, questions: Path) -> tuple[Path, dict[int, Any]]:
    apath = require_file(
        path, "VQAv2 annotations file", "v2_mscoco_<subset>_annotations.json from visualqa.org"
    )
    data = load_json(apath, "VQAv2 annotations file")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f'{apath} is not a VQAv2 annotations file: expected {{"annotations": [...]}}')
    other = data.get("data_subtype")
    if subtype and isinstance(other, str) and other != subtype:
        raise DataError(f"VQAv2 questions {questions} are {subtype} but annotations {apath} are {other}")
    return apath, index_by(data["annotations"], "question_id")


def read_vqav2(
    questions: str | Path,
    annotations: str | Path | None,
    images: str | Path,
    *,
    on_error: OnError = "raise",
    prompt_template: str = "{question}",
    limit: int | None = None,
) -> ReadResult:
    """Questions (and answers) from the official VQAv2 files (visualqa.org).

    Args:
        questions: e.g. ``v2_OpenEnded_mscoco_val2014_questions.json``.
        annotations: e.g. ``v2_mscoco_val2014_annotations.json``; None for test / test-dev (no answers:
            ``target=""``, ``answers=()``, ``kind=""``).
        images: the COCO image folder of that subset. An image is looked up as
            ``COCO_{subset}_{image_id:012d}.jpg`` (official naming; ``subset`` is the questions file's
            ``data_subtype``, ``test-dev2015`` read as ``test2015``), then as ``{image_id:012d}.jpg`` (COCO
            2017 naming); the first that exists is used.
        on_error: ``raise`` or ``skip`` malformed records and missing images.
        prompt_template: built from ``{question}``.
        limit: stop after this many samples (file order).

    Samples: ``target`` = ``multiple_choice_answer``, ``answers`` = the 10 annotators' answers, ``kind`` =
    ``answer_type`` (``yes/no``, ``number``, ``other``), ``id`` = the question id.
    """
    check_args(on_error, limit)
    check_template(prompt_template, "prompt_template", question="")
    qpath = require_file(
        questions, "VQAv2 questions file", "v2_OpenEnded_mscoco_<subset>_questions.json from visualqa.org"
    )
    root = require_dir(images, "the COCO images of the questions' subset, e.g. val2014/")
    data = load_json(qpath, "VQAv2 questions file")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        swapped = isinstance(data, dict) and "annotations" in data
        raise DataError(
            f'{qpath} is not a VQAv2 questions file: expected {{"questions": [...]}}'
            + ("; it is an annotations file (questions and annotations swapped?)" if swapped else "")
        )
    subtype = data.get("data_subtype") if isinstance(data.get("data_subtype"), str) else ""
    apath, by_question = (None, {}) if annotations is None else _load_annotations(annotations, subtype, qpath)
    subset = subtype.replace("test-dev", "test")
    found: dict[int, Path | None] = {}

    def image_of(image_id: int, where: str) -> Path:
        names = ([f"COCO_{subset}_{image_id:012d}.jpg"] if subset else []) + [f"{image_id:012d}.jpg"]
        if image_id not in found:
            found[image_id] = next((root / n for n in names if is_file(root / n)), None)
        image = found[image_id]
        if image is None:
            raise DataError(f"{where}: image not found: " + " or ".join(str(root / n) for n in names))
        return image

    def parse(record: Any, where: str) -> list[Sample]:
        record = as_dict(record, where)
        qid = get_key(record, "question_id", int, where)
        image_id = get_key(record, "image_id", int, where)
        prompt = prompt_template.format(question=get_key(record, "question", str, where).strip())
        if apath is None:
            return [Sample(image_of(image_id, where), prompt, "", "", image_id, str(qid))]
        if qid not in by_question:
            raise DataError(f"{where}: no annotation for question_id {qid} in {apath}")
        at = f"{apath.name} annotation of question_id {qid}"
        annotation = as_dict(by_question[qid], at)
        target = get_key(annotation, "multiple_choice_answer", str, at)
        kind = get_key(annotation, "answer_type", str, at)
        answers = []
        for j, answer in enumerate(get_list(annotation, "answers", at)):
            answers.append(
                get_key(as_dict(answer, f"{at} answers[{j}]"), "answer", str, f"{at} answers[{j}]")
            )
        return [Sample(image_of(image_id, where), prompt, target, kind, image_id, str(qid), tuple(answers))]

    records = (
        (with_id(f"{qpath.name} questions[{i}]", r, "question_id"), r)
        for i, r in enumerate(data["questions"])
    )
    return nonempty(collect(records, parse, on_error, limit), qpath)


OFA_VE_TEMPLATE = 'Can image and text1 "{premise}" imply text2 "{hypothesis}"?'
"""OFA's visual-entailment prompt: the premise (``sentence1``) and the hypothesis (``sentence2``)."""


def read_snli_ve(
    path: str | Path,
    images: str | Path,
    *,
    on_error: OnError = "raise",
    prompt_template: str = 'Does the image describe "{hypothesis}"?',
    limit: int | None = None,
) -> ReadResult:
    """Visual entailment pairs from an SNLI-VE file (``snli_ve_train.jsonl``, ``snli_ve_dev.jsonl``, ...).

    Args:
        path: the JSONL file, one pair per line.
        images: the Flickr30k images folder (``flickr30k_images/``); the image is
            ``images/{Flickr30K_ID}.jpg``.
        on_error: ``raise`` or ``skip`` malformed records and missing images.
        prompt_template: built from ``{hypothesis}`` (``sentence2``) and, optionally, ``{premise}`` (``sentence1``,
            the caption the hypothesis was written from). OFA puts both in the prompt:
            ``Can image and text1 "{premise}" imply text2 "{hypothesis}"?`` (:data:`OFA_VE_TEMPLATE`).
        limit: stop after this many samples (file order).

    Samples: ``target`` = :data:`SNLI_VE_ANSWERS` of ``gold_label`` (yes / maybe / no), ``kind`` = the gold
    label, ``answers = (target,)``, ``image_id`` = the Flickr30k id, ``id`` = ``pairID``. A ``gold_label`` of
    ``"-"`` (no annotator consensus) or any other unknown label makes the record malformed.
    """
    check_args(on_error, limit)
    check_template(prompt_template, "prompt_template", hypothesis="", premise="")
    wants_premise = "{premise}" in prompt_template
    path = require_file(path, "SNLI-VE file", "snli_ve_<split>.jsonl from github.com/necla-ml/SNLI-VE")
    root = require_dir(images, "the Flickr30k images folder (flickr30k_images/)")
    checked: dict[Path, str] = {}
    labels = ", ".join(SNLI_VE_ANSWERS)

    def parse(line: bytes, where: str) -> list[Sample]:
        record = decode_line(line, where)
        where = with_id(where, record, "pairID")
        flickr_id = get_key(record, "Flickr30K_ID", (str, int), where)
        hypothesis = get_key(record, "sentence2", str, where).strip()
        label = get_key(record, "gold_label", str, where)
        if label not in SNLI_VE_ANSWERS:
            raise DataError(f"{where}: key 'gold_label' is {label!r}, expected one of {labels}")
        pair_id = get_key(record, "pairID", str, where)
        image = check_image(root / f"{flickr_id}.jpg", where, checked)
        image_id = int(flickr_id) if str(flickr_id).isascii() and str(flickr_id).isdigit() else flickr_id
        target = SNLI_VE_ANSWERS[label]
        premise = get_key(record, "sentence1", str, where).strip() if wants_premise else ""
        prompt = prompt_template.format(hypothesis=hypothesis, premise=premise)
        return [Sample(image, prompt, target, label, image_id, pair_id, (target,))]

    return nonempty(collect(jsonl_lines(path), parse, on_error, limit), path)
