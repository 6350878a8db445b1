"""Claim 4 of the reproduction study: collect the runs of ``run_claim_4.sh`` (prefix length, MLP
reparameterization, shallow prompt) into ``claim4_runs.csv`` and ``claim4_summary.csv`` (mean and std over seeds
per setting)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import collect  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(collect("claim4", prefix="claim4_", skip=()))
