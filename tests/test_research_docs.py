"""docs/research.md: its two examples run as written (the code blocks under "## Example" headings)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "research.md").read_text()


def example(number: int) -> str:
    section = DOC.split(f"## Example {number}:")[1].split("\n## ")[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def run_example(number: int, monkeypatch) -> dict:
    monkeypatch.chdir(ROOT)  # the examples use repository paths (weights/tiny-demo, assets/)
    namespace = {}
    exec(compile(example(number), f"docs/research.md example {number}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def default_frames():
    """The examples' call with the default processors."""
    import PIL.Image

    from i2vgen import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(ROOT / "weights" / "tiny-demo")
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.open(ROOT / "assets" / "red_circle.png").convert("RGB")
    return pipe(prompt="a red circle moving right", image=image, height=64, width=64, num_frames=8,
                num_inference_steps=3, guidance_scale=6.0, generator=torch.manual_seed(0),
                output_type="np").frames


def test_example_1_saves_temporal_maps(monkeypatch, default_frames):
    ns = run_example(1, monkeypatch)
    maps = ns["saver"].maps
    assert len(maps) == 3  # one guided UNet call per step
    batch, heads, queries, keys = maps[0].shape
    assert (queries, keys) == (8, 8) and batch == 2 * 4 * 4  # both guidance halves x the mid block's 4x4 pixels
    torch.testing.assert_close(maps[0].sum(dim=-1), torch.ones(batch, heads, 8))
    # recording changed nothing: the saver returns softmax(q k^T / sqrt(d)) v, the default's maths by other kernels
    # (float32 rounding, amplified by 3 guided steps: 2.0e-6 measured; 1e-5 is 1/400 of an 8-bit level)
    np.testing.assert_allclose(ns["frames"], default_frames, rtol=0, atol=1e-5)
    assert all(isinstance(p, type(ns["pipe"].unet.attn_processors[n])) for n, p in ns["pipe"].unet.attn_processors.items())


def test_example_2_makes_temporal_attention_causal(monkeypatch, default_frames):
    ns = run_example(2, monkeypatch)
    names = ns["pipe"].unet.attn_processors
    assert len(ns["temporal"]) == sum(".temp_attentions." in n or n.startswith("transformer_in.") for n in names) > 0
    assert np.abs(ns["causal"] - default_frames).max() > 1e-3  # the video really changes
