"""Reading a sweep folder: mean ± std over seeds per combination of swept values, and its plot. Kept apart from
:mod:`mmpt.sweep` (which trains) so that reports read sweeps without importing the training loop."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from mmpt.plots import fraction_axis, integer_ticks
from mmpt.readback import SWEEP, read_checked
from mmpt.runconfig import load_run_folder_config
from mmpt.runfolder import FIX, RunFolderError, plain_name, refuse_links, save_figure


def summarize(folder: Path, metric: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """Rows of mean ± std over seeds per combination of the other swept values, and the metric used (the task's
    main one unless given). Runs not finished yet are counted in ``missing``."""
    from mmpt.integrity import verified_json
    from mmpt.tasks import main_metric

    refuse_links(folder)
    spec = read_checked(folder / "sweep.json", SWEEP, f"run the sweep again (mmpt sweep) into {folder}")
    keys = [k for k in spec["axes"] if k != "seed"]
    groups: dict[tuple[str, ...], list[float]] = {}
    missing: dict[tuple[str, ...], int] = {}
    for entry in spec["runs"]:
        group = tuple(entry["values"].get(k, "") for k in keys)
        groups.setdefault(group, [])
        run_dir = folder / plain_name(entry["name"], folder / "sweep.json")
        if run_dir.is_symlink():
            raise RunFolderError(f"{run_dir}: a symbolic link inside a sweep folder; {FIX}")
        path = run_dir / "metrics.json"
        if not path.is_file():
            missing[group] = missing.get(group, 0) + 1
            continue
        metrics = verified_json(path, f"re-run the sweep to retrain {entry['name']}")
        if metric is None:
            config = load_run_folder_config(folder / entry["name"])
            metric = main_metric(config.task, config.eval)
        value = metrics.get("after", {}).get(metric)
        if value is not None:
            groups[group].append(float(value))
    rows = []
    for group, values in groups.items():
        row: dict[str, Any] = dict(zip(keys, group, strict=True))
        row.update({"runs": len(values), "missing": missing.get(group, 0),
                    "mean": statistics.fmean(values) if values else None,
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None})
        rows.append(row)
    return rows, metric or "metric"


SUMMARY_KEYS = ("runs", "missing", "mean", "std")


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The swept config keys (other than ``seed``) of :func:`summarize`'s rows."""
    return [k for k in rows[0] if k not in SUMMARY_KEYS]


def plot_sweep(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Mean ± std of ``metric`` against the first swept value (one line per value of the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = swept_keys(rows)
    if not keys:
        raise ValueError("a sweep over seeds only has nothing to plot against")
    fig, ax = plt.subplots(figsize=(5, 4))
    x_key, others = keys[0], keys[1:]
    for line in dict.fromkeys(tuple(r[k] for k in others) for r in rows):
        mine = [r for r in rows if tuple(r[k] for k in others) == line and r["mean"] is not None]
        xs = [r[x_key] for r in mine]
        numeric = all(_is_number(x) for x in xs)
        order = sorted(range(len(mine)), key=lambda i: float(xs[i]) if numeric else i)
        ax.errorbar([float(xs[i]) if numeric else xs[i] for i in order], [mine[i]["mean"] for i in order],
                    yerr=[mine[i]["std"] for i in order], marker="o", capsize=3,
                    label=", ".join(f"{k}={v}" for k, v in zip(others, line, strict=True)) or None)
    ax.set(xlabel=x_key, ylabel=f"{metric} (mean ± std over seeds)", title="sweep")
    values = [r[x_key] for r in rows]
    if all(_is_number(v) for v in values):
        integer_ticks(ax, [float(v) for v in values])
    fraction_axis(ax, metric)
    if others:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
