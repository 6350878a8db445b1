"""What every reader shares: :class:`ReadResult`, the ``on_error`` policy, and checked access to records."""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from mmpt.data.sample import DataError, Sample

OnError = Literal["raise", "skip"]
MAX_PROBLEMS = 20
BOX_TOLERANCE = 1.0
"""How far (pixels) a box may reach past the image's edges and still be usable (rounding in COCO boxes)."""
MAX_SIDE = 2**31 - 1
"""The largest image width or height a record may state (PIL's own limit)."""
SKIP_HINT = "or drop the record (data.on_error: skip)"


@dataclass
class ReadResult:
    """What a reader found: the samples, and how many records it skipped and why (``on_error="skip"``).

    Attributes:
        samples: the usable records, in file order.
        skipped: malformed records and records whose image is missing (``on_error="skip"``).
        problems: the messages of the first :data:`MAX_PROBLEMS` skipped records.
    """

    samples: list[Sample]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def check_args(on_error: str, limit: int | None) -> None:
    """ValueError for an ``on_error`` other than raise/skip or a ``limit`` below 1."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error should be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit should be a positive number of samples or None, got {limit}")


def check_template(template: str, name: str, **fields: str) -> None:
    """ValueError when ``template`` uses a field other than ``fields`` (or is not a valid format string)."""
    try:
        template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        allowed = ", ".join("{" + k + "}" for k in fields)
        raise ValueError(f"bad {name} {template!r} ({exc!r}); it may use only {allowed}") from None


def require_file(path: str | Path, what: str, expected: str) -> Path:
    """``path`` as a Path, or DataError naming it, ``what`` it is, and the file ``expected`` there."""
    path = Path(path)
    if not is_file(path):
        raise DataError(f"{what} not found: {path} (expected {expected})")
    return path


def require_dir(images: str | Path, expected: str) -> Path:
    """``images`` as a Path, or DataError when that folder does not exist."""
    images = Path(images)
    try:
        found = images.is_dir()
    except OSError:
        found = False
    if not found:
        raise DataError(f"images folder not found: {images} (expected {expected})")
    return images


def load_json(path: Path, what: str) -> Any:
    """The parsed file, or DataError naming it (and the line and column of a JSON syntax error)."""
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting too deep
        raise DataError(f"{what} {path} is not usable JSON: {_first_line(exc)}") from None


def jsonl_lines(path: Path) -> Iterator[tuple[str, bytes]]:
    """``("<file name> line N", raw line)`` for each non-blank line (N counts from 1); :func:`decode_line`
    decodes it, so a line that is not UTF-8 is one bad record rather than an unreadable file."""
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path.name} line {number}", line
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def decode_line(line: str | bytes, where: str) -> dict[str, Any]:
    """One JSONL line (UTF-8 bytes or text) as a dict, or DataError naming ``where``."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{where}: not valid UTF-8 (byte {exc.start} of the line); "
                f"re-save the file as UTF-8 {SKIP_HINT}"
            ) from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting too deep
        raise DataError(f"{where}: unusable JSON ({_first_line(exc)})") from None
    return as_dict(record, where)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def show(value: Any, width: int = 60) -> str:
    """A short ``repr`` of a value from a file, for a message (nested containers abbreviated)."""
    text = _REPR.repr(value) if isinstance(value, list | dict | tuple) else repr(value)
    return text[:width]


def text_problem(text: str) -> str:
    """Why ``text`` is not usable text ("" when it is): a lone surrogate, which UTF-8 cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"lone surrogate {text[exc.start]!r} at character {exc.start} (a broken \\u escape or a bad "
            "encoding); fix the text"
        )
    return ""


def check_text(text: str, what: str, where: str) -> str:
    """``text``, or DataError naming ``where`` and ``what`` (e.g. "key 'question'") if it is not valid text."""
    problem = text_problem(text)
    if problem:
        raise DataError(f"{where}: {what} is not valid text: {problem} {SKIP_HINT}")
    return text


def as_dict(record: Any, where: str) -> dict[str, Any]:
    """``record`` if it is a dict, else DataError naming ``where``."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record should be an object (dict), got {type(record).__name__}")
    return record


def get_key(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``record[key]`` checked against ``kind`` (a ``bool`` is not accepted as an ``int``)."""
    if key not in record:
        raise DataError(f"{where}: missing key '{key}'")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: key '{key}' should be {names}, got {type(value).__name__} {show(value)}")
    if isinstance(value, str):
        check_text(value, f"key '{key}'", where)
    return value


def get_list(record: dict[str, Any], key: str, where: str) -> list[Any]:
    """``record[key]`` as a non-empty list."""
    value = get_key(record, key, list, where)
    if not value:
        raise DataError(f"{where}: key '{key}' is an empty list")
    return value


def index_by(items: Iterable[Any], key: str) -> dict[Any, dict[str, Any]]:
    """The dicts among ``items`` by their ``key`` (those whose ``key`` is a number or a string)."""
    return {
        item[key]: item
        for item in items
        if isinstance(item, dict) and isinstance(item.get(key), int | float | str)
    }


def with_id(where: str, record: Any, key: str) -> str:
    """``where`` plus the record's own id, when it has one, so the record can be found with grep too."""
    if isinstance(record, dict) and isinstance(record.get(key), str | int):
        return f"{where} ({key} {record[key]!r})"
    return where


IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
"""What PIL raises for a file that is not a usable image."""


def is_file(path: Path) -> bool:
    """``path.is_file()``, False too where the path cannot be looked at (name too long, no permission)."""
    try:
        return path.is_file()
    except OSError:
        return False


def size_problem(size: tuple[Any, Any]) -> str:
    """Why ``(width, height)`` is not the size of a usable image ("" when it is): below 1 or too large."""
    width, height = size
    if not all(isinstance(v, int | float) and 1 <= v <= MAX_SIDE for v in size):
        return (
            f"image size {width}x{height} is empty or impossible (width and height must be 1 to {MAX_SIDE})"
        )
    return ""


def image_problem(path: Path) -> str:
    """Why ``path`` cannot serve as an image ("" when it can): missing, a header PIL cannot identify, or a
    width or height of 0.

    Only the header is read (about 0.1 ms a file); a file truncated after its header is found when loaded.
    """
    try:
        if not path.is_file():
            return f"image not found: {path}"
    except OSError as exc:
        return f"cannot access image {path}: {exc.strerror or exc}"
    try:
        with Image.open(path) as image:
            size = image.size
    except IMAGE_ERRORS as exc:
        return f"unreadable image {path}: {_first_line(exc)}"
    problem = size_problem(size)
    return f"unusable image {path}: {problem}" if problem else ""


def box_problem(box: tuple[float, float, float, float], size: tuple[Any, Any] | None) -> str:
    """Why ``box = (x1, y1, x2, y2)`` (pixels) is not a usable target box in an image of ``size = (width,
    height)`` ("" when it is): not finite, no positive width and height, or reaching more than
    :data:`BOX_TOLERANCE` pixels past the image's edges."""
    shown = "(" + ", ".join(f"{v:g}" for v in box) + ")"
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return f"box (x1, y1, x2, y2) = {shown} is not finite"
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return (
            f"box (x1, y1, x2, y2) = {shown} has width {x2 - x1:g} and height {y2 - y1:g}; "
            "both must be positive"
        )
    if size is not None:
        width, height = size
        t = BOX_TOLERANCE
        if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
            return f"box (x1, y1, x2, y2) = {shown} reaches outside the {width}x{height} image"
    return ""


def sample_problem(sample: Sample) -> str:
    """Why a reader's sample is not usable ("" when it is): text that is not valid (lone surrogates), an
    empty image size, or a box that is not finite, empty, or outside the image. The message says the fix."""
    texts = [("prompt", sample.prompt), ("target", sample.target), ("kind", sample.kind), ("id", sample.id)]
    texts += [(f"answers[{i}]", a) for i, a in enumerate(sample.answers)]
    texts += [(f"context[{i}][{j}]", t) for i, turn in enumerate(sample.context) for j, t in enumerate(turn)]
    if isinstance(sample.image_id, str):
        texts.append(("image_id", sample.image_id))
    for name, text in texts:
        problem = text_problem(text) if isinstance(text, str) else f"a {type(text).__name__}, not a string"
        if problem:
            return f"the sample's {name} is not valid text: {problem} {SKIP_HINT}"
    if sample.image_size is not None and size_problem(sample.image_size):
        return f"{size_problem(sample.image_size)}; fix the image size {SKIP_HINT}"
    if sample.box is not None:
        problem = box_problem(sample.box, sample.image_size)
        if problem:
            return f"{problem}; fix the box {SKIP_HINT}"
    return ""


def check_image(path: Path, where: str, seen: dict[Path, str]) -> Path:
    """``path`` if it is a readable image (checked once per distinct path, cached in ``seen``), else
    DataError."""
    if path not in seen:
        seen[path] = image_problem(path)
    if seen[path]:
        raise DataError(f"{where}: {seen[path]}; replace the file or drop the record (data.on_error: skip)")
    return path


def collect(
    records: Iterable[tuple[str, Any]],
    parse: Callable[[Any, str], list[Sample]],
    on_error: OnError,
    limit: int | None,
) -> ReadResult:
    """``parse(record, where)`` for each record, its samples checked by :func:`sample_problem`: a DataError
    raises or is skipped per ``on_error``; stops once ``limit`` samples are in."""
    result = ReadResult([])
    for where, record in records:
        try:
            samples = parse(record, where)
            for sample in samples:
                problem = sample_problem(sample)
                if problem:
                    raise DataError(f"{where}: {problem}")
        except DataError as exc:
            if on_error == "raise":
                raise
            result.skipped += 1
            if len(result.problems) < MAX_PROBLEMS:
                result.problems.append(str(exc))
            continue
        result.samples.extend(samples)
        if limit is not None and len(result.samples) >= limit:
            del result.samples[limit:]
            break
    return result


def nonempty(
    result: ReadResult, path: Path, split: str | None = None, splits: Iterable[str] = ()
) -> ReadResult:
    """``result``, or DataError when it holds no samples, saying why (all skipped, no such split, empty)."""
    if result.samples:
        return result
    if result.skipped:
        shown = "\n  ".join(result.problems[:5])
        raise DataError(f"{path}: no usable records ({result.skipped} skipped); first problems:\n  {shown}")
    if split is not None:
        have = ", ".join(repr(s) for s in sorted(set(splits))) or "none"
        raise DataError(f"{path}: no records in split {split}; splits in the file: {have}")
    raise DataError(f"{path}: no records")
