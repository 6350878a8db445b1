"""``mmpt sweep``: a grid of runs over config values and seeds, resumable, summarized with mean ± std.

``mmpt sweep configs/quickstart.yaml method.length=8,16,32 seed=0,1,2`` trains one run per combination into
``<output_dir>/sweep-<name>-<swept keys>/<name>-<key>=<value>...`` and records the grid in ``sweep.json``. A key
with one value is a plain override. Re-running the same command reuses every finished run (``metrics.json``),
resumes interrupted ones (``checkpoint/``) and moves a run that failed before its first checkpoint aside to
``<run>.failed`` (kept, never deleted) before training it again. :func:`summarize` groups the runs by the swept
values other than ``seed`` and gives mean ± std over seeds; ``mmpt report SWEEP`` shows it with a plot.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmpt.config import ConfigError
from mmpt.readback import SWEEP, read_checked
from mmpt.runconfig import load_run_config, load_run_folder_config, smoke
from mmpt.runfolder import write_text

log = logging.getLogger("mmpt")


def parse_grid(items: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(swept keys -> values, plain overrides) from ``key=v1,v2`` / ``key=v`` arguments."""
    axes: dict[str, list[str]] = {}
    fixed: list[str] = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"sweep: {item!r} is not key=value or key=v1,v2,...")
        parts = [v.strip() for v in values.split(",")]
        if values.startswith("[") or len(parts) == 1:
            fixed.append(item)  # a list value ([a, b]) or a single value: an ordinary override
            continue
        if any(not v for v in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"sweep: {key} has empty or repeated values in {values!r}")
        if key in axes:
            raise ConfigError(f"sweep: {key} is given twice")
        axes[key] = parts
    if not axes:
        raise ConfigError("sweep: give at least one key with several values, e.g. method.length=8,16 seed=0,1")
    return axes, fixed


def point_name(name: str, point: dict[str, str]) -> str:
    """The run name of one grid point: ``<name>-<key>=<value>-...`` (the key's last part)."""
    parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()]
    return "-".join([name, *parts]).replace("/", "_").replace(" ", "")[:100]


def run_sweep(config_path: str | Path, grid: Sequence[str], smoke_mode: bool = False, progress: bool = True,
              out: str | Path | None = None) -> Path:
    """Train every grid point not trained yet; return the sweep folder."""
    from mmpt.train import run

    axes, fixed = parse_grid(grid)
    base = load_run_config(config_path, fixed)
    if smoke_mode:
        base = smoke(base)
    folder = Path(out) if out is not None else _sweep_folder(
        Path(base.output_dir) / f"sweep-{base.name}-{'-'.join(axes)}", config_path, fixed, smoke_mode)
    points = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    configs = []
    for point in points:  # every config is checked before anything trains
        overrides = [*fixed, *(f"{k}={v}" for k, v in point.items()), f"name={point_name(base.name, point)}",
                     f"output_dir={folder}"]
        config = load_run_config(config_path, overrides)
        configs.append(smoke(config) if smoke_mode else config)
    if smoke_mode:  # smoke() moved output_dir under smoke/ again: keep the sweep folder
        from dataclasses import replace

        configs = [replace(c, output_dir=str(folder)) for c in configs]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep: grid points share a run name ({names[0]}...; names are cut to 100 characters): "
                          "give the config a shorter name")
    for config in configs:  # every existing run must match before anything is recorded or trained
        if (folder / config.name / "config.yaml").is_file():
            _check_same(folder / config.name, config)
    folder.mkdir(parents=True, exist_ok=True)
    _record(folder, config_path, axes, fixed, points, configs, smoke_mode)
    for n, config in enumerate(configs, 1):
        run_dir = folder / config.name
        where = f"mmpt sweep: run {n}/{len(points)} {config.name}"
        if (run_dir / "metrics.json").is_file():
            print(f"{where}: finished before, reused")
            continue
        if (run_dir / "checkpoint").is_dir():
            print(f"{where}: resuming its checkpoint")
            run(load_run_folder_config(run_dir), progress=progress, resume=run_dir)
            continue
        if run_dir.exists():
            aside = _aside(run_dir)
            print(f"{where}: a failed attempt (no checkpoint) moved to {aside.name}")
        print(f"{where}")
        run(config, progress=progress)
    return folder


def _sweep_folder(default: Path, config_path: str | Path, fixed: list[str], smoke_mode: bool) -> Path:
    """The sweep's folder: ``default``, or ``default-2``, ``-3``... when a folder of that name holds another sweep
    (another config file or other fixed overrides; said on stdout) or is no sweep at all. The same sweep run again
    finds its own folder and reuses its runs."""
    for n in range(1, 1000):
        folder = default if n == 1 else default.with_name(f"{default.name}-{n}")
        path = folder / "sweep.json"
        if not folder.exists():
            return folder
        if path.is_file():
            recorded = read_checked(path, SWEEP, "sweep into another output_dir, or restore the file")
            if recorded.get("config") == str(config_path) and recorded.get("fixed", []) == list(fixed) \
                    and recorded.get("smoke", False) == smoke_mode:
                return folder
        if n == 1:
            print(f"mmpt sweep: {folder} holds another sweep (other config or fixed settings); this one goes to "
                  f"{folder.name}-2 or the next free name")
    raise ConfigError(f"sweep: {default} and 998 numbered folders beside it are taken; give --out")


def _check_same(run_dir: Path, config: Any) -> None:
    """A run folder of the sweep must have been trained with this point's config (fixed overrides and the config
    file included); otherwise reusing it would mix settings in one table."""
    from mmpt.config import to_dict

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix[:-1]: d}
        return {k: v for key, value in d.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    was, now = flat(to_dict(load_run_folder_config(run_dir))), flat(to_dict(config))
    differ = [f"{k} ({was.get(k)!r} -> {now.get(k)!r})" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    if differ:
        raise ConfigError(f"sweep: {run_dir} was trained with other settings: {', '.join(differ[:5])}; sweep into "
                          "another output_dir, or move that run away")


def _aside(run_dir: Path) -> Path:
    target, k = run_dir.with_name(run_dir.name + ".failed"), 1
    while target.exists():
        k += 1
        target = run_dir.with_name(f"{run_dir.name}.failed{k}")
    run_dir.rename(target)
    return target


def _record(folder: Path, config_path: str | Path, axes: dict[str, list[str]], fixed: list[str],
            points: list[dict[str, str]], configs: list[Any], smoke_mode: bool) -> None:
    """Write ``sweep.json``; a sweep re-run with more values adds its new points to the recorded ones."""
    path = folder / "sweep.json"
    recorded: dict[str, Any] = read_checked(path, SWEEP, "sweep into another output_dir, or restore the file") \
        if path.is_file() else {}
    if recorded and list(recorded.get("axes", {})) != list(axes):
        raise ConfigError(f"{folder} holds a sweep over {', '.join(recorded['axes'])}, not {', '.join(axes)}: "
                          "give another output_dir or sweep the same keys")
    runs = {r["name"]: r for r in recorded.get("runs", [])}
    runs.update({c.name: {"name": c.name, "values": p} for p, c in zip(points, configs, strict=True)})
    merged_axes = {k: list(dict.fromkeys([*recorded.get("axes", {}).get(k, []), *v])) for k, v in axes.items()}
    text = json.dumps({"config": str(config_path), "axes": merged_axes, "fixed": fixed, "smoke": smoke_mode,
                       "runs": list(runs.values())}, indent=2)
    write_text(path, text)
