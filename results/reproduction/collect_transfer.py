"""Claim 6 of the reproduction study: collect the transfer runs (``run_claim_6.sh``) into
``claim6_transfer_runs.csv`` (one row per run: accuracy per question type before and after tuning on color and
shape questions) and ``claim6_transfer_summary.csv`` (per arm, mean ± std over seeds of the change on the held-out
yes/no questions and on the trained types), and draw ``claim6_transfer.png``. ``collect_transfer.py g3`` does the
same for the second model's runs (``run_gemma3.sh``: arms ``g3_heldout_*``) into ``gemma3_claim6_transfer_*``."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import ROOT, rows, write  # noqa: E402

OUT = Path(__file__).resolve().parent
HELD_OUT, TRAINED = "accuracy/yes_no", ("accuracy/color", "accuracy/shape")


def change(row: dict[str, object], key: str) -> float:
    return float(row[key]) - float(row[f"before_{key}"])  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    second = argv[:1] == ["g3"]
    prefix, stem, model = ("g3_heldout_", "gemma3_claim6", "mmpt-tiny-gemma3") if second else \
        ("heldout_", "claim6", "mmpt-tiny")
    table = rows(ROOT / "runs" / "repro", prefix=prefix, skip=())
    if not table:
        print("no finished transfer runs under runs/repro yet", file=sys.stderr)
        return 1
    for row in table:
        row["arm"] = str(row["arm"]).removeprefix(prefix)
        row["held_out_change"] = round(change(row, HELD_OUT), 4)
        row["trained_change"] = round(statistics.fmean(change(row, k) for k in TRAINED), 4)
    write(OUT / f"{stem}_transfer_runs.csv", table)
    summary = []
    found = dict.fromkeys(str(r["arm"]) for r in table)
    for arm in [a for a in ("prefix", "lora", "full") if a in found] + [a for a in found if a not in ("prefix", "lora", "full")]:
        group = [r for r in table if r["arm"] == arm]
        line: dict[str, object] = {"arm": arm, "seeds": len(group)}
        for key in ("held_out_change", "trained_change", f"before_{HELD_OUT}", HELD_OUT):
            values = [float(r[key]) for r in group]  # type: ignore[arg-type]
            line[f"{key}_mean"] = round(statistics.fmean(values), 4)
            line[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else ""
        summary.append(line)
    write(OUT / f"{stem}_transfer_summary.csv", summary)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    arms = [str(s["arm"]) for s in summary]
    for offset, key, label in ((-0.2, "trained_change", "trained types (color, shape)"),
                               (0.2, "held_out_change", "held-out type (yes/no)")):
        ax.bar([i + offset for i in range(len(arms))], [float(s[f"{key}_mean"]) for s in summary], 0.4,
               yerr=[float(s[f"{key}_std"] or 0) for s in summary], label=label, capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("accuracy change vs base")
    ax.set_title(f"Claim 6 ({model}): tuned on color + shape (yes/no held out)\nmean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / f"{stem}_transfer.png", dpi=120)
    print(f"{len(table)} runs -> {OUT / f'{stem}_transfer_runs.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
