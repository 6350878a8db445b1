"""Merge the study's analysis folders (runs/repro/analysis/<analysis>-seed=<s>/) into CSVs under
results/reproduction/: ``claim1_rank.csv`` and ``claim3_fgsm.csv``, each row with its arm and seed."""

from __future__ import annotations

import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent


def merged(analysis: str) -> list[dict[str, str]]:
    rows = []
    for folder in sorted((ROOT / "runs" / "repro" / "analysis").glob(f"{analysis}-seed=*")):
        seed = folder.name.rpartition("=")[2]
        with (folder / f"{analysis}.csv").open() as f:
            for row in csv.DictReader(f):
                arm = row["subject"].rpartition("-seed=")[0] or row["subject"]
                rows.append({"arm": arm, "seed": seed, **{k: v for k, v in row.items() if k != "subject"}})
    return rows


def main() -> int:
    for analysis, name in (("rank", "claim1_rank.csv"), ("fgsm", "claim3_fgsm.csv")):
        rows = merged(analysis)
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
