"""Pictures of a run: the loss and learning-rate curves, and a before/after gallery of evaluation images.

Every run folder gets ``curves.png`` (from ``log.csv``) and, when it was evaluated before and after training,
``gallery.png``: the first ``n`` evaluation images with the prompt, the reference and the prediction before and
after tuning (referring expressions: the reference box in green, the predicted box in red, as drawn on the image).
Plots are written with matplotlib's non-interactive ``Agg`` backend (no display needed).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmpt.data import Sample
from mmpt.data.images import load_rgb
from mmpt.data.sample import text_to_box
from mmpt.readback import read_log_csv
from mmpt.runfolder import save_figure


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


FRACTIONS = {"accuracy", "vqa_accuracy", "acc", "acc_plus", "acc@0.5", "miou", "unparsed", "bleu1", "bleu2", "bleu3",
             "bleu4", "meteor", "rouge_l", "spice"}
"""Metrics that are fractions in [0, 1] (the last part of a per-kind name such as ``accuracy/color``)."""


def is_fraction(metric: str) -> bool:
    """Whether ``metric`` (``accuracy``, ``mme/acc``, ``accuracy/color``...) lies in [0, 1]."""
    return bool({metric, *metric.split("/")} & FRACTIONS)


def fraction_axis(ax: Any, metric: str, axis: str = "y") -> None:
    """Keep the ``axis`` of a fraction metric within [0, 1] (a run at 0.0 drew an axis from -0.05)."""
    if not is_fraction(metric):
        return
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    bounds = (max(low, 0.0), min(high, 1.0))
    if bounds[1] - bounds[0] <= (high - low) / 2 + 1e-12:  # mostly outside [0, 1]: values flat at 0 or 1
        bounds = (0.0, 1.0)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(*bounds)


def integer_ticks(ax: Any, values: Sequence[float], axis: str = "x") -> None:
    """Ticks at the values themselves when they are whole numbers (a sweep over lengths 4 and 8 showed 4.5)."""
    if values and all(float(v).is_integer() for v in values):
        ticks = sorted({float(v) for v in values})
        (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, [f"{int(t)}" for t in ticks])


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of ``log.csv`` with a global ``x`` (optimizer steps counted across stages) added."""
    rows: list[dict[str, Any]] = []
    offset, last_stage, last_step = 0, None, 0
    for row in read_log_csv(path)[1]:
        step = int(row["step"])
        if last_stage is not None and (row["stage"] != last_stage or step < last_step):
            offset += last_step  # a new stage (or round) starts counting again
        last_stage, last_step = row["stage"], step
        rows.append({"stage": row["stage"], "x": offset + step, "loss": float(row["loss"]), "lr": float(row["lr"])})
    return rows


def plot_curves(log_csv: Path, out_png: Path) -> Path | None:
    """Loss (smoothed, as logged) and learning rate against optimizer steps, one colour per stage; None when
    the log has no rows."""
    if not log_csv.is_file():
        return None
    rows = read_log(log_csv)
    if not rows:
        return None
    plt = _pyplot()
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=(2, 1))
    short = len(rows) <= 10  # a short run (smoke, few logged steps): points that can be seen, one per row
    marker, size = ("o", 5) if short else (".", 4)
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        xs = [r["x"] for r in mine]
        ax_loss.plot(xs, [r["loss"] if math.isfinite(r["loss"]) else np.nan for r in mine], marker=marker,
                     markersize=size, label=stage)
        ax_lr.plot(xs, [r["lr"] for r in mine], marker=marker, markersize=size, label=stage)
    ax_loss.set_ylabel("training loss (smoothed)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(title="stage", fontsize=8)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.xaxis.get_major_locator().set_params(integer=True)
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if short:
        integer_ticks(ax_lr, [r["x"] for r in rows])
        note = f"{len(rows)} logged step(s): train.log_every sets how often"
        ax_loss.text(0.99, 0.97, note, transform=ax_loss.transAxes, ha="right", va="top", fontsize=7, alpha=0.7)
    fig.suptitle(f"{log_csv.parent.name}: training curves")
    fig.tight_layout()
    save_figure(fig, out_png, dpi=110)
    plt.close(fig)
    return out_png


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``predictions_<tag>.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _image(sample: Sample) -> np.ndarray:
    return sample.image if isinstance(sample.image, np.ndarray) else np.asarray(load_rgb(sample.image))


def _draw_box(ax: Any, box: Sequence[float] | None, color: str, label: str) -> None:
    if box is None:
        return
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2, label=label))


def plot_gallery(
    samples: Sequence[Sample],
    after: Sequence[dict[str, Any]],
    out_png: Path,
    before: Sequence[dict[str, Any]] | None = None,
    n: int = 8,
    title: str = "",
) -> Path | None:
    """The first ``n`` samples with prompt, reference and predictions (before -> after); boxes drawn when the
    samples have one. Prediction rows must follow ``samples``' order (as ``predictions_*.jsonl`` do)."""
    count = min(n, len(samples), len(after))
    if count == 0:
        return None
    if before is not None and len(before) < count:
        before = None
    plt = _pyplot()
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 4.3 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:count]):
        sample, row = samples[i], after[i]
        if str(row.get("id", sample.id)) != str(sample.id):
            raise ValueError(f"prediction row {i} is for sample {row.get('id')!r}, not {sample.id!r}")
        image = _image(sample)
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        size = sample.image_size or (image.shape[1], image.shape[0])
        if sample.box is not None:  # boxes are in pixels of the original image; show them on this one
            sx, sy = image.shape[1] / size[0], image.shape[0] / size[1]
            scale = (sx, sy, sx, sy)
            _draw_box(ax, [c * s for c, s in zip(sample.box, scale, strict=True)], "lime", "reference")
            guess = text_to_box(str(row["prediction"]), size)
            _draw_box(ax, None if guess is None else [c * s for c, s in zip(guess, scale, strict=True)], "red",
                      "prediction")
        now = str(row["prediction"]) or "(empty)"
        said = now if before is None else f"{str(before[i]['prediction']) or '(empty)'} -> {now}"
        ok = str(row["prediction"]).strip().lower() in {r.strip().lower() for r in sample.references}
        text = "\n".join(textwrap.shorten(t, 90) for t in (f"Q: {sample.prompt}", f"ref: {sample.target}",
                                                             f"pred: {said}"))
        ax.set_title("\n".join(textwrap.fill(line, 38) for line in text.split("\n")), fontsize=7, loc="left",
                     color="darkgreen" if ok else "black")
    fig.suptitle(title or "evaluation samples: prediction before -> after tuning", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    save_figure(fig, out_png, dpi=100)
    plt.close(fig)
    return out_png


def _newest(folder: Path, stem: str) -> Path | None:
    """``stem.jsonl`` or, after a resume, its newest ``stem-<k>.jsonl``."""
    found = [p for p in folder.glob(f"{stem}*.jsonl") if p.stem == stem or p.stem[len(stem):].lstrip("-").isdigit()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def write_run_pictures(out_dir: Path, samples: Sequence[Sample], n: int = 8) -> list[Path]:
    """``curves.png`` and ``gallery.png`` for a finished run folder; returns the files written."""
    written = [plot_curves(out_dir / "log.csv", out_dir / "curves.png")]
    after_file, before_file = _newest(out_dir, "predictions_after"), _newest(out_dir, "predictions_before")
    if samples and after_file is not None:
        before = read_predictions(before_file) if before_file is not None else None
        written.append(plot_gallery(samples, read_predictions(after_file), out_dir / "gallery.png", before, n,
                                    f"{out_dir.name}: prediction before -> after tuning (green: correct)"))
    return [p for p in written if p is not None]
