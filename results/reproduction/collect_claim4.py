"""Claim 4 of the reproduction study: collect the runs of ``run_claim_4.sh`` (prefix length, MLP
reparameterization, shallow prompt) into ``claim4_runs.csv`` and ``claim4_summary.csv`` (mean and std over seeds
per setting)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import ROOT, rows, summary, write  # noqa: E402

OUT = Path(__file__).resolve().parent


def main() -> int:
    table = rows(ROOT / "runs" / "repro", prefix="claim4_", skip=())
    if not table:
        print("no finished claim-4 runs under runs/repro yet", file=sys.stderr)
        return 1
    write(OUT / "claim4_runs.csv", table)
    write(OUT / "claim4_summary.csv", summary(table))
    print(f"{len(table)} runs -> {OUT / 'claim4_runs.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
