"""Runs diffusers' own scheduler tests (v0.35.2, in schedulers/, unmodified: see README.md) against i2vgen through
the stand-in `diffusers` package in shim/."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "shim"))
