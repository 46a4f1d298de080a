"""Drop-in API (issue 11), model side: FreeU and fused QKV against the reference, attention processors, gradient
checkpointing, sizes.

Parity fixtures (scripts/make_reference.py, part "dropin"): tests/fixtures/dropin/frames.safetensors holds the
frames of tests/fixtures/pipeline's recorded calls made by the reference with FreeU on (b1=1.2, b2=1.4, s1=0.9,
s2=0.2), with fused QKV projections (UNet and VAE), and with neither.
"""

import json
import os
from pathlib import Path

import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import frame_atol, tiny_unet

from i2vgen import AutoencoderKL, I2VGenXLPipeline, I2VGenXLUNet
from i2vgen.models.attention import AttnProcessor
from i2vgen.models.freeu import apply_freeu, fourier_filter

pytestmark = pytest.mark.parity  # recorded reference outputs: scripts/test.sh reruns these on other kernels
ROOT = Path(os.environ.get("I2VGEN_FIXTURES", Path(__file__).parent / "fixtures"))
CALLS = json.loads((ROOT / "pipeline" / "calls.json").read_text())
RECORDED = load_file(ROOT / "dropin" / "frames.safetensors")
INFO = json.loads((ROOT / "dropin" / "info.json").read_text())
PIPELINE_SPREAD = json.loads((ROOT / "pipeline" / "info.json").read_text())["two_thread_max_abs_diff"]


@pytest.fixture(scope="module")
def pipe():
    pipe = I2VGenXLPipeline.from_pretrained(ROOT / "pipeline" / "model")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def replay(pipe, name) -> torch.Tensor:
    """A recorded call of tests/fixtures/pipeline, made as make_reference.py made it."""
    call = CALLS[name]
    with PIL.Image.open(ROOT / "pipeline" / call["image"]) as image:
        image = image.convert("RGB")
    torch.manual_seed(call["global_seed"])
    return torch.from_numpy(pipe(image=image, generator=torch.Generator().manual_seed(call["generator"]["seed"]),
                                 **call["kwargs"]).frames)


# Frames in [0, 1] against the reference's: conftest.frame_atol of the reference's own spread on that call.
def call_atol(key: str) -> float:
    return frame_atol(INFO["two_thread_max_abs_diff"][key] if "/" in key else PIPELINE_SPREAD[key])  # dropin or plain


@pytest.mark.parametrize("name", ["cfg", "non_square"])  # 8x8 latents (power-of-two FFT) and 10x14 (float32 FFT)
def test_freeu_matches_reference(pipe, name):
    pipe.enable_freeu(**INFO["freeu"])
    try:
        ours = replay(pipe, name)
    finally:
        pipe.disable_freeu()
    err = (ours - RECORDED[f"freeu/{name}"]).abs().max().item()
    assert err <= call_atol(f"freeu/{name}"), err
    # FreeU really acts (the reference's frames move by 0.5-0.7) and switches off: the reference's plain frames
    assert (RECORDED[f"freeu/{name}"] - RECORDED[f"plain/{name}"]).abs().max() > 0.1
    torch.testing.assert_close(replay(pipe, name), RECORDED[f"plain/{name}"], rtol=0, atol=call_atol(name))


def test_fused_qkv_matches_reference(pipe):
    plain = replay(pipe, "cfg")
    pipe.fuse_qkv_projections()
    try:
        fused = replay(pipe, "cfg")
        assert pipe.unet.get_memory_footprint() > pipe.unet.get_memory_footprint(return_buffers=False)
    finally:
        pipe.unfuse_qkv_projections()
    err = (fused - RECORDED["fused_qkv/cfg"]).abs().max().item()
    assert err <= call_atol("fused_qkv/cfg"), err
    assert torch.equal(replay(pipe, "cfg"), plain)  # unfused: exactly the unfused path again


# ---- FreeU pieces ----

def test_fourier_filter():
    x = torch.randn(2, 3, 8, 6)
    torch.testing.assert_close(fourier_filter(x, threshold=1, scale=1.0), x)  # scale 1: identity up to FFT rounding
    square = torch.randn(2, 3, 8, 8)  # threshold 4 covers its whole spectrum: plain scaling
    torch.testing.assert_close(fourier_filter(square, threshold=4, scale=0.5), square * 0.5)
    # threshold 1 scales the 2x2 centre of the shifted spectrum, which holds the mean (DC): it scales with s
    filtered = fourier_filter(x, threshold=1, scale=0.0)
    torch.testing.assert_close(filtered.mean(dim=(-2, -1)), torch.zeros(2, 3), rtol=0, atol=1e-6)
    half = x.half()
    assert fourier_filter(half, 1, 0.5).dtype == torch.float16


def test_apply_freeu_blocks():
    x, skip = torch.ones(1, 4, 4, 4), torch.randn(1, 2, 4, 4)
    out, filtered = apply_freeu(0, x, skip, s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert out[:, :2].eq(1.2).all() and out[:, 2:].eq(1).all() and x.eq(1).all()  # the input is not modified
    assert apply_freeu(1, x, skip, 0.9, 0.2, 1.2, 1.4)[0][:, :2].eq(1.4).all()
    assert apply_freeu(2, x, skip, 0.9, 0.2, 1.2, 1.4) == (x, skip)


# ---- attention processors ----

def small_unet() -> I2VGenXLUNet:
    torch.manual_seed(0)
    return tiny_unet().eval()


def unet_inputs(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(1, 4, 3, 8, 8, generator=g), timestep=500, fps=torch.tensor([8]),
                image_latents=torch.randn(1, 4, 3, 8, 8, generator=g), image_embeddings=torch.randn(1, 8, generator=g),
                encoder_hidden_states=torch.randn(1, 5, 8, generator=g))


def explicit_attention(attn, query, key, value):
    """softmax(q k^T / sqrt(d)) v written out: the default's maths by other kernels."""
    return (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(dim=-1) @ value


# Same maths by other kernels (explicit softmax, one fused matmul): the UNet parity tests' bound, 1e-5 of the
# output's scale (~1 here), for float32 summation order; measured 9.5e-7 (explicit) and 9.0e-7 (fused).
SAME_MATHS_ATOL = 1e-5


@torch.no_grad()
def test_attn_processors():
    unet = small_unet()
    expected = unet(**unet_inputs()).sample
    names = list(unet.attn_processors)
    modules = dict(unet.named_modules())
    assert names and all(n.endswith(".processor") and n.removesuffix(".processor") in modules for n in names)
    assert "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.processor" in names
    assert all(isinstance(p, AttnProcessor) for p in unet.attn_processors.values())

    unet.set_attn_processor(explicit_attention)  # the same maths everywhere: the same output to float rounding
    torch.testing.assert_close(unet(**unet_inputs()).sample, expected, rtol=0, atol=SAME_MATHS_ATOL)

    calls = []
    temporal = {n: lambda attn, q, k, v: calls.append(q.shape) or F.scaled_dot_product_attention(q, k, v)
                for n in names if ".temp_attentions." in n}
    unet.set_default_attn_processor()
    unet.set_attn_processor(temporal)  # some layers only
    torch.testing.assert_close(unet(**unet_inputs()).sample, expected, rtol=0, atol=0)
    assert len(calls) == len(temporal) and all(shape[2] == 3 for shape in calls)  # temporal: 3 frames of queries

    with pytest.raises(ValueError, match="no attention layer named \\['mid_block.attn.processor'\\]"):
        unet.set_attn_processor({"mid_block.attn.processor": explicit_attention})
    with pytest.raises(TypeError, match="not a callable"):
        unet.set_attn_processor(3)
    unet.set_default_attn_processor()
    assert torch.equal(unet(**unet_inputs()).sample, expected)


@torch.no_grad()
def test_fused_projections_keep_state_dict_and_output(tmp_path):
    unet = small_unet()
    keys = list(unet.state_dict())
    expected = unet(**unet_inputs()).sample
    unet.fuse_qkv_projections()
    assert list(unet.state_dict()) == keys  # fused weights are buffers outside the state dict: saving is unchanged
    torch.testing.assert_close(unet(**unet_inputs()).sample, expected, rtol=0, atol=SAME_MATHS_ATOL)
    unet.save_pretrained(tmp_path)
    reloaded = I2VGenXLUNet.from_pretrained(tmp_path)(**unet_inputs()).sample  # memory-mapped tensors: kernels
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=SAME_MATHS_ATOL)  # may round differently
    unet.unfuse_qkv_projections()
    assert torch.equal(unet(**unet_inputs()).sample, expected)

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    assert list(vae.attn_processors) == ["encoder.mid_block.attentions.0.processor",
                                         "decoder.mid_block.attentions.0.processor"]
    z = torch.randn(1, 4, 4, 4)
    plain = vae.decode(z).sample
    vae.fuse_qkv_projections()
    torch.testing.assert_close(vae.decode(z).sample, plain, rtol=0, atol=SAME_MATHS_ATOL)  # measured: identical


# ---- gradient checkpointing, sizes ----

@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_gradient_checkpointing_same_outputs_and_gradients(granularity):
    unet = small_unet().train()  # train mode: TemporalConvLayer's dropout draws, and must draw the same on recompute
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing(granularity=granularity)
            assert unet.is_gradient_checkpointing
        unet.zero_grad()
        torch.manual_seed(1)
        out = unet(**unet_inputs()).sample
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in unet.parameters()]))
    (out, grads), (out_ckpt, grads_ckpt) = results
    # the recompute runs the same kernels on the same inputs (and RNG state), so the numbers are the same bits
    assert torch.equal(out, out_ckpt)
    assert all(torch.equal(plain, recomputed) for plain, recomputed in zip(grads, grads_ckpt))
    unet.disable_gradient_checkpointing()
    assert not unet.is_gradient_checkpointing
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        AutoencoderKL().enable_gradient_checkpointing()
    with pytest.raises(ValueError, match=r"granularity must be one of \['block', 'layer'\], got 'frame'"):
        unet.enable_gradient_checkpointing(granularity="frame")


def saved_bytes(unet) -> int:
    """Bytes autograd keeps from the forward of one training call outside the checkpointed modules (inside
    them the checkpoint's own hooks take over and keep nothing but the modules' inputs)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        unet(**unet_inputs()).sample.sum()
    return sum(saved)


def test_layer_checkpointing_leaves_less_unchecked_than_blocks():
    """Per block, transformer_in and the stem keep their intermediates; per layer, transformer_in is
    checkpointed too and only the few unwrapped ops (conv_in, samplers, conv_out, the condition encoders)
    keep theirs. The peak these save at the released size: docs/training.md's memory plan."""
    unet = small_unet().train()
    plain = saved_bytes(unet)
    unet.enable_gradient_checkpointing()
    block = saved_bytes(unet)
    unet.enable_gradient_checkpointing(granularity="layer")  # replaces the per-block checkpoints
    layer = saved_bytes(unet)
    unet.disable_gradient_checkpointing()
    assert layer < block < plain / 2, (layer, block, plain)
    assert saved_bytes(unet) == plain
