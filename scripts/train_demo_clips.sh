#!/usr/bin/env bash
# Fine-tune the tiny demo model (weights/tiny-demo) on a folder of mp4 files (docs/training.md, "Fine-tune on
# your own clips"): a motion it never saw (growing, shrinking) and its four old directions, recorded at 8, 12,
# 16 and 24 fps; then measure it on held-out first frames.
#
#   scripts/train_demo_clips.sh        # needs pip install '.[video,lora]'; rerun to resume
#
# 1. runs/demo-clips: 384 one-second mp4 clips and metadata.csv (scripts/demo_clips.py).
# 2. runs/tiny-demo-lora-clips: i2vgen train with scripts/train_demo_clips.json: data_dir and sample_fps are
#    the only data keys; a rank-8 LoRA on the attention projections, feed-forwards and the fps embedding.
# 3. scripts/eval_demo_clips.py on held-out first frames: the new motion, the old directions, fps following.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=runs/tiny-demo-lora-clips

[ -f runs/demo-clips/metadata.csv ] || "$PY" scripts/demo_clips.py --out runs/demo-clips
"$PY" -m i2vgen.training.train --config scripts/train_demo_clips.json
"$PY" scripts/eval_demo_clips.py --lora $RUN/lora --json $RUN/eval.json
