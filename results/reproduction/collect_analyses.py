"""Merge the study's analysis folders (runs/repro/analysis/<analysis>-seed=<s>/) into CSVs under
results/reproduction/: ``claim1_rank.csv`` and ``claim3_fgsm.csv``, each row with its arm and seed; the second
model's (runs/repro/analysis-gemma3/, run_gemma3.sh) into ``gemma3_claim1_rank.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent


def merged(analysis: str, where: str = "analysis") -> list[dict[str, str]]:
    """The rows of every ``<where>/<analysis>-seed=<s>/<analysis>.csv``, each with its arm and seed."""
    rows = []
    for folder in sorted((ROOT / "runs" / "repro" / where).glob(f"{analysis}-seed=*")):
        seed = folder.name.rpartition("=")[2]
        with (folder / f"{analysis}.csv").open() as f:
            for row in csv.DictReader(f):
                arm = row["subject"].rpartition("-seed=")[0] or row["subject"]
                rows.append({"arm": arm, "seed": seed, **{k: v for k, v in row.items() if k != "subject"}})
    return rows


def main() -> int:
    for where, analysis, name in (("analysis", "rank", "claim1_rank.csv"), ("analysis", "fgsm", "claim3_fgsm.csv"),
                                  ("analysis-gemma3", "rank", "gemma3_claim1_rank.csv")):
        rows = merged(analysis, where)
        if not rows:
            continue
        with (OUT / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
        print(f"{len(rows)} rows -> {OUT / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
