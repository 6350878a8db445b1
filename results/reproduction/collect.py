"""Collect the reproduction study's runs into CSVs under results/reproduction/ (re-run at any time).

Reads every finished run of the study's sweeps (``runs/repro/sweep-*``) through mmpt's checked readers and writes
``runs.csv`` (one row per run) and ``summary.csv`` (mean and sample std over seeds per arm).
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from mmpt.readback import METRICS, read_checked

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
KEYS = ("accuracy", "accuracy/color", "accuracy/shape", "accuracy/yes_no")
# the arms of other claims and of the second model (each has its own collect call)
OTHER_CLAIMS = ("transfer_", "heldout_", "claim4_", "claim5_", "g3_")


def rows(runs_dir: Path, prefix: str = "", skip: tuple[str, ...] = OTHER_CLAIMS) -> list[dict[str, object]]:
    """One row per finished run whose arm starts with ``prefix`` (and not with ``skip``): arm, seed, the accuracies
    after training (and before, where the run measured it), steps, seconds, trainable parameters."""
    out = []
    for metrics_file in sorted(runs_dir.glob(f"sweep-{prefix}*/*/metrics.json")):
        run = metrics_file.parent
        arm, _, seed = run.name.rpartition("-seed=")
        if skip and arm.startswith(skip):  # other claims' runs (their own collect scripts)
            continue
        metrics = read_checked(metrics_file, METRICS, "re-run the study's run_*.sh script")
        after = metrics["after"]
        before = {f"before_{k}": round(metrics["before"][k], 4) for k in KEYS if k in metrics.get("before", {})}
        out.append({"arm": arm, "seed": int(seed), **{k: round(after[k], 4) for k in KEYS if k in after}, **before,
                    "n_eval": after["n"], "steps": metrics["train"]["steps"],
                    "train_seconds": metrics["train"]["seconds"],
                    "trainable": metrics["parameters"]["trainable"], "run": str(run.relative_to(ROOT))})
    return out


def summary(table: list[dict[str, object]]) -> list[dict[str, object]]:
    """Mean and sample standard deviation of every accuracy over the seeds of each arm."""
    arms: dict[str, list[dict[str, object]]] = {}
    for row in table:
        arms.setdefault(str(row["arm"]), []).append(row)
    out = []
    for arm, group in arms.items():
        line: dict[str, object] = {"arm": arm, "seeds": len(group)}
        for key in KEYS:
            values = [float(r[key]) for r in group if key in r]  # type: ignore[arg-type]
            line[f"{key}_mean"] = round(statistics.fmean(values), 4)
            line[f"{key}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else ""
        out.append(line)
    return out


def write(path: Path, table: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in table for k in r)))
        writer.writeheader()
        writer.writerows(table)


def collect(name: str, prefix: str = "", skip: tuple[str, ...] = OTHER_CLAIMS) -> int:
    """Write ``<name>_runs.csv`` and ``<name>_summary.csv`` from the finished runs whose arm starts with ``prefix``."""
    table = rows(ROOT / "runs" / "repro", prefix, skip)
    if not table:
        print(f"no finished {prefix or 'claims 1-3 '}runs under runs/repro yet", file=sys.stderr)
        return 1
    write(OUT / f"{name}_runs.csv", table)
    write(OUT / f"{name}_summary.csv", summary(table))
    print(f"{len(table)} runs -> {OUT / f'{name}_runs.csv'}")
    return 0


def main(argv: list[str]) -> int:
    """``collect.py`` (claims 1-3), ``collect.py claim5`` or ``collect.py g3`` (one CSV pair per group of arms)."""
    if not argv:
        return collect("claims_1_3")
    # group: (CSV name, arm prefix, arms to skip); g3's held-out runs belong to claim 6 (collect_transfer.py g3)
    groups = {"claim5": ("claim5", "claim5_", ()), "g3": ("gemma3_claims_1_2", "g3_", ("g3_heldout_",))}
    if argv[0] not in groups:
        print(f"usage: collect.py [{' | '.join(groups)}]", file=sys.stderr)
        return 2
    name, prefix, skip = groups[argv[0]]
    return collect(name, prefix=prefix, skip=skip)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
