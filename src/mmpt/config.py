"""Typed dataclass configs loaded from YAML, with ``key=value`` command-line overrides.

``load_config(path, overrides)`` reads YAML into nested dicts, applies dotted overrides such as
``train.lr=3e-3`` or ``method.length=32``, then builds the dataclasses field by field. Any unknown key, wrong
type or out-of-range value raises :class:`ConfigError` with one message naming the key and the fix.

Every error is one line, ``<section.key>: <what is wrong>, got <value>; <fix>``. Floats must be finite everywhere
(``nan`` / ``inf`` are refused while converting); each section's ``validate()`` bounds its numbers with
:func:`check_range` (``docs/configs.md`` lists the bounds).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem; the message names the key and how to fix it.

    The message is always one line: newlines and other control characters (e.g. from a YAML key or an override)
    are written as escapes such as ``\\n``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(str(message)))


def one_line(text: str) -> str:
    """``text`` with every non-printable character (newline, tab, NUL...) written as its escape."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def show(value: Any, limit: int = 80) -> str:
    """A short ``repr`` of ``value`` for messages: cut to ``limit`` characters."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# Caps shared by several sections (``docs/configs.md``, "Bounds").
MAX_TOKENS = 4096  # prompt / prefix lengths, generated tokens, LoRA rank
MAX_STEPS = 10**7  # optimizer steps, warm-up steps, logging / evaluation / saving intervals
MAX_BATCH = 10**5  # batch sizes and gradient accumulation
MAX_SAMPLES = 10**9  # dataset sizes and limits
MAX_WIDTH = 8192  # hidden widths of method modules (adapter bottleneck, prefix MLP)
MAX_LAYERS = 1024  # layer indices lie in -MAX_LAYERS..MAX_LAYERS-1 (the model then checks they exist)
MAX_IMAGE_SIZE = 4096  # image sides in pixels


# Polymorphic sections (e.g. ``method``): base class -> resolver(name) -> concrete dataclass.
_RESOLVERS: dict[type, Callable[[str], type]] = {}


def register_resolver(base: type, resolver: Callable[[str], type]) -> None:
    """Let fields typed ``base`` pick their concrete dataclass from their ``name`` key."""
    _RESOLVERS[base] = resolver


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (YAML 1.1 reads yes/no/on/off as booleans, which would turn the
    answers ``[yes, no]`` into ``[True, False]``.)"""


_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`_Loader` (booleans are only ``true`` / ``false``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: {show(value)} matches none of {_type_name(tp)}; give one of those types")
    if origin is Literal:
        if not isinstance(value, str | int | float | bool | None) or value not in args:
            raise ConfigError(f"{key}: {show(value)} is not allowed; choose one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {show(value)}; write it as [a, b, ...]")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {show(value)}; write it as {{key: value, ...}}")
        return dict(value)
    if isinstance(tp, type) and tp in _RESOLVERS:
        return _build_polymorphic(tp, value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {show(value)}; write true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {show(value)}; write a whole number such as 8")
    if tp is float:
        return _to_float(value, key)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {show(value)}; quote it")
    return value


def _to_float(value: Any, key: str) -> float:
    """``value`` (a number, or a string such as ``'1e-3'``, which YAML does not read as a number) as a finite
    float."""
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            number = math.inf
    elif isinstance(value, str):
        try:
            number = float(value)  # YAML reads '1e-3' as a string
        except ValueError:
            number = None
    if number is None:
        raise ConfigError(f"{key}: expected a number, got {show(value)}; write a number such as 0.1 or 1e-3")
    if not math.isfinite(number):
        raise ConfigError(f"{key}: must be a finite number, got {show(value)}; write a finite value (nan, inf and "
                          "numbers beyond 1.8e308 are not allowed)")
    return number


def _build_polymorphic(base: type, value: Any, key: str) -> Any:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"{key}: expected a mapping with a 'name' key, got {show(value)}; e.g. {{name: prefix}}")
    if not isinstance(value["name"], str):
        raise ConfigError(f"{key}.name: expected a string, got {show(value['name'])}; e.g. name: prefix")
    try:
        cls = _RESOLVERS[base](value["name"])
    except ValueError as exc:
        raise ConfigError(f"{key}.name: {exc}") from None
    return from_dict(cls, value, key)


def _polymorphic(tp: Any) -> bool:
    """Whether type ``tp`` (or a type inside it: ``X | None``, ``list[X]``, a dataclass holding one) is resolved
    through :func:`register_resolver`."""
    if isinstance(tp, type) and tp in _RESOLVERS:
        return True
    if dataclasses.is_dataclass(tp):
        return any(_polymorphic(h) for h in typing.get_type_hints(tp).values())
    return any(_polymorphic(a) for a in get_args(tp))


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {show(data)}; write it as {{key: value, ...}}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(fields)}"
            shown = name if isinstance(name, str) and len(name) <= 80 else show(name)
            raise ConfigError(f"{prefix + '.' if prefix else ''}{shown}: unknown key; {hint}")
    # sections whose class comes from a registry (methods) last: their registry may be heavy to import, and an
    # error in any other key should answer without it
    order = sorted((n for n in fields if n in data), key=lambda n: _polymorphic(hints[n]))
    converted = {name: _convert(data[name], hints[name], f"{prefix + '.' if prefix else ''}{name}") for name in order}
    kwargs = {name: converted[name] for name in fields if name in converted}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{exc}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclasses (nested) to plain YAML-friendly values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _yaml_problem(exc: BaseException) -> str:
    """One line saying what is wrong with unparsable YAML (and where, when PyYAML knows)."""
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem or exc.context or 'syntax error'}{where}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)  # ValueError: e.g. an integer of over 4300 digits


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to nested dicts, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {show(item)} must look like key=value, e.g. train.lr=3e-3")
        dotted, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw else ""
        except _YAML_ERRORS as exc:
            raise ConfigError(f"override {show(item)}: the value is not valid YAML ({_yaml_problem(exc)}); "
                              "quote it, e.g. key='text'") from None
        keys = dotted.strip().split(".")
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {show(item)}: '{k}' is not a section, got {show(nxt)}; "
                                  "override a key inside a mapping")
            node = nxt
        node[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({type(exc).__name__}); save it as UTF-8 text") from None
    try:
        data = load_yaml(text)
    except _YAML_ERRORS as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)}); fix the syntax there") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of sections, got {show(data)}; "
                          "write model:, data:, method:, train:, ...")
    return data


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (for ``validate()`` methods)."""
    if not condition:
        raise ConfigError(message)


def check_range(
    obj: Any,
    key: str,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
    fix: str = "",
    label: str = "",
) -> None:
    """Check that number field ``key`` of dataclass ``obj`` lies between ``low`` and ``high`` (for ``validate()``).

    ``None`` passes (the field's type allowed null). A list or tuple (``betas``, ``layers``) is checked item by
    item. ``open_low`` / ``open_high`` exclude the bound itself; ``label`` names the key in the message when it
    is not ``key`` (a field of a nested section checked by its parent). The message reads
    ``key: must be an integer from 1 to 4096, got 10000; <fix>``; the fix defaults to naming the field's default.
    """
    value = getattr(obj, key)
    if value is None:
        return
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        if (low < item if open_low else low <= item) and (item < high if open_high else item <= high):
            continue  # nan fails both comparisons; inf fails the finite bound
        if all(isinstance(v, int) for v in items) and not (open_low or open_high):
            what = f"an integer from {low} to {high}"
        else:
            what = f"a finite number in {'(' if open_low else '['}{_number(low)}, {_number(high)}{')' if open_high else ']'}"
        subject = "each value must be" if isinstance(value, list | tuple) else "must be"
        raise ConfigError(f"{label or key}: {subject} {what}, got {show(value)}; {fix or _default_fix(obj, key)}")


def _number(x: float) -> str:
    """A bound as written in messages: ``10`` and ``1000000`` rather than ``10.0`` and ``1e+06``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _default_fix(obj: Any, key: str) -> str:
    """The fix of a :func:`check_range` message: stay in range, and what the field's default is."""
    for f in dataclasses.fields(obj):
        if f.name == key:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            if default is None:
                return "use a value in that range, or null to leave it unset"
            return f"use a value in that range (the default is {show(default)})"
    return "use a value in that range"
