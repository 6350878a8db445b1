#!/usr/bin/env bash
# Claims 1 and 3 of the reproduction study: effective rank (PT-PEFT's text features) and FGSM, per seed, on the
# runs of run_claims_1_3.sh that exist. Writes runs/repro/analysis/<analysis>-seed=<s>/ (never overwritten: a
# taken folder gets -2) and then merges the CSVs into results/reproduction/ (collect_analyses.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
MMPT=${MMPT:-.venv/bin/mmpt}
for s in ${SEEDS:-0 1 2}; do
  runs=()
  for arm in ${RANK_ARMS:-prefix lora adapter full ptpeft_lora ptpeft_full}; do
    run="runs/repro/sweep-$arm-seed/$arm-seed=$s"
    [ -f "$run/metrics.json" ] && runs+=("$run")
  done
  [ ${#runs[@]} -gt 0 ] || continue
  [ -d "runs/repro/analysis/rank-seed=$s" ] || "$MMPT" analyze rank "${runs[@]}" --samples 64 --text-features paper \
    --out "runs/repro/analysis/rank-seed=$s" --no-progress > /dev/null
  fgsm=()
  for arm in ${FGSM_ARMS:-prefix lora full}; do
    run="runs/repro/sweep-$arm-seed/$arm-seed=$s"
    [ -f "$run/metrics.json" ] && fgsm+=("$run")
  done
  [ ${#fgsm[@]} -eq 0 ] || [ -d "runs/repro/analysis/fgsm-seed=$s" ] || "$MMPT" analyze fgsm "${fgsm[@]}" --samples 64 --eps 0,0.01,0.03 \
    --no-base --out "runs/repro/analysis/fgsm-seed=$s" --no-progress > /dev/null
done
.venv/bin/python results/reproduction/collect_analyses.py
