#!/usr/bin/env bash
# Claims 1, 2 and 6 of the reproduction study repeated on the second model, mmpt-tiny-gemma3 (EfficientNet-Lite0 +
# its pretrained projector + Gemma-3-270M base; `make install-gemma3`). The same configs and seeds as on mmpt-tiny,
# with model.name overridden; arms are named g3_<arm>. Resumable (mmpt sweep).
# ARMS: claims 1-2 arms (configs/<arm>.yaml); HELDOUT_ARMS: claim 6 arms (configs/heldout_<arm>.yaml).
set -euo pipefail
cd "$(dirname "$0")/../.."
MMPT=${MMPT:-.venv/bin/mmpt}
C=results/reproduction/configs
G3="model.name=mmpt-tiny-gemma3"
for arm in ${ARMS-prefix lora ptpeft_lora full}; do
  "$MMPT" sweep "$C/$arm.yaml" "$G3" "name=g3_$arm" seed=0,1,2 --no-progress
done
.venv/bin/python results/reproduction/collect.py g3 || true
for s in ${SEEDS:-0 1 2}; do   # claim 1: effective rank of each seed's runs against the base model
  runs=()
  for arm in ${ARMS-prefix lora ptpeft_lora full}; do
    run="runs/repro/sweep-g3_$arm-seed/g3_$arm-seed=$s"
    [ -f "$run/metrics.json" ] && runs+=("$run")
  done
  [ ${#runs[@]} -gt 0 ] || continue
  [ -d "runs/repro/analysis-gemma3/rank-seed=$s" ] || "$MMPT" analyze rank "${runs[@]}" --samples 64 \
    --text-features paper --out "runs/repro/analysis-gemma3/rank-seed=$s" --no-progress > /dev/null
done
.venv/bin/python results/reproduction/collect_analyses.py
for arm in ${HELDOUT_ARMS-prefix lora full}; do
  "$MMPT" sweep "$C/heldout_$arm.yaml" "$G3" "name=g3_heldout_$arm" seed=0,1,2 --no-progress
done
.venv/bin/python results/reproduction/collect_transfer.py g3 || true
