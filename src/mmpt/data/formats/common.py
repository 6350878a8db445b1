"""What every reader shares: :class:`ReadResult`, the ``on_error`` policy, and checked access to records."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from mmpt.data.sample import DataError, Sample

OnError = Literal["raise", "skip"]
MAX_PROBLEMS = 20


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
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (expected {expected})")
    return path


def require_dir(images: str | Path, expected: str) -> Path:
    """``images`` as a Path, or DataError when that folder does not exist."""
    images = Path(images)
    if not images.is_dir():
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


def jsonl_lines(path: Path) -> Iterator[tuple[str, str]]:
    """``("<file name> line N", text)`` for each non-blank line (N counts from 1)."""
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path.name} line {number}", line
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def decode_line(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a dict, or DataError naming ``where``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    return as_dict(record, where)


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
        raise DataError(f"{where}: key '{key}' should be {names}, got {type(value).__name__} {value!r:.60}")
    return value


def get_list(record: dict[str, Any], key: str, where: str) -> list[Any]:
    """``record[key]`` as a non-empty list."""
    value = get_key(record, key, list, where)
    if not value:
        raise DataError(f"{where}: key '{key}' is an empty list")
    return value


def with_id(where: str, record: Any, key: str) -> str:
    """``where`` plus the record's own id, when it has one, so the record can be found with grep too."""
    if isinstance(record, dict) and isinstance(record.get(key), str | int):
        return f"{where} ({key} {record[key]!r})"
    return where


IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for a file that is not a usable image."""


def image_problem(path: Path) -> str:
    """Why ``path`` cannot serve as an image ("" when it can): missing, or a header PIL cannot identify.

    Only the header is read (about 0.1 ms a file); a file truncated after its header is found when loaded.
    """
    if not path.is_file():
        return f"image not found: {path}"
    try:
        with Image.open(path):
            pass
    except IMAGE_ERRORS as exc:
        return f"unreadable image {path}: {exc}"
    return ""


def check_image(path: Path, where: str, seen: dict[Path, str]) -> Path:
    """``path`` if it is a readable image (checked once per distinct path, cached in ``seen``), else DataError."""
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
    """``parse(record, where)`` for each record: a DataError raises or is skipped per ``on_error``; stops once
    ``limit`` samples are in."""
    result = ReadResult([])
    for where, record in records:
        try:
            samples = parse(record, where)
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
