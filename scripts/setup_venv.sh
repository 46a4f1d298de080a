#!/usr/bin/env bash
# Create or reuse the git-ignored .venv in this checkout and install i2vgen (editable) with the given extras.
#   scripts/setup_venv.sh test,mp4
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${1:-}]"
