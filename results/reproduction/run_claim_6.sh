#!/usr/bin/env bash
# Claim 6 of the reproduction study (transfer to a held-out question type): prefix, LoRA and full fine-tuning
# trained on color and shape questions, evaluated before and after on every type (yes/no held out) by ranking all
# 13 easy-VQA answers by likelihood, seeds 0,1,2.
# Resumable (mmpt sweep); ~3 min per run on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
MMPT=${MMPT:-.venv/bin/mmpt}
for arm in ${ARMS:-prefix lora full}; do
  "$MMPT" sweep "results/reproduction/configs/heldout_$arm.yaml" seed=0,1,2 --no-progress
done
.venv/bin/python results/reproduction/collect_transfer.py
