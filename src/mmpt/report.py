"""The markdown report of a run and its before/after table."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmpt.data import Sample
from mmpt.readback import ANALYSIS, METRICS, read_checked
from mmpt.runconfig import RunConfig
from mmpt.runfolder import inside, refuse_links, write_text, writing

log = logging.getLogger(__name__)


def pictures(out_dir: Path, samples: Sequence[Sample]) -> list[Path]:
    """Write the run's ``curves.png`` and ``gallery.png`` (see :mod:`mmpt.plots`). The run's results are already
    saved when this runs, so a plotting failure is reported as a warning instead of failing the run."""
    from mmpt.plots import write_run_pictures

    try:
        return write_run_pictures(out_dir, samples)
    except Exception as exc:  # noqa: BLE001 - e.g. an image file moved away since evaluation
        log.warning("could not draw the run's pictures (%s: %s); its results are saved", type(exc).__name__, exc)
        return []


def before_after_table(metrics: dict[str, Any]) -> str:
    """Markdown table of every metric before and after training."""
    before, after = metrics.get("before", {}), metrics.get("after", {})
    keys = [k for k in sorted(set(before) | set(after)) if k != "n" and isinstance(after.get(k, before.get(k)), float)]
    rows = ["| metric | before | after |", "| --- | --- | --- |"]
    for k in keys:
        b, a = before.get(k), after.get(k)
        rows.append(f"| {k} | {'-' if b is None else f'{b:.3f}'} | {'-' if a is None else f'{a:.3f}'} |")
    return "\n".join(rows)


def write_report(out_dir: Path, config: RunConfig, metrics: dict[str, Any], images: Sequence[Path] = ()) -> str:
    """Write ``report.md`` (with ``images``, files in ``out_dir``, shown inline) and return the before/after table."""
    table = before_after_table(metrics)
    if metrics.get("rounds"):  # alternating training: the metric after every round but the last ("after")
        from mmpt.tasks import main_metric

        key = main_metric(config.task, config.eval)
        table += "\n\n| round | " + key + " |\n| --- | --- |\n" + "\n".join(
            f"| {r['round']} | {r.get(key, float('nan')):.3f} |" for r in metrics["rounds"])
    pictures_md = "".join(f"![{p.stem}]({p.name})\n\n" for p in images)
    p, t = metrics["parameters"], metrics["train"]
    stages = ", ".join(f"`{s['name']}` ({'+'.join(s['methods'])}, {s['steps']} steps)" for s in metrics["stages"])
    text = f"""# mmpt run `{out_dir.name}`

- model: `{config.model.name}`; stages: {stages}
  (last stage: {p['trainable']:,} trainable parameters, {p['percent']:.4f}% of {p['total']:,})
- data: `{config.data.dataset}`, {t['samples']} training samples seen, evaluated on
  {metrics.get('after', metrics.get('before', {})).get('n', 0)} samples
- training: {t['steps']} steps in {t['seconds']} s ({t['samples_per_s']:.2f} samples/s), final loss {t['final_loss']:.4f}
- cost: {_cost_line(metrics.get('cost', {}))}

## Metrics (task `{config.task}`; best checkpoint: `{metrics.get('best', {}).get('tag', '')}`)

{table}

{pictures_md}
Files: `config.yaml` (resolved config), `metrics.json`, `<method>.safetensors` (method parameters only),
`best/` (weights of the best evaluation), `checkpoint/` (for `mmpt train --resume`), `log.csv`,
`tensorboard/`, `predictions_*.jsonl`, `curves.png`, `gallery.png`.
"""
    write_text(out_dir / "report.md", text)
    from mmpt.interop import model_card

    names = list(dict.fromkeys(m.name for stage in config.stage_list() for m in stage.methods))
    write_text(out_dir / "README.md", model_card(config, "+".join(names), metrics, out_dir))
    return table


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a markdown table (floats with 4 decimals, None as ``-``)."""
    if not rows:
        return "(no rows)"
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as a CSV file (header: every key, in order of first appearance)."""
    import csv

    with writing(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def _cost_line(cost: dict[str, Any]) -> str:
    if not cost:
        return "not recorded"
    parts = [f"wall time {cost['wall_seconds']} s"]
    if cost.get("seconds_per_100_samples") is not None:
        parts.append(f"{cost['seconds_per_100_samples']} s per 100 training samples")
    parts.append(f"peak memory {cost['peak_rss_mib']} MiB RSS")
    if "peak_gpu_mib" in cost:
        parts.append(f"{cost['peak_gpu_mib']} MiB allocated on the GPU")
    if "gpu_hours" in cost:
        parts.append(f"{cost['gpu_hours']} GPU-hours")
    return ", ".join(parts)


def collect_runs(run_dirs: list[Path], csv_path: Path | None = None) -> str:
    """A markdown table of the final metrics of several runs; rows are appended to ``csv_path`` if given
    (earlier rows are kept; the header grows when new metrics appear)."""
    import csv

    from mmpt.integrity import verified_checked

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for run_dir in run_dirs:
        if run_dir.is_dir() and any(os.path.lexists(run_dir / f) for f in ("config.yaml", "metrics.json")):
            refuse_links(run_dir)  # a run folder (anything else is skipped below, not walked)
        path = run_dir / "metrics.json"
        if not path.is_file():
            if not run_dir.is_dir():
                raise FileNotFoundError(f"{run_dir} does not exist")
            if not (run_dir / "config.yaml").is_file():
                skipped.append(f"{run_dir} (not a run folder)")
            elif (run_dir / "checkpoint").is_dir():
                skipped.append(f"{run_dir} (unfinished: resume it with `mmpt train --resume {run_dir}`)")
            else:
                skipped.append(f"{run_dir} (no metrics.json: the run failed or was stopped before its checkpoint)")
            continue
        m = verified_checked(path, METRICS, "metrics", f"re-run `mmpt eval` on {run_dir} or leave it out of the report")
        after = m.get("after", {})
        cfg = _run_config(run_dir)
        row: dict[str, Any] = {"run": run_dir.name, "task": cfg.get("task", ""),
                               "model": cfg["model"].get("name", "") if isinstance(cfg.get("model"), dict) else "",
                               "stages": "+".join(s["name"] for s in m.get("stages", [])),
                               "train_samples": m.get("train", {}).get("samples", "")}
        row["trainable"] = m.get("parameters", {}).get("trainable", "")
        cost = m.get("cost", {})
        row["wall_s"] = cost.get("wall_seconds", "")
        row["peak_rss_mib"] = cost.get("peak_rss_mib", "")
        overall = [k for k in after if "/" not in k or (k.startswith("mme/") and k.count("/") == 1)]  # not per kind
        row.update({k: round(after[k], 4) for k in overall if isinstance(after[k], float)})
        rows.append(row)
    if not rows:
        raise FileNotFoundError("no finished mmpt run among: " + "; ".join(skipped))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    if csv_path is not None:
        if csv_path.is_dir():
            raise ValueError(f"--csv {csv_path} is a folder; give a file name such as {csv_path / 'runs.csv'}")
        old: list[dict[str, str]] = []
        if csv_path.exists():  # keep every earlier row; widen the header when these runs bring new metrics
            with open(csv_path, newline="") as f:
                reader = csv.DictReader(f)
                keys = list(dict.fromkeys([*(reader.fieldnames or []), *keys]))
                old = list(reader)
        with writing(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows([*old, *rows])
    if skipped:
        lines += ["", "Left out: " + "; ".join(skipped)]
    return "\n".join(lines)


def _run_config(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.yaml`` as a mapping for the report's columns ({} when absent); one line when it is not
    YAML or not a mapping."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML ({str(exc).splitlines()[0]}); restore it or leave {run_dir} out of "
                         "the report") from None
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"{path}: a YAML {type(cfg).__name__}, not the config mmpt writes; restore it or leave "
                         f"{run_dir} out of the report")
    return cfg or {}


def _relative(path: Path, out: Path | None) -> str:
    import os

    return os.path.relpath(path, out.parent) if out is not None else str(path)


def sweep_section(folder: Path, out: Path | None = None) -> str:
    """A sweep's mean ± std table over seeds (also written as ``sweep.csv``), its plot (``sweep.png``) and the
    table of its runs."""
    from mmpt.sweep_summary import plot_sweep, summarize, swept_keys

    rows, metric = summarize(folder)
    write_rows(folder / "sweep.csv", rows)
    lines = [f"## Sweep `{folder.name}`: {metric}, mean ± std over seeds", "", markdown_table(rows)]
    if any(r["mean"] is not None for r in rows) and swept_keys(rows):  # seeds alone: nothing to plot against
        plot_sweep(rows, metric, folder / "sweep.png")
        lines += ["", f"![sweep]({_relative(folder / 'sweep.png', out)})"]
    finished = sorted(p.parent for p in folder.glob("*/metrics.json"))
    if finished:
        lines += ["", "Runs:", "", collect_runs(finished)]
    return "\n".join(lines)


def analysis_section(folder: Path, out: Path | None = None) -> str:
    """An analysis folder's markdown section, its images linked relative to the report."""
    import re

    refuse_links(folder)
    name = read_checked(folder / "analysis.json", ANALYSIS, f"run the analysis again (mmpt analyze) into {folder}")[
        "analysis"]
    text = inside(folder, f"{name}.md", folder / "analysis.json").read_text()
    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f"![{m[1]}]({_relative(folder / m[2], out)})", text)


def _analyses_inside(path: Path) -> list[Path]:
    """``path``, or for the ``analysis/`` folder that ``mmpt analyze`` fills (no run, sweep or analysis of its
    own), the analysis folders in it: ``mmpt report runs/*`` includes ``runs/analysis/rank``."""
    if not path.is_dir() or path.is_symlink() or any((path / f).exists() for f in ("config.yaml", "sweep.json",
                                                                                     "analysis.json")):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and (p / "analysis.json").is_file())
    return found or [path]


def full_report(paths: Sequence[Path], csv_path: Path | None = None, out: Path | None = None) -> str:
    """One markdown report of run folders (a metrics table), sweep folders and analysis folders. With ``out``
    it is also written there (a fresh file: an existing report is never overwritten)."""
    from mmpt.paths import fresh_file

    paths = [q for p in paths for q in _analyses_inside(p)]
    runs = [p for p in paths if not (p / "sweep.json").is_file() and not (p / "analysis.json").is_file()]
    parts = ["# mmpt report"]
    if runs:
        parts.append("## Runs\n\n" + collect_runs(runs, csv_path))
    parts += [sweep_section(p, out) for p in paths if (p / "sweep.json").is_file()]
    parts += [analysis_section(p, out) for p in paths if (p / "analysis.json").is_file()]
    text = "\n\n".join(parts) + "\n"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        target = fresh_file(out)
        write_text(target, text)
        text += f"\n(written to {target})\n"
    return text
