"""Small units and the space/time folds, checked against closed-form math or structural properties.

Numerical parity with the reference is tested end to end in test_unet.py; these tests pin down the
conventions a reader relies on when changing one block: sinusoid layout, attention math, which axis each
fold attends over, and that videos in a batch never mix.
"""

import math

import pytest
import torch

from conftest import rel_error

from i2vgen.models.attention import Attention, FeedForward
from i2vgen.models.chunking import MIN_FF_CHUNK_ELEMENTS
from i2vgen.models.embeddings import timestep_embedding
from i2vgen.models.resnet import Downsample2D, FrameConv, ResnetBlock2D, TemporalConvLayer, Upsample2D
from i2vgen.models.transformers import Transformer2DModel, TransformerTemporalModel

# Our module vs itself on a different batch/frame split: only kernel blocking can differ (a few float32
# ulps); a fold that mixes videos, frames or pixels changes outputs by O(1).
FOLD_TOL = 1e-5


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 1, 250, 999])
    dim, half = 32, 16
    emb = timestep_embedding(t, dim)
    k = torch.arange(half, dtype=torch.float64)
    angles = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / half)[None, :]
    expected = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    assert emb.dtype == torch.float32 and emb.shape == (4, dim)
    # float32 angles up to 999 rad carry an absolute rounding error of ~999 * 2^-24 * (a few ops) ~ 2e-4,
    # and sin/cos pass it through unchanged; the reference computes in float32 the same way.
    assert (emb.double() - expected).abs().max() < 5e-4
    assert torch.equal(emb[0], torch.cat([torch.ones(half), torch.zeros(half)]))  # t = 0: cos 1, sin 0


def test_timestep_embedding_odd_dim_pads_a_zero_column():
    emb = timestep_embedding(torch.tensor([3.5, 7.0]), 9)
    assert emb.shape == (2, 9) and torch.equal(emb[:, -1], torch.zeros(2))


@torch.no_grad()
def test_attention_is_softmax_qk_v():
    torch.manual_seed(0)
    attn = Attention(12, cross_attention_dim=6, heads=3, head_dim=5)
    x, ctx = torch.randn(2, 7, 12), torch.randn(2, 4, 6)
    q, k, v = (lin(inp).double().view(2, -1, 3, 5).transpose(1, 2)
               for lin, inp in ((attn.to_q, x), (attn.to_k, ctx), (attn.to_v, ctx)))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(5), dim=-1)
    heads = (weights @ v).transpose(1, 2).reshape(2, 7, 15)
    expected = heads @ attn.to_out[0].weight.double().T + attn.to_out[0].bias.double()
    # float32 vs float64 on 15-term dot products: ~1e-7 relative.
    assert rel_error(attn(x, ctx).double(), expected) < 1e-5


@torch.no_grad()
def test_cross_attention_to_a_context_shared_by_frames():
    """A context with one row per video (b, M, D) for frames ((b f), c, h, w) equals the context repeated per
    frame: each query's softmax runs over the same keys either way."""
    torch.manual_seed(0)
    module = _randomised(Transformer2DModel(8, heads=2, head_dim=4, cross_attention_dim=6, norm_num_groups=4))
    b, f = 2, 3
    x, ctx = torch.randn(b * f, 8, 3, 5), torch.randn(b, 7, 6)
    # Same dot products; only the kernel's blocking over a longer query sequence can move the last bits.
    assert rel_error(module(x, ctx, num_frames=f), module(x, ctx.repeat_interleave(f, dim=0))) < 1e-6


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_norms_and_softmax_sum_in_float32(dtype):
    """What the half-precision note in unet.py relies on: the models never upcast, and the kernels keep the
    statistics in float32. Values near 1000 (squares ~1e6, above float16's 65504 maximum) normalise to within
    the output's rounding of the float32 result; 1e5 equal keys (sum of exponentials 1e5) average exactly."""
    x = torch.randn(2, 8, 6, 6) * 300 + 1000
    norm = torch.nn.GroupNorm(4, 8)
    # Rounding the input (bfloat16: 4 / 300 of a std at 1000) and the output (1/64 at |y| < 4): < 0.03 together.
    # Statistics summed in float16 would overflow to inf; in bfloat16 the variance would be lost entirely.
    assert (norm.to(dtype)(x.to(dtype)).float() - norm.float()(x)).abs().max() < 0.05
    layer_norm = torch.nn.LayerNorm(64)
    y = torch.randn(3, 64) * 300 + 1000
    assert (layer_norm.to(dtype)(y.to(dtype)).float() - layer_norm.float()(y)).abs().max() < 0.05
    q, k, v = torch.zeros(1, 1, 4, 8, dtype=dtype), torch.zeros(1, 1, 100_000, 8, dtype=dtype), torch.ones(
        1, 1, 100_000, 8, dtype=dtype)
    assert torch.equal(torch.nn.functional.scaled_dot_product_attention(q, k, v), torch.ones(1, 1, 4, 8, dtype=dtype))


@torch.no_grad()
def test_chunked_feed_forward_equals_one_pass():
    """Above 2**21 hidden elements the feed-forward runs in row chunks; rows are independent."""
    torch.manual_seed(0)
    ff = FeedForward(16)  # GEGLU: 128 hidden features per row
    x = torch.randn(4 * MIN_FF_CHUNK_ELEMENTS // 128 // 8, 8, 16)  # 4 chunks
    # The same per-row operations; GEMMs over fewer rows may only change the blocking (float32 ulps).
    assert rel_error(ff(x), ff.net(x)) < 1e-6


@torch.no_grad()
def test_vae_style_attention_normalises_and_adds_the_input():
    torch.manual_seed(0)
    attn = Attention(8, heads=1, head_dim=8, bias=True, norm_num_groups=2, eps=1e-6, residual_connection=True)
    x = torch.randn(2, 5, 8)
    normed = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    plain = Attention(8, heads=1, head_dim=8, bias=True)
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if not k.startswith("group_norm")})
    # Identical float32 operations on both sides.
    assert torch.equal(attn(x), plain(normed) + x)


def test_downsample_and_upsample_sizes():
    x = torch.randn(1, 4, 7, 6)
    assert Downsample2D(4, padding=1)(x).shape[-2:] == (4, 3)
    assert Downsample2D(4, padding=0)(x).shape[-2:] == (3, 3)  # pads bottom/right: 8 x 7, then stride 2
    assert Upsample2D(4)(x).shape[-2:] == (14, 12)
    assert Upsample2D(4)(x, output_size=(13, 11)).shape[-2:] == (13, 11)


@torch.no_grad()
def test_resnet_block_without_residual_branch_is_identity():
    block = ResnetBlock2D(8, 8, temb_channels=4, groups=2)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    x = torch.randn(3, 8, 5, 4)
    assert block.conv_shortcut is None and torch.equal(block(x, torch.randn(3, 4)), x)
    assert ResnetBlock2D(8, 16, groups=2).conv_shortcut is not None


@torch.no_grad()
def test_frame_conv_is_the_conv3d():
    """The (3, 1, 1) Conv3d, computed as a (3, 1) Conv2d, keeps its Conv3d weight and its output."""
    conv = _randomised(FrameConv(8))
    assert conv.weight.shape == (8, 8, 3, 1, 1)
    x = torch.randn(2, 8, 5, 4, 3)
    # The same 24-term dot products in another kernel: float32 summation order only.
    assert rel_error(conv(x), torch.nn.functional.conv3d(x, conv.weight, conv.bias, padding=(1, 0, 0))) < 1e-6


@torch.no_grad()
def test_fresh_temporal_conv_is_identity():
    x = torch.randn(6, 8, 3, 4)  # (b f) c h w with b=2, f=3
    assert torch.equal(TemporalConvLayer(8, norm_num_groups=4)(x, num_frames=3), x)


def _randomised(module):
    torch.manual_seed(1)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


@torch.no_grad()
@pytest.mark.parametrize("make", [
    lambda: TransformerTemporalModel(8, heads=2, head_dim=4, norm_num_groups=4),
    lambda: TemporalConvLayer(8, norm_num_groups=4),
])
def test_temporal_layers_keep_videos_apart_and_pixels_independent(make):
    """(b f) c h w in: each video is processed on its own, and the layer commutes with any shuffle of
    pixel positions (it mixes frames, never pixels; its GroupNorm does not see pixel order)."""
    module = _randomised(make())
    b, f = 2, 3
    x = torch.randn(b * f, 8, 4, 5)
    out = module(x, num_frames=f)
    for i in range(b):
        video = slice(i * f, (i + 1) * f)  # frames of one video are consecutive in the batch
        assert rel_error(module(x[video], num_frames=f), out[video]) < FOLD_TOL
    perm = torch.randperm(20)
    shuffled = x.flatten(2)[..., perm].view_as(x)
    assert rel_error(module(shuffled, num_frames=f), out.flatten(2)[..., perm].view_as(out)) < FOLD_TOL


@torch.no_grad()
def test_spatial_transformer_keeps_frames_apart():
    """Transformer2DModel attends within each frame: a frame alone gives the same output."""
    module = _randomised(Transformer2DModel(8, heads=2, head_dim=4, cross_attention_dim=6, norm_num_groups=4))
    x, ctx = torch.randn(4, 8, 3, 5), torch.randn(4, 7, 6)
    out = module(x, ctx)
    for n in range(4):
        assert rel_error(module(x[n:n + 1], ctx[n:n + 1]), out[n:n + 1]) < FOLD_TOL
