#!/usr/bin/env bash
# Make a video on this machine with the embedded tiny model, from a fresh clone with no other step:
# sets up (or reuses) the git-ignored .venv, installs i2vgen with MP4 export, and runs `i2vgen generate`.
#   scripts/demo.sh
# The embedded model (weights/tiny-demo) was trained here on synthetic 64x64 clips of a moving shape; see
# weights/README.md for it and for the released model.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup_venv.sh mp4

mkdir -p out
# One thread: the tiny model's ops are too small to split, and two threads spinning on a busy 2-core
# machine made generation several times slower (measured 4.8 s vs 27.5 s).
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" .venv/bin/i2vgen generate --image assets/red_circle.png \
  --prompt "a red circle moving right" --height 64 --width 64 --frames 8 --steps 25 --guidance 6 \
  --seed 0 --out out/demo.mp4
echo "Your video: $(pwd)/out/demo.mp4"
