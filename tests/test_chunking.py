"""Forward chunking (i2vgen/models/chunking.py, I2VGenXLUNet.enable_forward_chunking) gives the unchunked output."""

import numpy as np
import pytest
import torch
from conftest import SCHEDULING_ATOL, UNET_CASES, guidance_inputs, load_unet_case, raw_inputs, rel_error
from conftest import run_demo as run

from i2vgen.models import chunking

# Chunking reorders no sum: a chunked run does the same operations on the same rows as a whole run, and only
# kernels blocked for another row count can change the last bits (float32: up to 1.4e-6 of the output's scale
# measured here). The tests run in float64, where that rounding is ~1e-15, so a wrong slice (another video's
# context, a norm over part of a video) cannot hide under it.
CHUNK_TOL = 1e-12


def videos(io: dict, frames: int, batch: int) -> tuple[torch.Tensor, dict]:
    """A random sample and raw conditioning of `batch` videos of `frames` frames for a fixture UNet."""
    gen = torch.Generator().manual_seed(0)
    _, c, _, h, w = io["sample"].shape
    raw = raw_inputs(io)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    raw = dict(fps=raw["fps"][:1].repeat(batch), image_latents=randn(batch, c, frames, h, w),
               image_embeddings=randn(batch, *raw["image_embeddings"].shape[1:]),
               encoder_hidden_states=randn(batch, *raw["encoder_hidden_states"].shape[1:]))
    return randn(batch, c, frames, h, w), raw


@pytest.mark.parametrize("name", UNET_CASES)
@pytest.mark.parametrize("chunk_size", [None, 1, 3])  # None: the default, 1 frame; 3: rounded down to 2 of 4
@torch.no_grad()
def test_forward_chunking_is_exact(name, chunk_size, monkeypatch):
    # The fixture models are tiny: without this every layer is below the slice floor and would run whole.
    monkeypatch.setattr(chunking, "MIN_CHUNK_ELEMENTS", 1)
    unet, io, _ = load_unet_case(name)
    unet.double()
    sample, raw = videos(io, frames=4, batch=2)
    whole = unet(sample, 500, **raw).sample
    unet.enable_forward_chunking(chunk_size)
    sliced = unet(sample, 500, **raw).sample
    unet.disable_forward_chunking()
    assert rel_error(sliced, whole) <= CHUNK_TOL, rel_error(sliced, whole)
    assert torch.equal(unet(sample, 500, **raw).sample, whole)  # disabled again


@pytest.mark.parametrize("name", UNET_CASES)
@torch.no_grad()
def test_forward_chunking_with_shared_trunk(name, monkeypatch):
    # Classifier-free guidance as one batch: the condition has twice the sample's rows; each slice of a
    # per-frame layer must get its own video's context.
    monkeypatch.setattr(chunking, "MIN_CHUNK_ELEMENTS", 1)
    unet, io, _ = load_unet_case(name)
    unet.double()
    io = {k: v.double() if v.is_floating_point() else v for k, v in io.items()}
    condition = unet.encode_condition(**guidance_inputs(io))
    whole = unet(io["sample"], io["timestep"], condition=condition).sample
    unet.enable_forward_chunking()
    sliced = unet(io["sample"], io["timestep"], condition=condition).sample
    assert rel_error(sliced, whole) <= CHUNK_TOL, rel_error(sliced, whole)


def test_forward_chunking_arguments():
    unet, _, _ = load_unet_case(UNET_CASES[0])
    with pytest.raises(ValueError, match="dim"):
        unet.enable_forward_chunking(dim=1)
    with pytest.raises(ValueError, match="chunk_size"):
        unet.enable_forward_chunking(0)


def test_chunked_slices_per_video_arguments():
    # Rows are (video, frame); the per-video argument follows its rows, the per-row one is sliced with them.
    x, per_row, per_video = torch.arange(6.0), torch.arange(6.0) * 10, torch.tensor([100.0, 200.0])

    def fn(x, per_row, per_video):
        return x + per_row + per_video.repeat_interleave(len(x) // len(per_video))

    expected = fn(x, per_row, per_video)
    for size in (1, 3, 6):
        assert torch.equal(chunking.chunked(fn, x, per_row, per_video, size=size), expected)
    with pytest.raises(ValueError, match="cannot slice"):
        chunking.chunked(fn, x, per_row, per_video, size=2)  # a slice of 2 rows would straddle two videos


def test_pipeline_memory_options_give_the_same_video(tiny_pipe64, monkeypatch):
    # Sequential guidance switches forward chunking on; decode one frame at a time. Float64 pipeline: the same
    # bound as the other scheduling tests (test_pipeline.SCHEDULING_ATOL).
    monkeypatch.setattr(chunking, "MIN_CHUNK_ELEMENTS", 1)
    pipe = tiny_pipe64
    pipe.unet.disable_forward_chunking()
    plain = run(pipe, negative_prompt="blurry", decode_chunk_size=None)
    pipe.enable_sequential_guidance()
    try:
        assert pipe.unet.down_blocks[0].forward_chunk_size == 1
        options = run(pipe, negative_prompt="blurry", decode_chunk_size=1)
    finally:
        pipe.enable_sequential_guidance(False)
        pipe.unet.disable_forward_chunking()
    np.testing.assert_allclose(options, plain, rtol=0, atol=SCHEDULING_ATOL)
