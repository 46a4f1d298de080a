"""The second battery of bad input and faults (issue 25): full disks, LoRA files, endless waits, job files, the
API's types, the app. Each ends in one clear line naming the argument, file or key (or the right result), with
nothing partial left behind."""

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from i2vgen import I2VGenXLPipeline
from i2vgen.apps.cli import main

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "red_circle.png"
TINY = ROOT / "weights" / "tiny-demo"
FAST = ["--steps", "2", "--frames", "3", "--height", "32", "--width", "32", "--seed", "1"]


def cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI; returns (exit status, last stderr line)."""
    code = main(list(map(str, args)))
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def pipe():
    pipe = I2VGenXLPipeline.from_pretrained(TINY)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, **kwargs):
    args = dict(prompt="a red circle moving right", image=PIL.Image.new("RGB", (32, 32)), height=32, width=32,
                num_frames=2, num_inference_steps=1, output_type="np") | kwargs
    return pipe(**args).frames


# ---- full disks ----

FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    from i2vgen.apps.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def full_disk(*args) -> subprocess.CompletedProcess:
    """Run the CLI in a process whose files cannot grow past 1 kB (a 3-frame 32x32 MP4 is 1.8 kB) (ffmpeg, its child, inherits the limit)."""
    return subprocess.run([sys.executable, "-c", FULL_DISK, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})


def test_full_disk_during_mp4_export_fails_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = full_disk("generate", "--image", IMAGE, "--prompt", "a red circle moving right", *FAST,
                       "--out", out / "v.mp4")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith(f"i2vgen: error: cannot write {out / 'v.mp4'}: ffmpeg wrote "), last
    assert "(is the disk full?)" in last and list(out.iterdir()) == []


SAVE_ON_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from i2vgen import I2VGenXLPipeline
    pipe = I2VGenXLPipeline.from_pretrained(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the UNet's weights are 5.6 MB
    try:
        pipe.save_pretrained(sys.argv[2])
    except OSError as error:
        sys.exit(f"refused: {error}")
""")


@pytest.mark.parametrize("old_save", [False, True])
def test_save_pretrained_onto_a_full_disk_leaves_the_old_state(tmp_path, old_save):
    target = tmp_path / "saved"
    if old_save:
        I2VGenXLPipeline.from_pretrained(TINY).save_pretrained(target)
    before = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*"))
    result = subprocess.run([sys.executable, "-c", SAVE_ON_FULL_DISK, TINY, target], capture_output=True, text=True,
                            timeout=300, env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 1 and result.stderr.startswith(f"refused: cannot write {target}/"), result.stderr
    assert ".partial" not in result.stderr
    assert sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*")) == before
