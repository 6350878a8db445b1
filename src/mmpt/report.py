"""The markdown report of a run and its before/after table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmpt.runconfig import RunConfig


def before_after_table(metrics: dict[str, Any]) -> str:
    """Markdown table of every accuracy metric before and after training."""
    before, after = metrics.get("before", {}), metrics.get("after", {})
    keys = [k for k in sorted(set(before) | set(after)) if k.startswith("accuracy")]
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

## Accuracy (exact match after normalization)

{table}

Files: `config.yaml` (resolved config), `metrics.json`, `<method>.safetensors` (method parameters only),
`log.csv`, `predictions_*.jsonl`.
"""
    (out_dir / "report.md").write_text(text)
    return table
