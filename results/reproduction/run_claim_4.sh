#!/usr/bin/env bash
# Claim 4 of the reproduction study: prefix length 1/4/64 (16 is claims 1-3's `prefix` arm, the same settings),
# MLP reparameterization at length 16, and shallow prompts (16 input embeddings) vs deep prefixes, each on seeds
# 0,1,2 in the claims-1-3 setting. Resumable (mmpt sweep); ~2 min per run on 2 CPU cores, 15 runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
MMPT=${MMPT:-.venv/bin/mmpt}
C=results/reproduction/configs
"$MMPT" sweep "$C/claim4_prefix.yaml" method.length=1,4,64 seed=0,1,2 --no-progress
"$MMPT" sweep "$C/claim4_prefix.yaml" name=claim4_prefix_mlp method.reparam=mlp seed=0,1,2 --no-progress
"$MMPT" sweep "$C/claim4_prompt.yaml" seed=0,1,2 --no-progress
.venv/bin/python results/reproduction/collect_claim4.py
