#!/usr/bin/env bash
# Train the tiny demo model from scratch on the CPU and write weights/tiny-demo (docs/training.md).
#
#   scripts/train_demo.sh            # about an hour on 2 shared CPU cores; rerun to resume after a stop
#
# Stages (each resumes or is skipped when its result exists, so an interrupted run picks up where it stopped):
#   1. runs/tiny-demo/base: tokenizer, CLIP encoders (random, the text tower given a 1-second probe
#                           pretraining), a VAE trained on single frames, a random UNet          (~10 min)
#   2. runs/tiny-demo/unet: the UNet trained on synthetic motion clips, 2500 steps               (~30-40 min)
#   3. weights/tiny-demo:   the EMA weights as a complete pipeline, then issue 5's evaluation     (~5 min)
# Everything is seeded (seed 0); the same machine and thread count give the same weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if [ ! -f runs/tiny-demo/base/model_index.json ]; then
  "$PY" -m i2vgen.training.demo base --out runs/tiny-demo/base --vae-steps 1000 --seed 0
fi
"$PY" -m i2vgen.training.train --config scripts/train_demo_config.json
"$PY" -m i2vgen.training.demo export --run runs/tiny-demo/unet --out weights/tiny-demo
"$PY" scripts/eval_demo.py --model weights/tiny-demo --json runs/tiny-demo/eval.json --grid docs/demo_grid.gif \
  --training-log runs/tiny-demo/unet/log.jsonl --curve docs/training_curve.png
