"""How long a call takes at least: its floating-point work, counted by running the models on meta tensors, over
the device's measured matmul throughput. The applications print it and refuse a video that would run for hours
(apps/estimate.py), as memory.py's bound refuses one that cannot fit.

Work (`torch.utils.flop_counter`: matmuls, convolutions and attention, 2 FLOPs per multiply-add):
- the UNet, once per step on the guidance batch (2 rows with guidance, else 1; a cached call as it runs: only its
  shallow levels, models/cache.py), plus `encode_condition` once;
- the VAE encoder once (the first frame) and its decoder once per frame.
Not counted: the CLIP text and image encoders (one pass each, well under 1 TFLOP at full size against about 9 PFLOP
for a default video, REFERENCE.md), norms and elementwise ops. Attention grows faster than the pixels and frames:
(h w)^2 f in the spatial layers and f^2 h w in the temporal ones, and the count includes it as run.

Meta tensors carry shapes and no data, so a count costs the same at 4096 x 4096 as at 64 x 64 (about 0.4 s for
the tiny demo, 2 s for the released UNet on the 2-core CPU). Frames are free too, except with FreeNoise's windows
(a Python loop over them): there the UNet is counted at three window counts and the count at the requested frames
follows exactly, since everything but the windowed attention is linear in the frames (`unet_flops`).
"""

import functools
import json
import math
import threading
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from i2vgen.models.cache import CacheConfig
from i2vgen.models.frame_windows import FrameWindows, frame_windows
from i2vgen.models.unet import I2VGenXLUNet
from i2vgen.models.vae import AutoencoderKL


_LOCK = threading.Lock()


def _key(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


@functools.lru_cache(maxsize=4)
def _meta_models(unet_key: str, vae_key: str) -> tuple[I2VGenXLUNet, AutoencoderKL]:
    """The UNet and VAE of these configs on the meta device (no memory, no weights), built once per config."""
    with torch.device("meta"):
        unet = I2VGenXLUNet(I2VGenXLUNet.config_class.from_dict(json.loads(unet_key)))
        vae = AutoencoderKL(AutoencoderKL.config_class.from_dict(json.loads(vae_key)))
    return unet.eval(), vae.eval()


def _count(fn) -> int:
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _unet_calls(unet: I2VGenXLUNet, rows: int, text_tokens: int, frames: int, latent_height: int,
                latent_width: int) -> tuple[int, int, int]:
    """FLOPs of (encode_condition, a full UNet call, a cached call: the second call when caching is on, else a full
    one) for one video of `frames` frames with `rows` rows of context."""
    c, meta = unet.config, torch.device("meta")
    latents = torch.empty(1, c.in_channels, frames, latent_height, latent_width, device=meta)
    inputs = dict(fps=torch.ones(rows, device=meta), image_latents=latents,
                  image_embeddings=torch.empty(rows, c.cross_attention_dim, device=meta),
                  encoder_hidden_states=torch.empty(rows, text_tokens, c.cross_attention_dim, device=meta))
    condition = []
    encode = _count(lambda: condition.append(unet.encode_condition(**inputs)))
    unet.clear_cache()
    full = _count(lambda: unet(latents, 999, condition=condition[0]))
    cached = _count(lambda: unet(latents, 999, condition=condition[0])) if unet.step_cache is not None else full
    return encode, full, cached


def unet_flops(unet: I2VGenXLUNet, rows: int, text_tokens: int, frames: int, latent_height: int, latent_width: int,
               windows: FrameWindows | None = None, cache: CacheConfig | None = None) -> tuple[int, int, int]:
    """`_unet_calls` with FreeNoise's `windows` and the step cache `cache` (None: off). With more than 3 windows:
    counted at frames L, L + s and L + s + 1 (1, 2 and 3 windows of L frames, stride s) and solved for
    FLOPs = a + b frames + c windows, exact because the windowed attention is all that does not grow with the
    frames alone."""
    unet.enable_frame_windows(windows)
    if cache is not None:
        unet.enable_cache(cache)
    try:
        if windows is None or len(frame_windows(frames, windows.context_length, windows.context_stride)) <= 3:
            return _unet_calls(unet, rows, text_tokens, frames, latent_height, latent_width)
        length, stride = windows.context_length, windows.context_stride
        features = lambda f: [1, f, len(frame_windows(f, length, stride))]  # noqa: E731
        known = (length, length + stride, length + stride + 1)
        counts = [_unet_calls(unet, rows, text_tokens, f, latent_height, latent_width) for f in known]
        fit = np.linalg.lstsq(np.array([features(f) for f in known], dtype=np.float64),
                              np.array(counts, dtype=np.float64), rcond=None)[0]
        return tuple(round(x) for x in np.array(features(frames), dtype=np.float64) @ fit)
    finally:
        unet.enable_frame_windows(None)
        unet.disable_cache()


def call_flops(unet_config, vae_config, text_tokens: int, frames: int, height: int, width: int, unet_calls: int,
               guided: bool, windows: FrameWindows | None = None, cache: CacheConfig | None = None) -> int:
    """FLOPs of one video: `unet_calls` UNet calls on the guidance batch (with `cache`, a full pass every
    cache_interval calls and cached calls between), its conditioning (`text_tokens`: the text encoder's length),
    and the VAE (see the module docstring for what is counted)."""
    with _LOCK:  # the meta models are shared, and a count switches their windows and cache
        unet, vae = _meta_models(_key(unet_config), _key(vae_config))
        encode, full, cached, vae_encode, vae_decode = _counts(unet, vae, text_tokens, frames, height, width, guided,
                                                               windows, cache)
    full_calls = math.ceil(unet_calls / (cache.cache_interval if cache is not None else 1))
    return encode + full_calls * full + (unet_calls - full_calls) * cached + vae_encode + frames * vae_decode


@functools.lru_cache(maxsize=64)
def _counts(unet, vae, text_tokens, frames, height, width, guided, windows, cache) -> tuple[int, ...]:
    """unet_flops's three counts, then the VAE's encode of one image and decode of one frame."""
    scale, meta = 2 ** (len(vae.config.block_out_channels) - 1), torch.device("meta")
    image = torch.empty(1, vae.config.in_channels, height, width, device=meta)
    latent = torch.empty(1, vae.config.latent_channels, height // scale, width // scale, device=meta)
    return (*unet_flops(unet, 2 if guided else 1, text_tokens, frames, height // scale, width // scale, windows, cache),
            _count(lambda: vae.encode(image)), _count(lambda: vae.decode(latent)))


@functools.lru_cache(maxsize=8)
def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, budget: float = 0.5) -> float:
    """The device's throughput on square matmuls in `dtype` (4096 wide on CUDA; else 1024, or 256 in half precision,
    which CPUs without half-precision units compute at about 1 GFLOP/s), measured now: the best of up to 10 after a
    warm-up, within about `budget` seconds. The UNet's mix of convolutions, attention and elementwise work runs
    slower than this, so FLOPs / this is a lower bound on the time."""
    size = 4096 if device.type == "cuda" else 1024 if dtype.itemsize >= 4 else 256
    a = torch.randn(size, size, device=device).to(dtype)
    best, start = math.inf, time.perf_counter()
    for attempt in range(11):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:  # the first call warms the kernels up
            best = min(best, time.perf_counter() - begin)
            if time.perf_counter() - start > budget:
                break
    return 2 * size**3 / max(best, 1e-9)
