#!/usr/bin/env bash
# Fine-tune the tiny demo model (weights/tiny-demo) on a folder of mp4 files (docs/training.md, "The demo:
# fine-tuning on mp4 files"): a motion it never saw (growing, shrinking) and its four old directions, recorded
# at 8, 12, 16 and 24 fps; then measure it on held-out first frames.
#
#   scripts/train_demo_clips.sh        # needs pip install '.[video]'; rerun to resume
#
# 1. runs/demo-clips: 384 one-second mp4 clips and metadata.csv (scripts/demo_clips.py).
# 2. runs/tiny-demo-clips: i2vgen train with scripts/train_demo_clips.json (data_dir and sample_fps are its
#    only data keys): the whole UNet, from weights/tiny-demo. (scripts/train_demo_clips_lora.json: the LoRA
#    that was tried first, docs/training.md.)
# 3. scripts/eval_demo_clips.py on held-out first frames: the new motion, the old directions, fps following.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=runs/tiny-demo-clips

[ -f runs/demo-clips/metadata.csv ] || "$PY" scripts/demo_clips.py --out runs/demo-clips
"$PY" -m i2vgen.training.train --config scripts/train_demo_clips.json
"$PY" scripts/eval_demo_clips.py --model $RUN/pipeline --json $RUN/eval.json
