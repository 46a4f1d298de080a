"""The upstream test files are diffusers' v0.35.2 files byte for byte (SHA256SUMS, written when they were fetched
from the v0.35.2 tag; scripts/fetch_upstream_scheduler_tests.sh re-fetches and checks them)."""

import hashlib
from pathlib import Path

FOLDER = Path(__file__).parent / "schedulers"


def test_upstream_scheduler_tests_are_unmodified():
    sums = dict(reversed(line.split()) for line in (FOLDER / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == sorted(p.name for p in FOLDER.glob("*.py"))
    for name, digest in sums.items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name
