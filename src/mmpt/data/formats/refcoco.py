"""Referring expressions: RefCOCO, RefCOCO+ and RefCOCOg as released with github.com/lichengunc/refer."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from mmpt.data.formats.common import (
    SKIP_HINT,
    OnError,
    ReadResult,
    as_dict,
    box_problem,
    check_args,
    check_image,
    check_template,
    collect,
    get_key,
    get_list,
    index_by,
    is_file,
    load_json,
    nonempty,
    require_dir,
    require_file,
    show,
    size_problem,
    with_id,
)
from mmpt.data.sample import DataError, Sample, box_to_text

PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))
"""What a refs file may hold: lists of dicts of strings and numbers, as in the official release."""
MAX_NODES = 50_000_000
"""The most values a refs pickle may unfold to (the official files hold a few million)."""
MAX_INT = 2**63
"""Integers in a refs file must be smaller than this in size (ids, not numbers of thousands of digits)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only lists, dicts, tuples, strings, numbers, booleans and None.

    ``find_class`` refuses every global, so a pickle cannot name a function or class to call (``os.system``
    in a ``__reduce__``, ...): the way a pickle runs code. Python 2 strings are decoded as latin-1.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Refuse every global: a refs file holds only plain values."""
        raise pickle.UnpicklingError(
            f"it names the Python object {module}.{name}, and a refs file holds only lists, dicts, strings "
            "and numbers (a crafted pickle, or not a refs file)"
        )


def _plain_problem(value: Any) -> str:
    """Why ``value`` is not plain data ("" when it is): another type, a huge integer, a container that holds
    itself, or more than :data:`MAX_NODES` values once shared containers are unfolded."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, finished = stack.pop()
        if not isinstance(item, PLAIN_TYPES):
            return f"it holds a {type(item).__name__}, not only lists, dicts, strings and numbers"
        if isinstance(item, int) and not isinstance(item, bool) and abs(item) >= MAX_INT:
            return "it holds an integer of more than 19 digits"
        if not isinstance(item, dict | list | tuple):
            continue
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else list(item)
        if finished:
            active.discard(id(item))
            sizes[id(item)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(item)] > MAX_NODES:
                return f"it unfolds to more than {MAX_NODES} values"
            continue
        if id(item) in sizes:
            continue
        if id(item) in active:
            return "it holds a container that contains itself"
        active.add(id(item))
        stack.append((item, True))
        stack.extend((c, False) for c in children)
    return ""


def _reason(exc: BaseException) -> str:
    """One line saying why unpickling or writing failed."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, pickle.UnpicklingError) and text else f"{type(exc).__name__}: {text}"


def load_refs_pickle(path: str | Path) -> Any:
    """A refs pickle unpickled by :class:`RestrictedUnpickler` (plain data only, no code runs), or
    DataError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            value = RestrictedUnpickler(f, encoding="latin1").load()  # the official refs are Python 2 pickles
    except Exception as exc:  # noqa: BLE001 - unpickling raises many exception types, all mean "not usable"
        raise DataError(f"cannot unpickle RefCOCO refs file {path}: {_reason(exc)}") from None
    problem = _plain_problem(value)
    if problem:
        raise DataError(f"refused RefCOCO refs file {path}: {problem}; use the official refs file")
    return value


def convert_refcoco_refs(src_p: str | Path, dst_json: str | Path) -> Path:
    """Convert a refs pickle (``refs(unc).p`` ...) once to a JSON file that ``refs:`` can name instead.

    The pickle is read by :class:`RestrictedUnpickler`, so a crafted file cannot run code: it is refused with
    :class:`~mmpt.data.sample.DataError`, as is one that is not a list of refs. Returns ``dst_json``.
    """
    src, dst = Path(src_p), Path(dst_json)
    require_file(src, "RefCOCO refs file", "refs(unc).p, refs(umd).p or refs(google).p from refer")
    if dst.resolve() == src.resolve():
        raise DataError(f"convert_refcoco_refs: the JSON file {dst} would overwrite the pickle {src}")
    refs = load_refs_pickle(src)
    if not isinstance(refs, list):
        raise DataError(
            f"{src} is not a RefCOCO refs file: expected a list of refs, got {type(refs).__name__}"
        )
    try:
        text = json.dumps(refs)
    except (ValueError, TypeError, RecursionError) as exc:  # keys JSON cannot hold, nesting too deep
        raise DataError(f"cannot write {src} as JSON: {_reason(exc)}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(dst)
    return dst


def _refused(path: Path) -> DataError:
    """The one-line error for a refs pickle read without ``allow_pickle``."""
    target = path.with_suffix(".json")
    there = f" ({target} already exists: point refs: at it)" if is_file(target) else ""
    command = (
        "from mmpt.data.formats.refcoco import convert_refcoco_refs; "
        f"convert_refcoco_refs({str(path)!r}, {str(target)!r})"
    )
    return DataError(
        f"RefCOCO refs file {path} is a Python pickle, and loading a pickle can run code hidden in it, so "
        f'mmpt does not load one by default: convert it once with python -c "{command}" and point refs: at '
        f"the .json{there}, or, for a file from a source you trust, set allow_pickle: true in this data "
        "source (allow_pickle=True in Python; mmpt then reads it with a restricted unpickler that builds only "
        "lists, dicts, strings and numbers)"
    )


def _load_refs(path: Path, allow_pickle: bool) -> Any:
    """The refs of a ``.json`` file, or of a pickle when ``allow_pickle`` (restricted unpickler)."""
    if path.suffix.lower() == ".json":
        return load_json(path, "RefCOCO refs file")
    if not allow_pickle:
        raise _refused(path)
    return load_refs_pickle(path)


def _box(annotation: Any, where: str) -> tuple[float, float, float, float]:
    """COCO ``bbox`` ``[x, y, width, height]`` -> ``(x1, y1, x2, y2)``."""
    bbox = get_key(as_dict(annotation, where), "bbox", list, where)
    if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        raise DataError(
            f"{where}: key 'bbox' should be 4 numbers [x, y, width, height], got {show(bbox, 80)}"
        )
    try:
        x, y, w, h = (float(v) for v in bbox)
    except OverflowError:
        raise DataError(
            f"{where}: key 'bbox' holds a number too large for a box; fix the bbox {SKIP_HINT}"
        ) from None
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
    allow_pickle: bool = False,
) -> ReadResult:
    """Referring expressions from the RefCOCO / RefCOCO+ / RefCOCOg release (github.com/lichengunc/refer).

    Args:
        refs: a ``.json`` file holding the list of refs (made once by :func:`convert_refcoco_refs`), or the
            released pickle ``refs(unc).p`` (RefCOCO, RefCOCO+), ``refs(umd).p`` or ``refs(google).p``
            (RefCOCOg) with ``allow_pickle=True``.
        instances: the ``instances.json`` next to it (COCO-style ``images``, and ``annotations`` with
            ``bbox``).
        images: the COCO ``train2014/`` folder; the image is ``images/<file_name in instances.json>``.
        split: ``train``, ``val``, ``test``, ``testA`` or ``testB`` (which exist depends on the dataset).
        on_error: ``raise`` or ``skip`` malformed records and missing images.
        prompt_template: built from ``{expression}`` (the sentence's ``sent``).
        limit: stop after this many samples (file order).
        allow_pickle: read a refs pickle (a file from a source you trust). Loading a pickle can run code, so
            without it a pickle is refused with a DataError that says how to convert it; with it the pickle is
            still read by :class:`RestrictedUnpickler`, which builds only lists, dicts, strings and numbers.

    Every box must be finite, of positive width and height and inside its image (up to
    :data:`~mmpt.data.formats.common.BOX_TOLERANCE` pixels), and every image at least 1x1: other records are
    malformed.

    Samples, one per sentence: ``box`` = ``(x, y, x + w, y + h)`` in pixels, ``image_size`` = ``(width,
    height)``, ``target`` = :func:`~mmpt.data.sample.box_to_text` of them, ``kind`` = the split, ``id`` =
    ``"{ref_id}:{sent_id}"``.
    """
    check_args(on_error, limit)
    check_template(prompt_template, "prompt_template", expression="")
    rpath = require_file(
        refs, "RefCOCO refs file", "a refs .json made by convert_refcoco_refs, or refs(unc).p / refs(umd).p / "
        "refs(google).p from refer with allow_pickle"
    )
    ipath = require_file(instances, "RefCOCO instances file", "the instances.json of the same refer dataset")
    root = require_dir(images, "the COCO train2014/ images folder")
    ref_list = _load_refs(rpath, allow_pickle)
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
    image_by_id = index_by(data["images"], "id")
    annotation_by_id = index_by(data["annotations"], "id")
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
        box = _box(annotation_by_id[ann_id], f"{where}, annotation id {ann_id} in {ipath.name}")
        if image_id not in image_by_id:
            raise DataError(f"{where}: image_id {image_id} is not in {ipath} {hint}")
        at = f"{where}, image id {image_id} in {ipath.name}"
        info = as_dict(image_by_id[image_id], at)
        size = (get_key(info, "width", int, at), get_key(info, "height", int, at))
        problem = size_problem(size)
        if problem:
            raise DataError(f"{at}: {problem}; fix its width and height {SKIP_HINT}")
        problem = box_problem(box, size)
        if problem:
            raise DataError(
                f"{where}: {problem} (bbox of annotation id {ann_id} in {ipath.name}); "
                f"fix the bbox {SKIP_HINT}"
            )
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
