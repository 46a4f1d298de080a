#!/usr/bin/env bash
# Start the web app on this machine with the embedded tiny model, from a fresh clone with no other step:
# sets up (or reuses) the git-ignored .venv, installs i2vgen with its `app` extra (Gradio) and runs `i2vgen app`.
#   scripts/app.sh [--port 7860] [--model PATH_OR_HUB_ID] ...      then open http://127.0.0.1:7860
# It listens on this machine only (127.0.0.1); Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup_venv.sh app

# One thread: the tiny model's ops are too small to split (see scripts/demo.sh).
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" exec .venv/bin/i2vgen app "$@"
