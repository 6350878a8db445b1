#!/usr/bin/env bash
# Claim 5 of the reproduction study (where prompts go), seeds 0,1,2 in the claims-1-3 setting:
# - vision tower vs language model: M2PT's visual prompts only, textual prompts only, both (claim5_m2pt.yaml,
#   interaction layer frozen);
# - early vs late layers: a 16-token prefix in the LM's first 15 layers vs its last 15 (of 30); all 30 layers is
#   claims 1-3's `prefix` arm (the same settings).
# Resumable (mmpt sweep); ~2 min per run on 2 CPU cores, 15 runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
MMPT=${MMPT:-.venv/bin/mmpt}
C=results/reproduction/configs
"$MMPT" sweep "$C/claim5_m2pt.yaml" name=claim5_visual method.visual_length=10 method.text_length=0 seed=0,1,2 --no-progress
"$MMPT" sweep "$C/claim5_m2pt.yaml" name=claim5_text method.visual_length=0 method.text_length=10 seed=0,1,2 --no-progress
"$MMPT" sweep "$C/claim5_m2pt.yaml" name=claim5_both seed=0,1,2 --no-progress
"$MMPT" sweep "$C/claim4_prefix.yaml" name=claim5_prefix_early "method.layers=[$(seq -s, 0 14)]" seed=0,1,2 --no-progress
"$MMPT" sweep "$C/claim4_prefix.yaml" name=claim5_prefix_late "method.layers=[$(seq -s, 15 29)]" seed=0,1,2 --no-progress
.venv/bin/python results/reproduction/collect.py claim5
