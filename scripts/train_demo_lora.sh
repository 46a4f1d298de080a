#!/usr/bin/env bash
# Teach the tiny demo model (weights/tiny-demo) a motion it never saw, diagonal movement, with a LoRA
# (docs/training.md, "LoRA"), and write weights/tiny-demo-lora-diagonal.
#
#   scripts/train_demo_lora.sh        # needs peft (scripts/setup_venv.sh test installs it); rerun to resume
#
# 1. runs/tiny-demo-lora: i2vgen train with scripts/train_demo_lora.json: a rank-8 adapter on the UNet's
#    attention projections and feed-forwards; clips of all eight motions ("a red circle moving up-left", ...,
#    and the four the model knows, so it keeps them); 60% of each batch at t >= 880, where the caption
#    decides the motion. Only the adapter (92 k parameters) trains; the UNet stays frozen.
# 2. weights/tiny-demo-lora-diagonal: its EMA weights (pytorch_lora_weights.safetensors), then the evaluation:
#    diagonals with the LoRA, the four original directions with the LoRA, and the bit-identity checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=runs/tiny-demo-lora
OUT=weights/tiny-demo-lora-diagonal

"$PY" -m i2vgen.training.train --config scripts/train_demo_lora.json
mkdir -p $OUT
cp $RUN/lora/pytorch_lora_weights.safetensors $OUT/
"$PY" scripts/eval_demo.py --lora $OUT --directions diagonal --check-unload --json $RUN/eval_diagonal.json \
  --grid docs/lora_diagonal_grid.gif --training-log $RUN/log.jsonl --curve docs/lora_training_curve.png
"$PY" scripts/eval_demo.py --lora $OUT --directions axis --goal 0.95 --json $RUN/eval_axis.json
