"""One checked reader for the JSON files mmpt writes and reads back (checkpoint state, best score, metrics,
sweep and analysis records): a run folder may have been edited by hand or come from someone else.

:func:`read_checked` parses a file (size and nesting bounded) and checks it against a small schema: the type of
each key mmpt reads (nested), and which keys must be there. Every problem is one :class:`ReadBackError` line
naming the file, the key path and the fix; nothing downstream sees a value of the wrong type.

Schemas are plain data: a type (``int``, ``str``, :data:`NUMBER` for int or float), :class:`Opt` (also null),
:class:`Obj` (an object: its checked keys, the required ones), :class:`ListOf` and :class:`MapOf`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_BYTES = 64 << 20
"""Largest JSON file mmpt reads back (a metrics file with per-kind scores is a few KB)."""


class ReadBackError(ValueError):
    """A file mmpt wrote does not hold what mmpt writes; the message names the file, the key and the fix."""


class NUMBER:  # noqa: N801 - a schema marker, used like the types int and str
    """Schema marker: a finite int or float (never a bool)."""


@dataclass(frozen=True)
class Opt:
    """``spec`` or null."""

    spec: Any


@dataclass(frozen=True)
class ListOf:
    """A list whose items match ``spec``."""

    spec: Any


@dataclass(frozen=True)
class MapOf:
    """An object whose values all match ``spec``."""

    spec: Any


@dataclass(frozen=True)
class Obj:
    """An object: ``fields`` are checked where present, ``required`` must be present; other keys pass."""

    fields: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()


def _describe(spec: Any) -> str:
    if spec is NUMBER:
        return "a number"
    if isinstance(spec, type):
        return {int: "an integer", str: "a string", bool: "true or false", float: "a number"}.get(spec, spec.__name__)
    if isinstance(spec, Opt):
        return f"{_describe(spec.spec)} or null"
    if isinstance(spec, ListOf):
        return "a list"
    return "an object"


def _shown(value: Any) -> str:
    return json.dumps(value, default=str)[:40]


def _name(key: str) -> str:
    """A key from the file as it may appear in a one-line message (escaped, at most 40 characters)."""
    return json.dumps(key)[1:-1][:40]


def check(value: Any, spec: Any, where: str = "") -> str:
    """Why ``value`` does not match ``spec`` (``"key.path: must be ..., got ..."``), or "" when it does."""
    here = where or "the file"
    if isinstance(spec, Opt):
        return "" if value is None else check(value, spec.spec, where)
    if spec is NUMBER:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return "" if ok else f"{here}: must be a finite number, got {_shown(value)}"
    if isinstance(spec, type):
        ok = isinstance(value, spec) and (spec is bool or not isinstance(value, bool))
        return "" if ok else f"{here}: must be {_describe(spec)}, got {_shown(value)}"
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            return f"{here}: must be a list, got {_shown(value)}"
        return next((p for i, item in enumerate(value) if (p := check(item, spec.spec, f"{where}[{i}]"))), "")
    if not isinstance(value, dict):
        return f"{here}: must be an object, got {_shown(value)}"
    if isinstance(spec, MapOf):
        return next((p for k, v in value.items()
                     if (p := check(v, spec.spec, f"{where}.{_name(k)}" if where else _name(k)))), "")
    missing = [k for k in spec.required if k not in value]
    if missing:
        return f"{here}: no {missing[0]!r}"
    return next((p for k, s in spec.fields.items()
                 if k in value and (p := check(value[k], s, f"{where}.{k}" if where else k))), "")


def read_checked(path: Path, spec: Any, fix: str, text: str | None = None) -> Any:
    """Parse the JSON file ``path`` (or its ``text`` already read) and check it against ``spec``; raises
    :class:`ReadBackError` ``"<path>: <key>: must be ..., got ...; <fix>"``."""
    if text is None:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ReadBackError(f"{path}: {size:,} bytes, far more than mmpt writes there; {fix}")
        text = path.read_text(encoding="utf-8", errors="replace")
    try:
        value = json.loads(text)
    except RecursionError:
        raise ReadBackError(f"{path}: nested too deeply, not what mmpt writes; {fix}") from None
    except json.JSONDecodeError as exc:
        raise ReadBackError(f"{path}: not JSON ({exc}); {fix}") from None
    problem = check(value, spec)
    if problem:
        raise ReadBackError(f"{path}: {problem}; {fix}")
    return value


STATE = Obj({"stage": int, "step": int, "epoch": int, "batches_in_epoch": int, "seen": int, "seconds": NUMBER,
             "running_loss": Opt(NUMBER), "metrics": Obj({"stages": ListOf(dict)}), "best_score": Opt(NUMBER),
             "best_step": str}, required=("stage", "step"))
"""``checkpoint/state.json`` (:class:`mmpt.checkpoint.TrainState`)."""

SCORE = Obj({"score": NUMBER, "tag": str, "metric": str}, required=("score", "tag"))
"""``best/score.json``."""

METRICS = Obj({
    "before": dict, "after": dict,
    "stages": ListOf(Obj({"name": str, "methods": ListOf(str)}, required=("name",))),
    "train": Obj({"steps": int, "samples": int, "seconds": NUMBER, "samples_per_s": NUMBER,
                  "final_loss": Opt(NUMBER)}),
    "parameters": Obj({"trainable": int, "total": int, "percent": NUMBER}),
    "cost": Obj({"wall_seconds": NUMBER, "peak_rss_mib": Opt(NUMBER)}),
    "best": Obj({"tag": str}),
})
"""A run's ``metrics.json`` (the parts reports and exports read)."""

SWEEP = Obj({"axes": MapOf(ListOf(str)), "fixed": ListOf(str), "smoke": bool,
             "runs": ListOf(Obj({"name": str, "values": MapOf(str)}, required=("name", "values")))},
            required=("axes", "runs"))
"""A sweep folder's ``sweep.json``."""

ANALYSIS = Obj({"analysis": str, "settings": dict}, required=("analysis",))
"""An analysis folder's ``analysis.json``."""


LOG_FIELDS = ("stage", "step", "loss", "lr")
"""The ``log.csv`` columns mmpt reads back (``samples_per_s`` and later columns are optional)."""


def read_log_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a run's ``log.csv``, checked: UTF-8, the columns mmpt writes, every row a stage
    name, a step (an integer >= 0) and a loss and learning rate that parse as numbers. Raises
    :class:`ReadBackError` naming the file and line: a file appended to or cut off by hand is refused, not half
    read."""
    fix = (f"delete that line (mmpt writes one row per logged step) or move {path.name} out of the run "
           "folder (the curves start again)")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ReadBackError(f"{path}: {size:,} bytes, far more than mmpt writes there; {fix}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ReadBackError(f"{path}: line {line} is not UTF-8 text; {fix}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = list(reader.fieldnames or [])
    if fields and [f for f in LOG_FIELDS if f not in fields]:
        raise ReadBackError(f"{path}: line 1 must name the columns {', '.join(LOG_FIELDS)}, got "
                            f"{_shown(','.join(fields))}; {fix}")
    rows = []
    for row in reader:
        line = reader.line_num
        if None in row or any(row.get(f) is None for f in fields):
            raise ReadBackError(f"{path}: line {line} does not have the {len(fields)} columns of line 1; {fix}")
        problem = _log_row_problem(row)
        if problem:
            raise ReadBackError(f"{path}: line {line}: {problem}; {fix}")
        rows.append(row)
    return fields, rows


def _log_row_problem(row: dict[str, str]) -> str:
    if not row["stage"]:
        return "no stage name"
    if not row["step"].isdigit():
        return f"step must be an integer, got {_shown(row['step'])}"
    for key in ("loss", "lr"):
        try:
            float(row[key])
        except ValueError:
            return f"{key} must be a number, got {_shown(row[key])}"
    return ""
