"""The markdown report of a run and its before/after table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmpt.runconfig import RunConfig


def before_after_table(metrics: dict[str, Any]) -> str:
    """Markdown table of every metric before and after training."""
    before, after = metrics.get("before", {}), metrics.get("after", {})
    keys = [k for k in sorted(set(before) | set(after)) if k != "n" and isinstance(after.get(k, before.get(k)), float)]
    rows = ["| metric | before | after |", "| --- | --- | --- |"]
    for k in keys:
        b, a = before.get(k), after.get(k)
        rows.append(f"| {k} | {'-' if b is None else f'{b:.3f}'} | {'-' if a is None else f'{a:.3f}'} |")
    return "\n".join(rows)


def write_report(out_dir: Path, config: RunConfig, metrics: dict[str, Any]) -> str:
    """Write ``report.md`` and return the before/after table."""
    table = before_after_table(metrics)
    p, t = metrics["parameters"], metrics["train"]
    stages = ", ".join(f"`{s['name']}` ({'+'.join(s['methods'])}, {s['steps']} steps)" for s in metrics["stages"])
    text = f"""# mmpt run `{out_dir.name}`

- model: `{config.model.name}`; stages: {stages}
  (last stage: {p['trainable']:,} trainable parameters, {p['percent']:.4f}% of {p['total']:,})
- data: `{config.data.dataset}`, {t['samples']} training samples seen, evaluated on
  {metrics.get('after', metrics.get('before', {})).get('n', 0)} samples
- training: {t['steps']} steps in {t['seconds']} s ({t['samples_per_s']:.2f} samples/s), final loss {t['final_loss']:.4f}

## Metrics (task `{config.task}`; best checkpoint: `{metrics.get('best', {}).get('tag', '')}`)

{table}

Files: `config.yaml` (resolved config), `metrics.json`, `<method>.safetensors` (method parameters only),
`best/` (weights of the best evaluation), `checkpoint/` (for `mmpt train --resume`), `log.csv`,
`tensorboard/`, `predictions_*.jsonl`.
"""
    (out_dir / "report.md").write_text(text)
    return table


def collect_runs(run_dirs: list[Path], csv_path: Path | None = None) -> str:
    """A markdown table of the final metrics of several runs; rows are appended to ``csv_path`` if given
    (earlier rows are kept; the header grows when new metrics appear)."""
    import csv

    import yaml

    from mmpt.integrity import verified_json

    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        path = run_dir / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} is not a finished mmpt run")
        m = verified_json(path, f"re-run `mmpt eval` on {run_dir} or leave it out of the report")
        if not isinstance(m, dict):
            raise ValueError(f"{path}: not the metrics mmpt writes (a JSON object); leave {run_dir} out of the report")
        after = m.get("after", {})
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
        row: dict[str, Any] = {"run": run_dir.name, "task": cfg.get("task", ""),
                               "model": (cfg.get("model") or {}).get("name", ""),
                               "stages": "+".join(s["name"] for s in m.get("stages", [])),
                               "train_samples": m.get("train", {}).get("samples", "")}
        row["trainable"] = m.get("parameters", {}).get("trainable", "")
        overall = [k for k in after if "/" not in k or (k.startswith("mme/") and k.count("/") == 1)]  # not per kind
        row.update({k: round(after[k], 4) for k in overall if isinstance(after[k], float)})
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    if csv_path is not None:
        old: list[dict[str, str]] = []
        if csv_path.exists():  # keep every earlier row; widen the header when these runs bring new metrics
            with open(csv_path, newline="") as f:
                reader = csv.DictReader(f)
                keys = list(dict.fromkeys([*(reader.fieldnames or []), *keys]))
                old = list(reader)
        tmp = csv_path.with_name(csv_path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows([*old, *rows])
        tmp.replace(csv_path)
    return "\n".join(lines)
