"""Feature caching across denoising steps (i2vgen/models/cache.py): off changes nothing, interval 1 is a full pass,
a cached call reuses exactly what the full pass before it computed, nothing leaks between calls, bad configs are one
line. (Caching off is also covered by every parity test, which runs with the cache disabled.)"""

import pytest
import torch

from conftest import run_demo
from i2vgen import CacheConfig, I2VGenXLUNet

EVERYTHING = dict(cache_branch_id=0, cache_guidance=True)


def three_level_unet() -> I2VGenXLUNet:
    """A float64 UNet with three levels (branch ids 0, 1, 2) of a few thousand parameters."""
    torch.manual_seed(0)
    return I2VGenXLUNet(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=8,
                        attention_head_dim=4, down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
                        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2).double().eval()


def guided_condition(unet, batch: int = 1, seed: int = 1):
    """A condition of two groups of rows ([unconditional, conditional]) sharing one image latent, as the pipeline's."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return unet.encode_condition(fps=torch.tensor([8] * 2 * batch), image_latents=rand(batch, 4, 3, 8, 8),
                                 image_embeddings=rand(2 * batch, 8), encoder_hidden_states=rand(2 * batch, 5, 8))


def samples(n: int, batch: int = 1):
    g = torch.Generator().manual_seed(7)
    return [torch.randn(batch, 4, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(n)]


@torch.no_grad()
def test_interval_one_is_a_full_pass():
    """With cache_interval=1 every call is a full pass: bit-identical to the uncached UNet, call after call."""
    unet, xs = three_level_unet(), samples(3)
    condition = guided_condition(unet)
    plain = [unet(x, 900 - 100 * i, condition=condition).sample for i, x in enumerate(xs)]
    unet.enable_cache(CacheConfig(cache_interval=1, **EVERYTHING))
    cached = [unet(x, 900 - 100 * i, condition=condition).sample for i, x in enumerate(xs)]
    assert all(torch.equal(a, b) for a, b in zip(plain, cached))
    unet.disable_cache()
    assert torch.equal(unet(xs[0], 900, condition=condition).sample, plain[0])


@pytest.mark.parametrize("branch_id", [0, 1, 2])
@torch.no_grad()
def test_cached_call_reuses_the_full_pass(branch_id):
    """On the full pass's own input a cached call recomputes the shallow levels and reads the deep features the
    full pass stored: the same output. On another input it differs from a full pass there (it reuses)."""
    unet, (x, y) = three_level_unet(), samples(2)
    condition = guided_condition(unet)
    unet.enable_cache(CacheConfig(cache_interval=2, cache_branch_id=branch_id))
    full = unet(x, 500, condition=condition).sample
    assert torch.equal(unet(x, 500, condition=condition).sample, full)  # call 2: cached
    unet(x, 500, condition=condition)  # call 3: full, stores x's features again
    reused = unet(y, 400, condition=condition).sample
    unet.disable_cache()
    assert not torch.allclose(reused, unet(y, 400, condition=condition).sample)


@torch.no_grad()
def test_cached_guidance_adds_the_stored_difference():
    """A cached call with cache_guidance runs the conditional rows only; its unconditional rows are those plus the
    full pass's (unconditional - conditional)."""
    unet, (x, y) = three_level_unet(), samples(2, batch=2)
    condition = guided_condition(unet, batch=2)
    unet.enable_cache(CacheConfig(cache_interval=2, cache_branch_id=None, cache_guidance=True))
    full_x = unet(x, 500, condition=condition).sample
    cached_y = unet(y, 400, condition=condition).sample
    unet.disable_cache()
    full_y = unet(y, 400, condition=condition).sample
    # The conditional rows run in a batch of 2 instead of 4: float64 GEMM blocking may move the last bits only.
    torch.testing.assert_close(cached_y[2:], full_y[2:], rtol=0, atol=1e-12)
    torch.testing.assert_close(cached_y[:2], cached_y[2:] + full_x[:2] - full_x[2:], rtol=0, atol=1e-12)
    assert not torch.allclose(cached_y[:2], full_y[:2])


@pytest.mark.parametrize("sequential", [False, True])
def test_no_leak_between_calls(tiny_pipe64, sequential):
    """Two different calls in a row with caching each give what they give as the first call after enable_cache
    (the pipeline clears the cache; entries are per condition), with guidance in one pass or two."""
    pipe = tiny_pipe64
    pipe.enable_sequential_guidance(sequential)
    config = CacheConfig(cache_interval=2, **EVERYTHING)
    try:
        fresh = []
        for prompt in ("a red house", "a blue ball"):
            pipe.unet.enable_cache(config)
            fresh.append(run_demo(pipe, prompt=prompt, num_inference_steps=3))
        in_a_row = [run_demo(pipe, prompt=prompt, num_inference_steps=3) for prompt in ("a red house", "a blue ball")]
        pipe.unet.disable_cache()
        plain = run_demo(pipe, prompt="a blue ball", num_inference_steps=3)
    finally:
        pipe.unet.disable_cache()
        pipe.enable_sequential_guidance(False)
        pipe.unet.disable_forward_chunking()
    assert all((a == b).all() for a, b in zip(fresh, in_a_row))
    assert not (in_a_row[1] == plain).all()  # the cache was used
    assert pipe.unet.step_cache is None


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(cache_interval=0), ValueError, "cache_interval must be at least 1, got 0"),
    (dict(cache_interval=2.0), TypeError, "cache_interval must be an integer"),
    (dict(cache_branch_id=-1), ValueError, "cache_branch_id must be at least 0"),
    (dict(cache_branch_id=None), ValueError, "must cache something"),
    (dict(cache_guidance="yes"), TypeError, "cache_guidance must be True or False"),
])
def test_bad_configs_are_one_line(kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        CacheConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_branch_beyond_the_levels_is_one_line():
    with pytest.raises(ValueError, match="cache_branch_id must be below the UNet's 3 levels") as info:
        three_level_unet().enable_cache(CacheConfig(cache_branch_id=3))
    assert "\n" not in str(info.value)


def test_default_steps_are_the_schedulers_recommended(tiny_pipe64):
    """num_inference_steps None: DDIM's 50 (the reference's default), then enable_fast_sampling's sampler and count
    with the cache on; disable_fast_sampling restores the scheduler and turns the cache off."""
    pipe, released = tiny_pipe64, tiny_pipe64.scheduler
    stop = lambda *args: {"stop": True}  # noqa: E731  (one step is enough to see the schedule)
    call = dict(num_inference_steps=None, output_type="latent", callback_on_step_end=stop)
    run_demo(pipe, **call)
    assert len(pipe.scheduler.timesteps) == 50
    pipe.enable_fast_sampling()
    try:
        run_demo(pipe, **call)
        assert type(pipe.scheduler).__name__ == "PowerUniPCScheduler" and pipe.unet.step_cache is not None
        assert len(pipe.scheduler.timesteps) == pipe.scheduler.recommended_steps == 15
    finally:
        pipe.disable_fast_sampling()
    assert pipe.scheduler is released and pipe.unet.step_cache is None
