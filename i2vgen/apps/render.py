"""One video as the applications ask for it: the request, the pipeline load, the memory check, the render and
the file. The command line (cli.py), the web app (web.py) and job files (jobs.py) all go through here, so a
video's options mean the same thing in each, and a seed gives the same video in each.

- `ModelOptions`: what is set once per run (model, variant, dtype, device, LoRAs) -> `load_pipeline`;
- `VideoRequest`: one video (image, prompt, size, frames, sampler, seed, output file...) -> `check`, `render`,
  `save_video`.
Field names are `i2vgen generate`'s long options without the dashes; errors name the option ("--steps").
"""

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parents[2] / "weights" / "tiny-demo"
DTYPES = ("float32", "float16", "bfloat16")
FORMATS = (".gif", ".mp4")
MAX_FPS = 1000  # a GIF stores each frame's duration in whole milliseconds (1000 // fps)
DEFAULT_STEPS = 50  # the reference pipeline's


class UsageError(Exception):
    """A bad option, found before any model work (the command line exits with status 2, like argparse)."""


@dataclass
class ModelOptions:
    """The run-wide options: which model, in which dtype, on which device, with which LoRA adapters."""

    model: str | None = None  # a diffusers-layout folder or hub id; None: the embedded tiny demo
    variant: str | None = None  # weights variant, e.g. "fp16"
    dtype: str | None = None  # one of DTYPES; None: float16 on CUDA, else float32
    device: str | None = None  # None: cuda if available, else cpu
    lora: list[str] = field(default_factory=list)  # PATH[:SCALE] each

    def placement(self, device=None) -> tuple:
        """(torch device, weights dtype): `device`, else --device, else cuda if available, else cpu; --dtype, else
        float16 on CUDA, else float32."""
        import torch

        device = torch.device(device or self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return device, getattr(torch, self.dtype or ("float16" if device.type == "cuda" else "float32"))

    def check(self):
        from i2vgen.checks import check_device

        for spec in self.lora:
            parse_lora(spec)
        if self.device is not None:
            try:
                check_device(self.device)
            except ValueError as error:
                raise UsageError(f"--device: {error}") from None


@dataclass
class VideoRequest:
    """One video. None for height/width: the model's size; steps None: 50, or the fast sampler's own count."""

    image: str | None = None  # the first frame's file
    prompt: str | None = None
    out: Path = Path("video.gif")  # .gif or .mp4
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    frames: int = 16
    fps: int = 16  # a condition of the model and the file's frame rate
    steps: int | None = None
    guidance: float = 9.0
    scheduler: str = "ddim"  # NAME[:KEY=VALUE,...], see parse_scheduler
    fast: bool = False  # pipe.enable_fast_sampling(): the few-step sampler at its step count, with caching
    seed: int | None = None  # None: the caller draws one
    eta: float = 0.0  # DDIM only
    force: bool = False  # render even when the estimate says it will not finish in time or fit (apps/estimate.py)
    prompt_at: list[str] = field(default_factory=list)  # FRAME:TEXT each: the prompt from that frame on
    prompt_interpolation: str = "linear"  # between two given prompts: "linear" blend or "hold" (a cut)
    free_noise: bool = False  # long videos: windowed temporal attention, rescheduled noise (FreeNoise)
    context_length: int = 16  # its window, in frames: the model's training length (the tiny demo's: 8)
    context_stride: int = 4
    weighting_scheme: str = "pyramid"
    noise_type: str = "shuffle_context"

    def sampler(self) -> tuple[str, dict, int]:
        """(scheduler name, its options, steps) that fast, scheduler and steps ask for."""
        from i2vgen.schedulers.fast import FAST_STEPS

        if self.fast and self.scheduler != "ddim":
            raise UsageError("--fast picks its own sampler: leave out --scheduler")
        name, options = parse_scheduler("fast" if self.fast else self.scheduler)
        steps = self.steps if self.steps is not None else FAST_STEPS if self.fast else DEFAULT_STEPS
        return name, options, steps

    def check(self):
        """Everything that can be checked before the (slow) model load: values and the output path; fills in
        the step count."""
        name, _, self.steps = self.sampler()
        if self.eta and name != "ddim":
            raise UsageError(f"--eta applies only to the ddim scheduler, not {name}")
        for option in ("image", "prompt"):
            if getattr(self, option) is None:
                raise UsageError(f"--{option} is required")
        self._check_numbers()
        self.prompt_schedule()
        self.check_long_video()
        for option in ("height", "width"):
            value = getattr(self, option)
            if value is not None and (value < 8 or value % 8):
                raise UsageError(f"--{option} must be a positive multiple of 8, got {value}")
        self._check_out()

    def _check_numbers(self):
        from i2vgen.checks import check_int, check_real, check_text

        try:
            for option in ("steps", "frames"):
                check_int(f"--{option}", getattr(self, option), 1)
            check_int("--fps", self.fps, 1, MAX_FPS)
            check_real("--guidance", self.guidance)
            check_real("--eta", self.eta, 0.0, 1.0)
            if self.seed is not None:
                check_int("--seed", self.seed, 0, 2**64 - 1)
            check_text("--prompt", self.prompt)
            if self.negative_prompt is not None:
                check_text("--negative-prompt", self.negative_prompt)
        except (TypeError, ValueError) as error:
            raise UsageError(str(error)) from None

    def prompt_schedule(self) -> str | dict[int, str]:
        """The pipeline's prompt: --prompt, or with --prompt-at a {frame: prompt} dict starting with it."""
        from i2vgen.checks import check_text

        schedule = {0: self.prompt}
        for spec in self.prompt_at:
            frame, colon, text = str(spec).partition(":")
            if not (colon and frame.strip().isdigit() and 1 <= int(frame) < self.frames):
                raise UsageError(f"--prompt-at must be FRAME:TEXT with FRAME from 1 to {self.frames - 1} (frame 0 "
                                 f"is --prompt's), got {spec!r}")
            if int(frame) in schedule:
                raise UsageError(f"--prompt-at gives frame {int(frame)} twice")
            schedule[int(frame)] = check_text("--prompt-at", text).strip()
        return self.prompt if len(schedule) == 1 else schedule

    def check_long_video(self):
        """The prompt interpolation and FreeNoise options, one UsageError naming the option."""
        from i2vgen.models.frame_windows import FrameWindows
        from i2vgen.pipelines.free_noise import NOISE_TYPES
        from i2vgen.pipelines.prompt_schedule import INTERPOLATIONS

        if self.prompt_interpolation not in INTERPOLATIONS:
            raise UsageError(f"--prompt-interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                             f"{self.prompt_interpolation!r}")
        if self.noise_type not in NOISE_TYPES:
            raise UsageError(f"--noise-type must be one of {', '.join(NOISE_TYPES)}, got {self.noise_type!r}")
        try:
            FrameWindows(self.context_length, self.context_stride, self.weighting_scheme)
        except ValueError as error:  # the message starts with the field's name
            name, _, rest = str(error).partition(" ")
            raise UsageError(f"--{name.replace('_', '-')} {rest}") from None

    def apply_free_noise(self, pipe):
        """Switch FreeNoise on with the request's options, or off (a pipeline serves many requests); the prompt
        interpolation applies either way."""
        from i2vgen.pipelines.prompt_schedule import INTERPOLATIONS

        pipe.disable_free_noise()
        if self.free_noise:
            pipe.enable_free_noise(self.context_length, self.context_stride, self.weighting_scheme, self.noise_type)
        pipe.set_prompt_interpolation(INTERPOLATIONS[self.prompt_interpolation])

    def _check_out(self):
        from i2vgen.video import check_output_path

        if self.out.suffix.lower() not in FORMATS:
            raise UsageError(f"--out must end in .gif or .mp4, got {self.out.name}")
        if self.out.suffix.lower() == ".mp4":
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                raise UsageError("writing .mp4 needs imageio-ffmpeg: pip install 'i2vgen[mp4]', "
                                 "or use --out video.gif") from None
        try:
            check_output_path(self.out)
        except OSError as error:
            raise UsageError(f"--out: {error}") from None


def parse_scheduler(text: str) -> tuple[str, dict]:
    """"unipc:solver_order=3,timestep_spacing=linspace" -> ("unipc", {"solver_order": 3, ...}); values are read
    as JSON (numbers, true/false, null) or else taken as strings."""
    from i2vgen.schedulers import NAMED

    name, _, rest = text.partition(":")
    if name not in NAMED:
        raise UsageError(f"--scheduler: unknown name {name!r}; choose one of {', '.join(NAMED)}")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--scheduler: option {item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    fields = {f.name for f in dataclasses.fields(NAMED[name][0].config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"--scheduler: {name} has no option {unknown[0]!r}; "
                         f"its options are {', '.join(sorted(fields))}")
    return name, options


def parse_lora(spec: str) -> tuple[Path, float]:
    """--lora PATH[:SCALE] -> (path, scale); the path must exist (one whose own name holds a colon is taken
    whole) and the scale be a finite number."""
    path, colon, scale = spec.rpartition(":")
    if not colon or Path(spec).exists():
        path, scale = spec, "1.0"
    if not Path(path).exists():
        raise UsageError(f"--lora: {path} does not exist (give a LoRA .safetensors file or its folder, then "
                         f"optionally :SCALE)")
    try:
        value = float(scale)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"--lora: the scale after {path}: must be a finite number, got {scale!r}")
    return Path(path), value


def read_image(path: str):
    """The image as the pipeline will use it (upright, 8-bit RGB: preprocess.normalize_image)."""
    import PIL.Image

    from i2vgen.preprocess import normalize_image

    if Path(path).exists() and not Path(path).is_file():  # a folder, or a FIFO whose reading would wait forever
        raise UsageError(f"--image: {path} is not a regular file; give an image file")
    try:
        with PIL.Image.open(path) as image:
            return normalize_image(image)
    except FileNotFoundError:
        raise UsageError(f"image not found: {path}") from None
    except (OSError, PIL.Image.DecompressionBombError) as error:
        raise UsageError(f"cannot read image {path}: {error}") from None


def resolve_model(model: str | None) -> str:
    if model is not None:
        return model
    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        raise UsageError(f"the embedded default model is only in a source checkout ({EMBEDDED_MODEL} is missing); "
                         "pass --model")
    return str(EMBEDDED_MODEL)


def load_pipeline(options: ModelOptions, device=None, verbose: bool = True):
    """The pipeline the run-wide options ask for (`device` overrides theirs: a process's own under torchrun)."""
    model = resolve_model(options.model)

    import transformers

    from i2vgen.compat.pipeline import I2VGenXLPipeline

    transformers.utils.logging.disable_progress_bar()
    device, dtype = options.placement(device)
    if verbose:
        print(f"Model: {model}", file=sys.stderr)
        if options.model is None:
            print("  NOTE: the embedded tiny demo knows only 64x64 synthetic shapes (\"a red circle moving "
                  "right\"); for real videos pass --model ali-vilab/i2vgen-xl (see weights/README.md).",
                  file=sys.stderr)
    pipe = I2VGenXLPipeline.from_pretrained(model, torch_dtype=dtype, variant=options.variant).to(device)
    loras = [parse_lora(spec) for spec in options.lora]
    if loras:
        names = [pipe.load_lora_weights(path) for path, _ in loras]
        pipe.set_adapters(names, [scale for _, scale in loras])
    return pipe


def build_sampler(released, request: VideoRequest):
    """(the sampler the request asks for, built from the model's own scheduler; its step count), with its
    timesteps placed once, so that a bad --scheduler option or --steps is named as the command line spells it."""
    from i2vgen.schedulers import by_name

    name, options, steps = request.sampler()
    try:
        scheduler = by_name(name, released.config, **options)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--scheduler {name}: {error}") from None
    try:
        scheduler.set_timesteps(steps)
    except ValueError as error:
        raise UsageError(str(error).replace('num_inference_steps=', '--steps ')) from None
    return scheduler, steps


def check_sampler(options: ModelOptions, request: VideoRequest) -> None:
    """build_sampler before any weights load, when the model is a local folder (a hub model is checked once
    fetched)."""
    from i2vgen.schedulers import load_scheduler

    folder = Path(resolve_model(options.model)) / "scheduler"
    if folder.is_dir():
        build_sampler(load_scheduler(folder), request)


def render(pipe, request: VideoRequest, image, seed: int, output_type: str = "np", callback_on_step_end=None,
           verbose: bool = False, notify=None):
    """One video's frames (F, H, W, 3). The seed seeds torch's global RNG too (the first frame's latent is drawn
    from it), so the frames depend on the request and the seed alone. callback_on_step_end goes to the pipeline
    (the web app's progress bar and Stop button). The pipeline's warnings (a prompt truncated to CLIP's length)
    go to `notify` (one line each), else with `verbose` to stderr as one "i2vgen: note:" line each."""
    import warnings

    if notify is None and verbose:
        notify = lambda note: print(f"i2vgen: note: {note}", file=sys.stderr)  # noqa: E731
    with warnings.catch_warnings(record=notify is not None) as caught:
        frames = _render(pipe, request, image, seed, output_type, callback_on_step_end)
    for warning in caught or []:
        notify(str(warning.message))
    return frames


def _render(pipe, request: VideoRequest, image, seed: int, output_type, callback_on_step_end):
    import torch

    height, width = request.height or pipe.default_size[0], request.width or pipe.default_size[1]
    released = pipe.scheduler  # the model's own; each video builds its sampler from its config
    pipe.scheduler, steps = build_sampler(released, request)
    if request.fast:
        pipe.enable_fast_sampling()  # the same fast sampler, and caching across steps
    request.apply_free_noise(pipe)
    try:
        return pipe(
            prompt=request.prompt_schedule(), image=image, height=height, width=width, target_fps=request.fps,
            num_frames=request.frames, num_inference_steps=steps, guidance_scale=request.guidance,
            negative_prompt=request.negative_prompt, eta=request.eta, generator=torch.manual_seed(seed),
            output_type=output_type, callback_on_step_end=callback_on_step_end,
        ).frames[0]
    finally:
        pipe.disable_fast_sampling()
        pipe.scheduler = released


def save_video(frames, request: VideoRequest):
    """Write the frames to request.out (GIF or MP4 by its suffix) at request.fps, through a temporary file."""
    from i2vgen.video import export_to_gif, export_to_video

    export = export_to_video if request.out.suffix.lower() == ".mp4" else export_to_gif
    export(frames, request.out, fps=request.fps)
