#!/usr/bin/env bash
# Re-fetch diffusers' scheduler tests (tag v0.35.2) into tests/upstream/schedulers/ and check them against
# SHA256SUMS (needs the network). They are git-ignored: nothing fetched is committed; CI runs our own port of them
# (tests/test_upstream_ddim.py, tests/test_upstream_schedulers.py). The PyPI sdist of diffusers 0.35.2 holds no tests.
set -euo pipefail
cd "$(dirname "$0")/../tests/upstream/schedulers"
base=https://raw.githubusercontent.com/huggingface/diffusers/v0.35.2/tests/schedulers
for f in __init__.py test_schedulers.py test_scheduler_ddim.py test_scheduler_unipc.py test_scheduler_dpm_multi.py \
         test_scheduler_euler.py; do
    curl -fsSL "$base/$f" -o "$f.new" && mv "$f.new" "$f"
done
sha256sum -c SHA256SUMS
