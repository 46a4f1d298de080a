"""Long videos (FreeNoise): window placement and weights, windowed attention, noise rescheduling, prompt
schedules, and the pipeline with them on. Expected values are diffusers' documented ones or plain arithmetic."""

import numpy as np
import pytest
import torch

from conftest import SCHEDULING_ATOL, rel_error, run_demo, tiny_unet
from i2vgen.models.attention import Attention
from i2vgen.models.frame_windows import WEIGHTING_SCHEMES, FrameWindows, frame_windows, window_weights
from i2vgen.pipelines.prompt_schedule import hold, lerp, per_frame_embeddings


# ---- windows and weights (pure) ----

def test_window_placement():
    """diffusers' docstring: length 16, stride 4 over 24 frames is [0, 15], [4, 19], [8, 23]; a video that the
    stride does not fit gets a last window aligned to its end; a short one is one window."""
    assert frame_windows(24, 16, 4) == [(0, 16), (4, 20), (8, 24)]
    assert frame_windows(25, 16, 4) == [(0, 16), (4, 20), (8, 24), (9, 25)]
    assert frame_windows(26, 8, 8) == [(0, 8), (8, 16), (16, 24), (18, 26)]
    assert frame_windows(16, 16, 4) == frame_windows(10, 16, 4)[:0] + [(0, 16)]
    assert frame_windows(10, 16, 4) == [(0, 10)]
    for frames in range(1, 40):
        for length in range(1, 10):
            for stride in range(1, length + 1):
                windows = frame_windows(frames, length, stride)
                covered = sorted({j for start, end in windows for j in range(start, end)})
                assert covered == list(range(frames))
                assert all(end - start == min(length, frames) for start, end in windows)


def test_window_weights_are_diffusers_values():
    """The values diffusers' enable_free_noise documents (odd lengths) and its code comments give (even)."""
    assert window_weights(5, "flat") == [1.0] * 5
    assert window_weights(4, "pyramid") == [1, 2, 2, 1]
    assert window_weights(5, "pyramid") == [1, 2, 3, 2, 1]
    assert window_weights(4, "delayed_reverse_sawtooth") == [0.01, 2, 2, 1]
    assert window_weights(5, "delayed_reverse_sawtooth") == [0.01, 0.01, 3, 2, 1]
    for length in range(1, 20):
        assert all(len(window_weights(length, scheme)) == length for scheme in WEIGHTING_SCHEMES)


def test_fuse_is_the_weighted_average_of_windows():
    """attend = each window's mean over its frames: frame j's output is sum_w weight_w(j) mean_w / sum_w
    weight_w(j), written out for 6 frames, windows (0, 4) and (2, 6), pyramid [1, 2, 2, 1]."""
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    out = FrameWindows(4, 2, "pyramid").fuse(lambda part: part.mean(1, keepdim=True).expand_as(part), x)
    m0, m1 = x[:, 0:4].mean(1), x[:, 2:6].mean(1)
    expected = [m0, m0, (2 * m0 + 1 * m1) / 3, (1 * m0 + 2 * m1) / 3, m1, m1]
    torch.testing.assert_close(out, torch.stack(expected, 1), rtol=0, atol=1e-15)
    # a per-frame function (attention of a frame to itself only) is unchanged by any windowing (up to the
    # rounding of shares that sum to 1: a few float64 ulps)
    torch.testing.assert_close(FrameWindows(4, 1, "delayed_reverse_sawtooth").fuse(torch.tanh, x), torch.tanh(x),
                               rtol=0, atol=1e-15)


@torch.no_grad()
def test_windowed_attention_sees_only_its_window():
    """Frames 0-1 lie in the first window only: their output is attention over frames 0-3 alone; one window over
    all frames is plain attention, bit for bit."""
    torch.manual_seed(0)
    attention = Attention(8, heads=2, head_dim=4).double()
    x = torch.randn(5, 6, 8, dtype=torch.float64)
    plain = attention(x)
    attention.frame_windows = FrameWindows(4, 2)
    windowed = attention(x)
    assert rel_error(windowed[:, :2], attention._attend(x[:, :4])[:, :2]) < 1e-15
    assert rel_error(windowed[:, 4:], attention._attend(x[:, 2:])[:, 2:]) < 1e-15
    assert rel_error(windowed, plain) > 1e-3  # frames 2-3 mix two windows: not plain attention
    attention.frame_windows = FrameWindows(6, 2)
    assert torch.equal(attention(x), plain)



@torch.no_grad()
@pytest.mark.parametrize("frames, length, stride, scheme",
                         [(24, 8, 2, "pyramid"), (21, 8, 3, "delayed_reverse_sawtooth"), (13, 4, 4, "flat")])
def test_batched_windows_equal_one_attention_per_window(frames, length, stride, scheme):
    """fuse runs all windows as one batch: bit for bit what one attention call per window gives, each frame's
    output summed over its windows in window order (float32, where another order or kernel would show)."""
    torch.manual_seed(0)
    attention = Attention(16, heads=2, head_dim=8)
    x = torch.randn(7, frames, 16)
    windows = frame_windows(frames, length, stride)
    weights = [torch.tensor(window_weights(length, scheme), dtype=torch.float64) for _ in windows]
    total = torch.zeros(frames, dtype=torch.float64)
    for (start, end), w in zip(windows, weights):
        total[start:end] += w
    expected = torch.zeros(7, frames, 16)
    for (start, end), w in zip(windows, weights):
        expected[:, start:end] += attention._attend(x[:, start:end]) * (w / total[start:end]).float()[:, None]
    attention.frame_windows = FrameWindows(length, stride, scheme)
    assert torch.equal(attention(x), expected)

# ---- the UNet's switch ----

def test_unet_switch_reaches_every_attention_across_frames_and_no_other():
    unet = tiny_unet()
    windows = FrameWindows(4, 2)
    unet.enable_frame_windows(windows)
    names = {name for name, m in unet.named_modules() if isinstance(m, Attention) and m.frame_windows is windows}
    across_frames = {name for name, m in unet.named_modules()
                     if isinstance(m, Attention) and ("temp_attentions" in name or "transformer_in" in name
                                                      or "image_latents_temporal_encoder" in name)}
    # two attentions in each temporal transformer: transformer_in, down (1 layer), mid (1), up (2 layers); then
    # the image-latent encoder's one
    assert names == across_frames and len(names) == 2 * (1 + 1 + 1 + 2) + 1
    unet.enable_frame_windows(None)
    assert all(m.frame_windows is None for m in unet.modules() if isinstance(m, Attention))


@torch.no_grad()
def test_per_frame_context_equals_shared_context():
    """Text tokens given per frame, all frames alike, give the video the shared tokens give (float64: the folded
    and unfolded cross-attention sum in another order only)."""
    torch.manual_seed(0)
    unet = tiny_unet().double().eval()
    sample, latents = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64), torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)
    text = torch.randn(2, 5, 8, dtype=torch.float64)
    raw = dict(fps=16, image_latents=latents, image_embeddings=torch.randn(2, 8, dtype=torch.float64))
    shared = unet(sample[:1], 500, condition=unet.encode_condition(encoder_hidden_states=text, **raw)).sample
    per_frame = text[:, None].expand(-1, 3, -1, -1)
    out = unet(sample[:1], 500, condition=unet.encode_condition(encoder_hidden_states=per_frame, **raw)).sample
    assert rel_error(out, shared) < SCHEDULING_ATOL
    with pytest.raises(ValueError, match=r"\(R, F=3, L, 8\) per frame"):
        unet.encode_condition(encoder_hidden_states=per_frame[:, :2], **raw)


# ---- prompt schedules ----

def test_prompt_schedule_interpolates_between_given_frames():
    embeds = torch.tensor([[[0.0]], [[4.0]]])  # two prompts' embeddings (K=2, S=1, D=1)
    out = per_frame_embeddings([0, 4], embeds, 7).flatten().tolist()
    assert out == [0, 1, 2, 3, 4, 4, 4]  # linear from frame 0 to 4, then the last prompt held
    assert per_frame_embeddings([0], embeds[:1], 1).flatten().tolist() == [0.0]
    assert per_frame_embeddings([0, 4], embeds, 7, hold).flatten().tolist() == [0, 0, 0, 0, 4, 4, 4]
    with pytest.raises(ValueError, match="must return the 5 embeddings of frames 0..4"):
        per_frame_embeddings([0, 4], embeds, 7, lambda a, b, s, e: s)
    assert lerp(0, 2, embeds[:1], embeds[1:]).flatten().tolist() == [0, 2, 4]


# ---- the pipeline ----

def test_one_window_over_all_frames_equals_plain_generation(tiny_pipe64):
    """Float64: with every window covering the whole video each fused output is its one window's, times a
    share of exactly 1, and the noise is not rescheduled: FreeNoise on equals off, bit for bit; a schedule of one
    prompt is that prompt; and off again is off."""
    plain = run_demo(tiny_pipe64, num_frames=6, negative_prompt="blurry")
    tiny_pipe64.enable_free_noise(context_length=6, context_stride=2, weighting_scheme="pyramid")
    try:
        assert tiny_pipe64.free_noise_enabled
        np.testing.assert_array_equal(run_demo(tiny_pipe64, num_frames=6, negative_prompt="blurry"), plain)
        np.testing.assert_array_equal(
            run_demo(tiny_pipe64, num_frames=6, prompt={0: "a red house"}, negative_prompt={0: "blurry"}), plain)
    finally:
        tiny_pipe64.disable_free_noise()
    np.testing.assert_array_equal(run_demo(tiny_pipe64, num_frames=6, negative_prompt="blurry"), plain)


def test_long_video_with_a_prompt_schedule_runs(tiny_pipe64):
    """More frames than a window, two prompts and a negative schedule: the right shape, finite, and the prompt
    change changes the video (against the first prompt alone)."""
    tiny_pipe64.enable_free_noise(context_length=4, context_stride=2)
    try:
        schedule = run_demo(tiny_pipe64, num_frames=9, prompt={0: "a red house", 5: "a blue circle"},
                            negative_prompt={0: "", 3: "blurry"})
        single = run_demo(tiny_pipe64, num_frames=9)
    finally:
        tiny_pipe64.disable_free_noise()
    assert schedule.shape == (1, 9, 32, 32, 3) and np.isfinite(schedule).all()
    assert np.abs(schedule - single).max() > 1e-3


def test_windows_with_forward_chunking_equal_without(tiny_pipe64):
    """Forward chunking slices the temporal layers by pixels, the windows by frames: they compose."""
    tiny_pipe64.enable_free_noise(context_length=4, context_stride=2)
    try:
        whole = run_demo(tiny_pipe64, num_frames=7)
        tiny_pipe64.unet.enable_forward_chunking(1)
        chunked = run_demo(tiny_pipe64, num_frames=7)
    finally:
        tiny_pipe64.unet.disable_forward_chunking()
        tiny_pipe64.disable_free_noise()
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=SCHEDULING_ATOL)


@pytest.mark.parametrize("noise_type", ["shuffle_context", "repeat_context", "random"])
def test_noise_rescheduling(tiny_pipe64, noise_type):
    """Frames past the first window re-use its noise: repeated, or each block of `stride` frames a permutation of
    the block `length` frames earlier; "random" is the plain noise; a video of one window is never changed."""
    pipe, length, stride, frames = tiny_pipe64, 4, 3, 11
    plain = pipe.prepare_latents(1, 4, frames, 32, 32, torch.float64, "cpu", torch.Generator().manual_seed(0))
    plain_short = pipe.prepare_latents(1, 4, length, 32, 32, torch.float64, "cpu", torch.Generator().manual_seed(0))
    pipe.enable_free_noise(context_length=length, context_stride=stride, noise_type=noise_type)
    try:
        noise = pipe.prepare_latents(1, 4, frames, 32, 32, torch.float64, "cpu", torch.Generator().manual_seed(0))
        short = pipe.prepare_latents(1, 4, length, 32, 32, torch.float64, "cpu", torch.Generator().manual_seed(0))
    finally:
        pipe.disable_free_noise()
    assert torch.equal(short, plain_short) and torch.equal(noise[:, :, :length], plain[:, :, :length])
    if noise_type == "random":
        assert torch.equal(noise, plain)
    for start in range(length, frames, stride):
        block = [noise[:, :, j] for j in range(start, min(start + stride, frames))]
        earlier = [noise[:, :, j] for j in range(start - length, start - length + stride)]
        if noise_type == "repeat_context":
            assert all(torch.equal(b, noise[:, :, j % length]) for j, b in zip(range(start, frames), block))
        if noise_type == "shuffle_context":
            assert all(any(torch.equal(b, e) for e in earlier) for b in block)
            assert len({int(torch.argmax(b.flatten())) for b in block}) == len(block)  # distinct frames


@pytest.mark.parametrize("options, error, match", [
    (dict(context_length=0), ValueError, "context_length must be a positive int"),
    (dict(context_length=4, context_stride=5), ValueError, "context_stride \\(5\\) must be at most"),
    (dict(context_stride=1.5), ValueError, "context_stride must be a positive int"),
    (dict(weighting_scheme="linear"), ValueError, "weighting_scheme must be one of flat, pyramid"),
    (dict(noise_type="shuffle"), ValueError, "noise_type must be one of shuffle_context"),
    (dict(prompt_interpolation_callback="lerp"), TypeError, "prompt_interpolation_callback must be callable"),
])
def test_bad_options_are_one_line_errors(tiny_pipe64, options, error, match):
    with pytest.raises(error, match=match) as caught:
        tiny_pipe64.enable_free_noise(**options)
    assert "\n" not in str(caught.value) and not tiny_pipe64.free_noise_enabled


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt={1: "a red house"}), ValueError, "prompt needs a prompt for frame 0"),
    (dict(prompt={0: "a", 3: "b"}), ValueError, "prompt frame must be between 0 and 2, got 3"),
    (dict(prompt={0: "a", "1": "b"}), TypeError, "prompt frame must be an integer"),
    (dict(prompt={0: "a", 1: None}), TypeError, r"prompt\[1\] must be a string"),
    (dict(prompt={}), TypeError, "non-empty dict"),
    (dict(prompt=["a", "b"], negative_prompt={0: "c"}), ValueError, "needs prompt to be one string or dict"),
])
def test_bad_prompt_schedules_are_one_line_errors(tiny_pipe64, kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        run_demo(tiny_pipe64, **kwargs)
    assert "\n" not in str(caught.value)
