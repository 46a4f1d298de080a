"""Checks on what a user hands in, shared by the CLI and the pipeline.

Each check raises one ValueError (or TypeError) whose message names the argument, as the caller spells it
("--eta" on the command line, "eta" in Python), and says what is allowed. The memory estimate lets the CLI
refuse a video that cannot fit before it spends minutes computing it.
"""

import inspect
import math
import numbers
import os

import torch

from i2vgen.preprocess import OUTPUT_TYPES


# ---- values ----

def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """An integer (not a bool or a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_real(name: str, value, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        allowed = ("a finite number" if (low, high) == (-math.inf, math.inf) else
                   f"a number between {low:g} and {high:g}")
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_text(name: str, value) -> str:
    """A string that is valid Unicode text (a command line in another encoding gives lone surrogates)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8 text") from None
    return value


# ---- devices ----

def check_device(name) -> torch.device:
    """A device that exists on this machine and can hold data: cpu, or an available accelerator (cuda,
    cuda:N, mps, xpu, ...); not meta, which holds shapes only."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "meta":
        raise ValueError("device 'meta' holds no data, so no video can be computed on it; use cpu or cuda")
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"device {str(device)!r} is not available on this machine (torch.{device.type} reports "
                         f"none); use cpu")
    count = backend.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {count} {device.type} "
                         f"device(s), {device.type}:0 to {device.type}:{count - 1}")
    return device


# ---- memory ----

def estimate_activation_bytes(unet_config, vae_config, dtype: torch.dtype, videos: int, num_frames: int,
                              height: int, width: int, guided: bool, sequential_guidance: bool = False) -> int:
    """A lower bound on the memory one call needs beyond the loaded weights, in bytes.

    Counted: the UNet's skip connections, all live at the start of its up path ((layers_per_block + 1)
    feature maps per level, of block_out_channels[l] channels at 1/2**l of the latent size, for the whole
    guidance batch of videos x frames x 2), plus two maps of the widest full-resolution up-path input; and,
    after the UNet, the decoded video in float32 twice (the decoded frames and their [0, 1] copy) plus three
    full-resolution maps of the VAE decoder's widest top level for one frame. Not counted: attention,
    normalisation temporaries, the text and image encoders. Measured peaks are higher (README, "Bad input"),
    so a call this refuses cannot fit."""
    item = torch.empty((), dtype=dtype).element_size()
    channels, per_level = unet_config.block_out_channels, unet_config.layers_per_block + 1
    batch = videos * num_frames * (2 if guided and not sequential_guidance else 1)
    scale = 2 ** (len(vae_config.block_out_channels) - 1)
    pixels = (height // scale) * (width // scale)
    skips = sum(per_level * c * pixels // 4**level for level, c in enumerate(channels))
    widest_up_input = channels[0] + channels[min(1, len(channels) - 1)]
    unet = batch * (skips + 2 * widest_up_input * pixels) * item
    decoder_top = max(vae_config.block_out_channels[:2])
    decode = 2 * videos * num_frames * 3 * height * width * 4 + 3 * decoder_top * height * width * item
    return max(unet, decode)


def available_bytes(device: torch.device) -> int:
    """Memory free on `device` now: the driver's free figure for CUDA, MemAvailable (Linux) or the physical
    memory for the CPU. Other devices: unknown (returns a very large number, so nothing is refused)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return 2**63
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed: int, available: int, device: torch.device, hint: str) -> None:
    """Refuse, with both figures and how to lower the need, a call that needs more than is available."""
    if needed > available:
        gib = 2**30
        raise MemoryError(f"this video needs at least {needed / gib:.1f} GiB of memory beyond the model's weights "
                          f"and {device} has {available / gib:.1f} GiB free; {hint}")


# ---- the pipeline call (I2VGenXLPipeline.__call__ step 1, and before decoding) ----

def batch_size(num_prompts: int, num_images: int, num_videos_per_prompt: int, generator) -> int:
    """B = P x num_videos_per_prompt, once the images and generators are checked against it."""
    batch = num_prompts * num_videos_per_prompt
    if num_images not in (1, num_prompts):
        raise ValueError(f"got {num_images} images for {num_prompts} prompts: pass one image or one per prompt")
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for {batch} videos: pass one, or one per video")
    return batch


def check_call(scheduler, prompt, image, height, width, num_frames, num_inference_steps, negative_prompt,
               prompt_embeds, negative_prompt_embeds, output_type, eta):
    """The pipeline call's arguments that need no model: sizes, counts, texts and their pairing, output type."""
    for name, value in (("height", height), ("width", width)):
        if check_int(name, value, 8) % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height} and {width}")
    check_int("num_frames", num_frames, 1)
    check_int("num_inference_steps", num_inference_steps, 1)
    if image is None:
        raise ValueError("image is required: the first frame of the video is generated from it")
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("pass exactly one of prompt and prompt_embeds")
    for name, texts in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if texts is None:
            continue
        if not (isinstance(texts, str) or (isinstance(texts, list) and texts)):
            raise TypeError(f"{name} must be a string or a non-empty list of strings, got {texts!r}")
        for text in [texts] if isinstance(texts, str) else texts:
            check_text(f"{name} entries" if isinstance(texts, list) else name, text)
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
    if (prompt_embeds is not None and negative_prompt_embeds is not None
            and prompt_embeds.shape != negative_prompt_embeds.shape):
        raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                         f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if eta and "eta" not in inspect.signature(scheduler.step).parameters:
        raise ValueError(f"eta applies only to DDIMScheduler; {type(scheduler).__name__} has no eta "
                         "(a stochastic sampler: DPMSolverMultistepScheduler, algorithm_type='sde-dpmsolver++')")


def check_call_numbers(text_encoder_layers: int, target_fps, guidance_scale, eta, num_videos_per_prompt,
                       decode_chunk_size, clip_skip):
    check_int("target_fps", target_fps, 1, 1000)
    check_real("guidance_scale", guidance_scale)
    check_real("eta", eta, 0.0, 1.0)
    check_int("num_videos_per_prompt", num_videos_per_prompt, 1)
    if decode_chunk_size is not None:
        check_int("decode_chunk_size", decode_chunk_size, 1)
    if clip_skip is not None:  # clip_skip = number of layers: the embeddings, before any layer
        check_int("clip_skip", clip_skip, 0, text_encoder_layers)


def check_finite_latents(latents: torch.Tensor) -> None:
    """Decoding NaN or infinite latents gives a black video; stop with the likely causes instead."""
    if not torch.isfinite(latents).all():
        raise FloatingPointError("the denoised latents hold NaN or infinite values, so no video was decoded; "
                                 "likely causes: non-finite model weights or inputs, or float16 overflow (try "
                                 "float32)")
