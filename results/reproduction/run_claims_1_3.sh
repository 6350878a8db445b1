#!/usr/bin/env bash
# Claims 1-3 of the reproduction study: 9 arms x 3 seeds on mmpt-tiny (results/reproduction/README.md).
# Resumable: re-running reuses finished runs and resumes interrupted ones (mmpt sweep). ~2.6 min per one-stage
# run and ~4.5 min per two-stage run on 2 CPU cores; ~100 minutes in all.
set -euo pipefail
cd "$(dirname "$0")/../.."
MMPT=${MMPT:-.venv/bin/mmpt}
for arm in ${ARMS:-prefix lora ptpeft_lora full ptpeft_full parallel_lora reversed_lora lora_4ep adapter}; do
  "$MMPT" sweep "results/reproduction/configs/$arm.yaml" seed=0,1,2 --no-progress
  .venv/bin/python results/reproduction/collect.py
done
