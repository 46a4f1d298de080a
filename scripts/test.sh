#!/usr/bin/env bash
# Set up (or reuse) the git-ignored .venv in this checkout and run the test suite on the CPU.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test,mp4,app
bash scripts/install_browser.sh   # Debian's Chromium for the browser tests (tests/test_app.py), if missing
.venv/bin/python -m pytest -q "$@"
