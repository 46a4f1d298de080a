#!/usr/bin/env bash
# One call on a GPU machine without network: ours and the reference at 1280x704, 16 frames, fp16 (docs/performance.md).
#   scripts/gpu_check.sh --wheels DIR            # DIR: the reference's wheels (see docs/performance.md, "GPU check")
#   scripts/gpu_check.sh --device cpu --tiny     # smoke mode, ours only (the test suite)
# Other options go to scripts/gpu_check.py (--steps N, --out DIR, --no-compile). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=out/gpu_check
WHEELS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --out) OUT=$2; ARGS+=(--out "$2"); shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
mkdir -p "$OUT"
if [ -n "$WHEELS" ]; then
  # The reference's pinned stack, in a folder that only the reference's process puts on its path.
  ls "$WHEELS"/*.whl > /dev/null || { echo "--wheels $WHEELS: no .whl files there" >&2; exit 2; }
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --upgrade \
    --target "$OUT/ref-site" "$WHEELS"/*.whl
  ARGS+=(--ref-site "$(cd "$OUT/ref-site" && pwd)")
fi
exec "$PYTHON" scripts/gpu_check.py "${ARGS[@]}"
