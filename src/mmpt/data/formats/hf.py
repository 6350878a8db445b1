"""Hugging Face ``datasets``: a dataset saved with ``save_to_disk``, a local folder ``load_dataset`` reads (parquet,
JSON, CSV, imagefolder...), or a hub dataset already in the local cache. Nothing is downloaded.

Columns map to Sample fields by a ``columns`` mapping (field -> column); defaults are the field names:

- ``image`` (required): an ``Image`` feature (decoded to RGB), a file path, or ``{"bytes", "path"}``;
- ``question`` + ``answers`` (VQA): ``answers`` may be a string, a list of strings or VQAv2's list of
  ``{"answer": ...}``; the target is the most frequent answer, every answer a reference;
- ``caption`` (captioning): a string or a list of references (the target is the first);
- ``box`` (referring expressions, with ``question`` as the expression): ``[x1, y1, x2, y2]`` pixels
  (``box_format: xywh`` for COCO's ``[x, y, w, h]``);
- ``id`` (optional): the record id.

A record missing its question/answer/caption or with an unreadable image is one bad record (``on_error``).
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmpt.data.formats.common import DataError, OnError, ReadResult, check_args, collect, nonempty
from mmpt.data.images import to_rgb
from mmpt.data.sample import Sample, box_to_text

FIELDS = ("image", "question", "answers", "caption", "box", "id")
CAPTION_PROMPT = "Describe the image briefly."


def load_split(path: str, split: str) -> Any:
    """The ``datasets.Dataset`` of ``split`` (``""``: a saved single Dataset, or the only split) at ``path``."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # mmpt never downloads
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DataError("data from Hugging Face datasets needs the `datasets` package: pip install datasets") from None
    local = Path(path).expanduser()
    scripts = sorted(p.name for p in local.glob("*.py")) if local.is_dir() else []
    if scripts:  # datasets 4 refuses them too, with a RuntimeError; mmpt never runs code that came with data
        raise DataError(f"Hugging Face dataset {path!r} holds a loading script ({scripts[0]}); mmpt runs no code "
                        "from a dataset: convert it to data files (parquet, JSON lines, CSV) or save_to_disk")
    try:
        if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(local))
        else:
            loaded = datasets.load_dataset(str(local) if local.is_dir() else path)
    except (FileNotFoundError, ValueError, TypeError, ConnectionError, OSError, RecursionError,
            datasets.exceptions.DatasetsError) as exc:  # ArrowInvalid is a ValueError: mixed types in a column
        data_files = local.is_dir() and any(p.is_file() for p in local.iterdir())
        fix = ("fix that record of the data file (datasets counts rows from 0; a column holds one type of value)"
               if data_files and not isinstance(exc, FileNotFoundError) else
               "give a folder saved with save_to_disk, a folder of data files, or a hub id already in the local cache")
        raise DataError(f"Hugging Face dataset {path!r} could not be read offline ({_cause(exc, local)}); {fix}") \
            from None
    if isinstance(loaded, datasets.Dataset):  # one saved Dataset: its rows are the training split, nothing else
        if split not in ("", "train"):
            raise DataError(f"Hugging Face dataset {path!r} has no split {split!r}; its splits: train (one saved "
                            "Dataset; save a DatasetDict with a validation split to evaluate on other rows)")
        return loaded
    splits = list(loaded)
    if not split and len(splits) == 1:
        split = splits[0]
    if split not in loaded:
        raise DataError(f"Hugging Face dataset {path!r} has no split {split!r}; its splits: {', '.join(splits)}")
    return loaded[split]


def _cause(exc: BaseException, local: Path) -> str:
    """One line for an error of ``datasets``: its first specific cause (``DatasetGenerationError`` only says "an
    error occurred"; pyarrow's cause names the row), with the data files of a local folder."""
    chain: list[BaseException] = []
    at: BaseException | None = exc
    while at is not None and len(chain) < 8:
        chain.append(at)
        at = at.__cause__ or at.__context__
    generic = ("An error occurred while generating the dataset",)
    said = next((str(e) for e in chain if str(e) and not str(e).startswith(generic)), type(exc).__name__)
    line = said.splitlines()[0][:300]
    if local.is_dir():
        files = sorted(p.name for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
        if files:
            line += f"; data files: {', '.join(files[:3])}" + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return line


def _image(value: Any, root: Path, where: str) -> np.ndarray | Path:
    if isinstance(value, dict):  # Image(decode=False): {"bytes", "path"}
        if value.get("bytes"):
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(io.BytesIO(value["bytes"])) as image:
                    return np.asarray(to_rgb(image))
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{where}: image bytes are not a readable image ({exc})") from None
        value = value.get("path")
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.is_file():
            raise DataError(f"{where}: image file {path} not found")
        return path
    raise DataError(f"{where}: no image (got {type(value).__name__})")


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: the {column} is {_shown(value)}, not text; fix the row or skip it "
                        "(data.on_error: skip)")
    return value


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    numbers = list(value) if isinstance(value, list | tuple) else []
    if len(numbers) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                                    for v in numbers):
        raise DataError(f"{where}: the box is {_shown(value)}; a box is 4 finite numbers; fix the row or skip "
                        "it (data.on_error: skip)")
    x, y, a, b = (float(v) for v in numbers)
    return x, y, a, b


def _shown(value: Any) -> str:
    """A short readable form of a cell for messages."""
    return repr(value)[:60]


def _answers(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    given = value
    if isinstance(value, dict) and "answer" in value:  # one {"answer": ...}, or columnar {"answer": [...], ...}
        value = value["answer"]
        if isinstance(value, str):
            return [value]
    if isinstance(value, list):
        found = [a.get("answer") if isinstance(a, dict) else a for a in value]
        if found and all(isinstance(a, str) for a in found):
            return found
    raise DataError(f"{where}: answers should be a string, a list of strings or of {{'answer': ...}}, got "
                    f"{_shown(given)}")


def read_hf(
    path: str,
    split: str = "",
    *,
    columns: dict[str, str] | None = None,
    prompt_template: str = "{question}",
    box_format: str = "xyxy",
    on_error: OnError = "raise",
    limit: int | None = None,
) -> ReadResult:
    """Samples of one split of a Hugging Face dataset (see the module docstring for the column mapping)."""
    check_args(on_error, limit)
    mapping = {field: field for field in FIELDS} | dict(columns or {})
    unknown = set(mapping) - set(FIELDS)
    if unknown:
        raise DataError(f"columns: unknown field(s) {sorted(unknown)}; map {', '.join(FIELDS)} to column names")
    dataset = load_split(path, split)
    present = {field: col for field, col in mapping.items() if col in dataset.column_names}
    if "image" not in present:
        raise DataError(f"Hugging Face dataset {path!r}: no image column {mapping['image']!r} (columns: "
                        f"{', '.join(dataset.column_names)}); map it with columns: {{image: <column>}}")
    if not {"question", "caption"} & set(present):
        raise DataError(f"Hugging Face dataset {path!r}: neither a question nor a caption column (columns: "
                        f"{', '.join(dataset.column_names)}); map one with columns: {{question: ...}} or "
                        "{caption: ...}")
    import datasets

    if isinstance(dataset.features.get(present["image"]), datasets.Image):
        dataset = dataset.cast_column(present["image"], datasets.Image(decode=False))
    root = Path(path).expanduser() if Path(path).expanduser().is_dir() else Path(".")

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, row in enumerate(dataset):
            yield f"{path} [{split or 'data'}] row {i}", row

    def parse(row: dict[str, Any], where: str) -> list[Sample]:
        image = _image(row[present["image"]], root, where)
        record_id = str(row[present["id"]]) if "id" in present else where.rsplit(" ", 1)[-1]
        size = (image.shape[1], image.shape[0]) if isinstance(image, np.ndarray) else None
        if "box" in present:
            if size is None:
                from PIL import Image

                with Image.open(image) as opened:
                    size = opened.size
            x, y, a, b = _box(row[present["box"]], where)
            box = (x, y, x + a, y + b) if box_format == "xywh" else (x, y, a, b)
            prompt = prompt_template.format(question=_text(row[present["question"]], where, "question"))
            return [Sample(image, prompt, box_to_text(box, size), "", record_id, record_id, box=box, image_size=size)]
        if "question" in present:
            answers = _answers(row.get(present.get("answers", ""), ""), where)
            target = Counter(answers).most_common(1)[0][0]
            prompt = prompt_template.format(question=_text(row[present["question"]], where, "question"))
            return [Sample(image, prompt, target, "", record_id, record_id, tuple(answers), image_size=size)]
        captions = _answers(row[present["caption"]], where)
        return [Sample(image, CAPTION_PROMPT, captions[0], "", record_id, record_id, tuple(captions),
                       image_size=size)]

    return nonempty(collect(rows(), parse, on_error, limit), Path(path), split or None, [split])
