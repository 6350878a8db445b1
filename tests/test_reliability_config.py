"""Property-based tests of config loading: whatever the YAML text, nested mapping or ``key=value`` override, the
loader returns a valid :class:`RunConfig` or raises a one-line :class:`ConfigError`, never another exception."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import io
import math
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmpt.config import ConfigError, to_dict
from mmpt.methods import MethodConfig, list_methods
from mmpt.runconfig import RunConfig, load_run_config, parse_run_config

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
WORKDIR = Path(tempfile.mkdtemp(prefix="mmpt-reliability-"))  # output_dir of generated configs; no run writes there
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    database=None)


def _fields(cls: type) -> dict[str, type]:
    """Field name -> resolved type hint of dataclass ``cls``."""
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


SECTIONS: dict[str, list[str]] = {
    name: list(_fields(typing.get_args(tp)[0] if typing.get_args(tp) else tp))
    for name, tp in _fields(RunConfig).items()
    if name in ("model", "data", "train", "eval")
}
METHOD_KEYS = sorted({k for e in list_methods() for k in _fields(e.config_cls)})
METHOD_NAMES = [e.name for e in list_methods()]
TOP_KEYS = list(_fields(RunConfig))
ALL_KEYS = sorted({*TOP_KEYS, *METHOD_KEYS, *(k for keys in SECTIONS.values() for k in keys), "format", "path"})
DOTTED = [*TOP_KEYS, *(f"{s}.{k}" for s, keys in SECTIONS.items() for k in keys), *(f"method.{k}" for k in METHOD_KEYS),
          "data.train.limit", "data.train.format", "data.eval.path"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63, 10**9, 10**12])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, 1e-3, 0.5, 1.0, 1e9, 1e308, math.nan, math.inf])
    | st.text(max_size=12)
    | st.sampled_from(["", "1e-3", "1e9", ".inf", "yes", "lm", "files", "jsonl", "prefix", "lora", "a/b", "..", "\n"])
    | st.sampled_from(METHOD_NAMES)
)
keys = st.sampled_from(ALL_KEYS) | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=8)


def _rarely(draw: st.DrawFn, n: int) -> bool:
    """True about once in ``n`` draws (not at 0, which Hypothesis favours)."""
    return draw(st.integers(0, n - 1)) == n // 2


@st.composite
def typed(draw: st.DrawFn, tp: Any) -> Any:
    """A value for a field of type ``tp``: usually of that type and near the valid range, sometimes anything."""
    if _rarely(draw, 20):
        return draw(values)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return draw(st.sampled_from(args).flatmap(typed))
    if origin is typing.Literal:
        return draw(st.sampled_from(args))
    if origin in (list, tuple):
        items = [a for a in args if a is not Ellipsis] or [Any]
        if origin is tuple and len(items) > 1:
            return [draw(typed(a)) for a in items]
        return draw(st.lists(typed(items[0]), max_size=3))
    if tp is MethodConfig:
        return draw(st.sampled_from([e.config_cls for e in list_methods()]).flatmap(mapping))
    if dataclasses.is_dataclass(tp):
        return draw(mapping(tp))
    simple = {
        bool: st.booleans(),
        int: st.integers(min_value=-2, max_value=5000) | st.sampled_from([10**5, 2**32, 2**63, 10**12]),
        float: st.floats(min_value=0, max_value=2) | st.sampled_from([1e-3, 0.99, 11.0, 1e6, -1.0, math.nan, math.inf]),
        str: st.sampled_from(["run", "x.jsonl", "{question} ?", "lm", "a/b", ""]) | st.text(max_size=8),
    }
    return draw(simple.get(tp, values))


@st.composite
def mapping(draw: st.DrawFn, cls: type) -> dict[Any, Any]:
    """A mapping for dataclass ``cls``: a random subset of its keys with :func:`typed` values, a polymorphic
    section's ``name``, rarely an unknown key."""
    hints = _fields(cls)
    chosen = draw(st.lists(st.sampled_from(list(hints)), unique=True, max_size=min(4, len(hints))))
    data: dict[Any, Any] = {key: draw(typed(hints[key])) for key in chosen}
    if issubclass(cls, MethodConfig):
        entry = next(e for e in list_methods() if e.config_cls is cls)
        data["name"] = draw(values) if _rarely(draw, 10) else entry.name
        if entry.name == "answer_head" and "answers" not in data:
            data["answers"] = ["yes", "no"]
    if cls is RunConfig:
        if not _rarely(draw, 4):
            data["output_dir"] = str(WORKDIR)
        if "method" not in data and "stages" not in data and not _rarely(draw, 4):
            data["method"] = draw(typed(MethodConfig))
    if _rarely(draw, 30):
        data[draw(keys)] = draw(values)
    return data


def run_dicts() -> st.SearchStrategy[dict[Any, Any]]:
    """Nested mappings shaped like run configs (real sections and keys, values mostly of the right type)."""
    return mapping(RunConfig)


raw_values = (
    st.text(max_size=16)
    | st.integers(min_value=-2, max_value=5000).map(str)  # near the bounds: mostly valid configs
    | st.floats(min_value=0, max_value=2).map(repr)
    | scalars.map(lambda v: yaml.safe_dump(v, default_flow_style=True).removesuffix("\n...\n").strip())
    | st.sampled_from(["[", "{a: 1", "!!python/object:os.system ls", "&a [*a]", "1" * 5000, "'x", "- a\n- b",
                       "null", "-1", "1e9", "1.0e9", ".nan", "[0.9, 2]", "{name: lora, r: 9223372036854775808}"])
)
overrides = st.lists(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(DOTTED) | st.text(max_size=10), raw_values)
    | st.text(max_size=10),
    max_size=4,
)


def _outcome(load: typing.Callable[[], RunConfig]) -> RunConfig | None:
    """Run ``load``: a RunConfig (checked to survive the YAML round trip of ``config.yaml``) or a ConfigError."""
    try:
        config = load()
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        assert len(message) < 1000, message
        return None
    assert isinstance(config, RunConfig)
    saved = yaml.safe_dump(to_dict(config), sort_keys=False)  # what a run writes as config.yaml
    assert parse_run_config(yaml.load(saved, Loader=yaml.SafeLoader)) == config  # noqa: S506
    return config


@SETTINGS
@given(st.text(max_size=200) | run_dicts().map(lambda d: yaml.safe_dump(d, allow_unicode=True)))
def test_random_yaml_files_load_or_give_one_line_error(text: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=WORKDIR, delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        _outcome(lambda: load_run_config(f.name))
    finally:
        Path(f.name).unlink()


@SETTINGS
@given(run_dicts(), overrides)
def test_random_mappings_and_overrides_load_or_give_one_line_error(data: dict[Any, Any], items: list[str]) -> None:
    _outcome(lambda: parse_run_config(data, items))


@SETTINGS
@given(overrides)
def test_random_overrides_of_a_shipped_config(items: list[str]) -> None:
    _outcome(lambda: load_run_config(QUICKSTART, [f"output_dir={WORKDIR}", *items]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(overrides.map(lambda items: [i for i in items if "=" in i and not i.startswith("-")]))
def test_cli_train_smoke_validates_without_crashing(items: list[str]) -> None:
    from mmpt.cli import main

    err = io.StringIO()
    with mock.patch("mmpt.train.run", return_value={}) as run, contextlib.redirect_stderr(err):
        code = main(["train", str(QUICKSTART), "--smoke", "--no-progress", f"output_dir={WORKDIR}", *items])
    assert code in (0, 2)
    if code == 2:
        assert not run.called
        assert err.getvalue().startswith("mmpt: config error: ") and err.getvalue().count("\n") == 1, err.getvalue()
    else:
        assert run.called


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1" * 400, "1e999"])
@pytest.mark.parametrize("key", ["train.lr", "train.weight_decay", "train.warmup_ratio", "train.grad_clip",
                                 "method.init_std", "method.dropout"])
def test_every_float_must_be_finite(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: must be a finite number"):
        load_run_config(QUICKSTART, [f"{key}={value}"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 is honoured on a CUDA GPU")
def test_fp16_without_a_gpu_is_refused_not_silently_fp32():
    from mmpt.precision import resolve_precision

    with pytest.raises(ConfigError, match="needs a CUDA GPU") as info:
        resolve_precision("fp16")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override,named", [
    ("model.name=''", "name: empty"),
    (f"eval.candidates={'a' * 5000}", "candidates: a string names a file"),
    ("eval.candidates=[]", "candidates: an empty list"),
])
def test_unclear_errors_now_name_the_key(override, named):
    """model.name '', eval.candidates as a 5,000-character string or an empty list: one line naming the key
    (issue 20; before: a later traceback or an unclear message)."""
    from mmpt.runconfig import load_run_config

    with pytest.raises(ConfigError, match=named) as info:
        load_run_config(None, ["method={name: prefix, length: 2}", override])
    assert "\n" not in str(info.value)


def test_mmpt_cache_pointing_at_a_file_is_one_line(tmp_path, monkeypatch):
    from mmpt.cache import cache_root

    file = tmp_path / "cache.txt"
    file.write_text("x")
    monkeypatch.setenv("MMPT_CACHE", str(file))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        cache_root()
