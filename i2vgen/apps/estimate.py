"""How long and how much memory a video will take, told before it starts, and a refusal for one that would not
finish in a sane time or not fit. The command line, job files and the web app check every request here, before any
weights load where they can.

- time: at least the video's FLOPs (pipelines/compute.py: counted on meta tensors from the model's configs and the
  request) over the device's matmul throughput, measured now; refused above MAX_SECONDS;
- memory: at least pipelines/memory.py's bound beyond the weights; refused above the device's free memory.
Both are lower bounds, so what is refused would take longer or need more; `force` (--force) goes on anyway.
Checked against measured wall times in README.md ("Command line"; scripts/check_estimate.py).
"""

import sys
from dataclasses import dataclass

from i2vgen.apps.render import ModelOptions, UsageError, VideoRequest, resolve_model

MAX_SECONDS = 3600  # longer than an hour, even at the device's peak throughput: refused without --force
CLI_NAMES = {key: f"--{key}" for key in ("height", "width", "frames", "steps")}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate reads of a model: its UNet and VAE configs and its text encoder's token count."""

    unet: object
    vae: object
    text_tokens: int

    @classmethod
    def of_folder(cls, options: ModelOptions) -> "ModelShape":
        """From the model folder's config files, before any weights load (a hub model is fetched first)."""
        from i2vgen.loading import local_folder, read_config
        from i2vgen.models.unet import I2VGenXLUNet
        from i2vgen.models.vae import AutoencoderKL

        folder = local_folder(resolve_model(options.model), options.variant)
        text = read_config(folder / "text_encoder").get("max_position_embeddings")
        unet = I2VGenXLUNet.config_class.from_dict(read_config(folder / "unet"), str(folder / "unet/config.json"))
        vae = AutoencoderKL.config_class.from_dict(read_config(folder / "vae"), str(folder / "vae/config.json"))
        return cls(unet, vae, text if isinstance(text, int) and text > 0 else 77)

    @classmethod
    def of_pipeline(cls, pipe) -> "ModelShape":
        return cls(pipe.unet.config, pipe.vae.config, pipe.text_encoder.config.max_position_embeddings)


@dataclass
class Estimate:
    """At least `seconds` (`flops` at `flops_per_second`) and `needed` bytes beyond the weights; `available` free."""

    height: int
    width: int
    flops: int
    flops_per_second: float
    seconds: float
    needed: int
    available: int
    device: object

    def line(self) -> str:
        return (f"Estimate: at least {duration(self.seconds)} ({_si(self.flops, 'FLOP')} at "
                f"{_si(self.flops_per_second, 'FLOP/s')} measured on {self.device}) and {_bytes(self.needed)} of "
                f"memory beyond the weights ({_bytes(self.available)} free)")


def estimate(request: VideoRequest, shape: ModelShape, device, dtype, processes: int = 1) -> Estimate:
    """The checked `request`'s estimate on `device` in `dtype`; `processes` 2: its guidance halves run on two
    processes (CFG-parallel)."""
    from i2vgen.models.frame_windows import FrameWindows
    from i2vgen.pipelines import compute, memory
    from i2vgen.pipelines.image_to_video import FAST_CACHE, default_size

    default_height, default_width = default_size(shape.unet, shape.vae)
    height, width = request.height or default_height, request.width or default_width
    guided = request.guidance > 1
    windows = (FrameWindows(request.context_length, request.context_stride, request.weighting_scheme)
               if request.free_noise else None)
    flops = compute.call_flops(shape.unet, shape.vae, shape.text_tokens, request.frames, height, width,
                               request.steps, guided, windows, FAST_CACHE if request.fast else None)
    speed = compute.matmul_flops_per_second(device, dtype)
    needed = memory.estimate_activation_bytes(shape.unet, shape.vae, dtype, 1, request.frames, height, width, guided,
                                              sequential_guidance=processes > 1)
    return Estimate(height, width, flops, speed, flops / speed / (processes if guided else 1), needed,
                    memory.available_bytes(device), device)


def check_estimate(request: VideoRequest, found: Estimate, names: dict = CLI_NAMES,
                   hint: str = ", or pass --force to run anyway") -> None:
    """UsageError, naming the request's size, frames and steps (by `names`), when `found` is over a limit."""
    if request.force:
        return
    values = {"height": found.height, "width": found.width, "frames": request.frames, "steps": request.steps}
    given = ", ".join(f"{names[key]} {values[key]}" for key in names)
    if found.seconds > MAX_SECONDS:
        raise UsageError(f"{given} would take at least {duration(found.seconds)} on {found.device} "
                         f"({_si(found.flops, 'FLOP')} at {_si(found.flops_per_second, 'FLOP/s')}), over the limit "
                         f"of {duration(MAX_SECONDS)}; lower them{hint}")
    if found.needed > found.available:
        raise UsageError(f"{given} need at least {_bytes(found.needed)} of memory beyond the weights and "
                         f"{found.device} has {_bytes(found.available)} free; lower {names['height']} and "
                         f"{names['width']} (memory grows with their product) or {names['frames']}{hint}")


def check_request(request: VideoRequest, shape: ModelShape, device, dtype, processes: int = 1,
                  verbose: bool = True) -> Estimate:
    """estimate + check_estimate; verbose: print the estimate's line to stderr first."""
    found = estimate(request, shape, device, dtype, processes)
    if verbose:
        print(found.line(), file=sys.stderr)
    check_estimate(request, found)
    return found


def duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}" if seconds < 1000 * size else f"{seconds / size:,.0f} {unit}"
    return f"{seconds:.2g} s"


def _si(value: float, unit: str) -> str:
    for prefix, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
