"""Referring expressions: RefCOCO, RefCOCO+ and RefCOCOg as released with github.com/lichengunc/refer."""

from __future__ import annotations

import pickle
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
    get_key,
    get_list,
    load_json,
    nonempty,
    require_dir,
    require_file,
    with_id,
)
from mmpt.data.sample import DataError, Sample, box_to_text


def _load_refs(path: Path) -> Any:
    if path.suffix == ".json":
        return load_json(path, "RefCOCO refs file")
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")  # the official refs are Python 2 pickles
    except Exception as exc:  # unpickling raises many exception types
        raise DataError(f"cannot unpickle RefCOCO refs file {path}: {exc!r}") from None


def _box(annotation: Any, where: str) -> tuple[float, float, float, float]:
    """COCO ``bbox`` ``[x, y, width, height]`` -> ``(x1, y1, x2, y2)``."""
    bbox = get_key(as_dict(annotation, where), "bbox", list, where)
    if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        raise DataError(f"{where}: key 'bbox' should be 4 numbers [x, y, width, height], got {bbox!r:.80}")
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)


def read_refcoco(
    refs: str | Path,
    instances: str | Path,
    images: str | Path,
    split: str,
    *,
    on_error: OnError = "raise",
    prompt_template: str = 'Which region does the text "{expression}" describe?',
    limit: int | None = None,
) -> ReadResult:
    """Referring expressions from the RefCOCO / RefCOCO+ / RefCOCOg release (github.com/lichengunc/refer).

    Args:
        refs: ``refs(unc).p`` (RefCOCO, RefCOCO+), ``refs(umd).p`` or ``refs(google).p`` (RefCOCOg). These are
            pickles, and loading a pickle runs code: use the official files or others from a source you trust.
            A ``.json`` file holding the same list of refs is read as JSON instead.
        instances: the ``instances.json`` next to it (COCO-style ``images``, and ``annotations`` with
            ``bbox``).
        images: the COCO ``train2014/`` folder; the image is ``images/<file_name in instances.json>``.
        split: ``train``, ``val``, ``test``, ``testA`` or ``testB`` (which exist depends on the dataset).
        on_error: ``raise`` or ``skip`` malformed records and missing images.
        prompt_template: built from ``{expression}`` (the sentence's ``sent``).
        limit: stop after this many samples (file order).

    Samples, one per sentence: ``box`` = ``(x, y, x + w, y + h)`` in pixels, ``image_size`` = ``(width,
    height)``, ``target`` = :func:`~mmpt.data.sample.box_to_text` of them, ``kind`` = the split, ``id`` =
    ``"{ref_id}:{sent_id}"``.
    """
    check_args(on_error, limit)
    check_template(prompt_template, "prompt_template", expression="")
    rpath = require_file(refs, "RefCOCO refs file", "refs(unc).p, refs(umd).p or refs(google).p from refer")
    ipath = require_file(instances, "RefCOCO instances file", "the instances.json of the same refer dataset")
    root = require_dir(images, "the COCO train2014/ images folder")
    ref_list = _load_refs(rpath)
    if not isinstance(ref_list, list):
        raise DataError(
            f"{rpath} is not a RefCOCO refs file: expected a list of refs, got {type(ref_list).__name__}"
        )
    data = load_json(ipath, "RefCOCO instances file")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise DataError(
            f'{ipath} is not a COCO instances file: expected {{"images": [...], "annotations": [...]}}'
        )
    image_by_id = {i["id"]: i for i in data["images"] if isinstance(i, dict) and "id" in i}
    annotation_by_id = {a["id"]: a for a in data["annotations"] if isinstance(a, dict) and "id" in a}
    hint = "(is it the instances.json of the same dataset?)"
    seen: set[str] = set()
    checked: dict[Path, str] = {}

    def parse(record: Any, where: str) -> list[Sample]:
        record = as_dict(record, where)
        ref_split = get_key(record, "split", str, where)
        seen.add(ref_split)
        if ref_split != split:
            return []
        ref_id = get_key(record, "ref_id", int, where)
        ann_id = get_key(record, "ann_id", int, where)
        image_id = get_key(record, "image_id", int, where)
        if ann_id not in annotation_by_id:
            raise DataError(f"{where}: ann_id {ann_id} is not in {ipath} {hint}")
        box = _box(annotation_by_id[ann_id], f"{ipath.name} annotation id {ann_id}")
        if image_id not in image_by_id:
            raise DataError(f"{where}: image_id {image_id} is not in {ipath} {hint}")
        at = f"{ipath.name} image id {image_id}"
        info = as_dict(image_by_id[image_id], at)
        size = (get_key(info, "width", int, at), get_key(info, "height", int, at))
        file_name = get_key(info, "file_name", str, at)
        sentences: list[tuple[str, int]] = []
        for j, sentence in enumerate(get_list(record, "sentences", where)):
            sat = f"{where} sentences[{j}]"
            sentence = as_dict(sentence, sat)
            sentences.append(
                (get_key(sentence, "sent", str, sat).strip(), get_key(sentence, "sent_id", int, sat))
            )
        image = check_image(root / file_name, where, checked)
        target = box_to_text(box, size)
        return [
            Sample(
                image,
                prompt_template.format(expression=sent),
                target,
                split,
                image_id,
                f"{ref_id}:{sent_id}",
                box=box,
                image_size=size,
            )
            for sent, sent_id in sentences
        ]

    records = ((with_id(f"{rpath.name}[{i}]", r, "ref_id"), r) for i, r in enumerate(ref_list))
    return nonempty(collect(records, parse, on_error, limit), rpath, repr(split), seen)
