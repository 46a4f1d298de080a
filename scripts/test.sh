#!/usr/bin/env bash
# Set up (or reuse) the git-ignored .venv in this checkout and run the test suite on the CPU.
#   scripts/test.sh [pytest args...]
# Without arguments it then reruns the recorded-output tests (marker "parity") with the kernels of another kind
# of CPU, so that a fixture or tolerance that holds on one kind only fails here and not on someone else's machine
# (tests/fixtures/README.md, "Kernels and threads"): on a CPU with AVX-512 limited to AVX2 (the kind without it),
# otherwise torch's scalar kernels (ATEN_CPU_CAPABILITY=default).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test,mp4,app
bash scripts/install_browser.sh   # Debian's Chromium for the browser tests (tests/test_app.py), if missing
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
    if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
        kernels=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
    else
        kernels=(ATEN_CPU_CAPABILITY=default)
    fi
    echo "recorded-output tests again with ${kernels[*]}"
    env "${kernels[@]}" .venv/bin/python -m pytest -q -m parity
fi
