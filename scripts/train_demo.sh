#!/usr/bin/env bash
# Train the tiny demo model from scratch on the CPU and write weights/tiny-demo (docs/training.md).
#
#   scripts/train_demo.sh            # 37 minutes on 2 CPU cores (one thread); rerun to resume after a stop
#
# Stages (each resumes or is skipped when its result exists, so an interrupted run picks up where it stopped):
#   0. runs/tiny-demo/base:   tokenizer, CLIP encoders (random, the text tower given a 1-second probe
#                             pretraining), a VAE trained on single frames, a random UNet               (~8 min)
#   1. runs/tiny-demo/stage1: the UNet learns to denoise motion clips; half of each batch at t >= 900.
#                             The first 2000 steps of a 6000-step cosine schedule                   (~2 + 16 min)
#   2. runs/tiny-demo/stage2: 750 steps with 90% of each batch at t >= 880, where the caption has to pick
#                             the direction: the UNet starts reading it                                  (~6 min)
#   3. runs/tiny-demo/stage3: 500 steps at half the learning rate, half the batch at t >= 880, which
#                             sharpens the first frame again                                             (~4 min)
#   4. weights/tiny-demo:     the stage-3 EMA weights as a complete pipeline, then issue 5's evaluation   (~2 min)
# Everything is seeded (seed 0); the same machine and thread count give the same weights.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUNS=runs/tiny-demo

if [ ! -f $RUNS/base/model_index.json ]; then
  "$PY" -m i2vgen.training.demo base --out $RUNS/base --vae-steps 1000 --seed 0
fi

# Stage 1 stops at step 2000 of its 6000-step schedule (--until); its EMA weights start stage 2.
if [ ! -f $RUNS/stage1/pipeline-002000/model_index.json ]; then
  "$PY" -m i2vgen.training.train --config scripts/train_demo_stage1.json --until 2000
  "$PY" -m i2vgen.training.demo export --run $RUNS/stage1 --out $RUNS/stage1/pipeline-002000 \
    --checkpoint $RUNS/stage1/checkpoint-002000
fi
# Stages 2 and 3 train on the same pre-encoded clips (same seed, same frozen encoders): copy, not re-encode.
for stage in 2 3; do
  mkdir -p $RUNS/stage$stage
  [ -f $RUNS/stage$stage/clip_pool.pt ] || cp $RUNS/stage1/clip_pool.pt $RUNS/stage$stage/clip_pool.pt
  "$PY" -m i2vgen.training.train --config scripts/train_demo_stage$stage.json
done

"$PY" -m i2vgen.training.demo export --run $RUNS/stage3 --out weights/tiny-demo
"$PY" scripts/eval_demo.py --model weights/tiny-demo --json $RUNS/eval.json --grid docs/demo_grid.gif \
  --training-log $RUNS/stage1/log.jsonl --training-log $RUNS/stage2/log.jsonl \
  --training-log $RUNS/stage3/log.jsonl --curve docs/training_curve.png
