"""Command line: `i2vgen generate --image IMG --prompt TEXT [--out video.gif|video.mp4] ...`.

Without --model it runs the tiny demo model embedded in a source checkout (weights/tiny-demo: trained here
on synthetic 64x64 clips of a coloured shape moving left, right, up or down), so it works on any CPU in
seconds. Every argument is checked before the model loads, and the memory the video needs is estimated
before generation starts. Errors are one line on stderr and a non-zero exit; an interrupted run (Ctrl-C or
SIGTERM) leaves no partial video.
"""

import argparse
import dataclasses
import json
import random
import signal
import sys
import time
from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "tiny-demo"
DTYPES = ("float32", "float16", "bfloat16")
FORMATS = (".gif", ".mp4")
MAX_FPS = 1000  # a GIF stores each frame's duration in whole milliseconds (1000 // fps)


class UsageError(Exception):
    """Bad arguments found after parsing (exit status 2, like argparse's own)."""


def build_parser(parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = parser_class(prog="i2vgen", description="I2VGen-XL image-to-video generation.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="make a video from an image and a prompt",
        description="Make a video from an image and a prompt. Defaults follow the reference pipeline.",
    )
    gen.add_argument("--image", help="input image file (its content becomes the first frame); required")
    gen.add_argument("--prompt", help="what should happen in the video; required")
    gen.add_argument("--model", help="local diffusers-layout folder or hub id, e.g. ali-vilab/i2vgen-xl "
                                     "(default: the embedded tiny demo model, 64x64 synthetic shapes)")
    gen.add_argument("--variant", help='weights variant to load, e.g. "fp16" for the released fp16 files')
    gen.add_argument("--negative-prompt", help="what to steer away from (default: empty)")
    gen.add_argument("--steps", type=int, help="sampling steps (default: 50; with --fast, its recommended 15)")
    gen.add_argument("--scheduler", default="ddim", metavar="NAME[:KEY=VALUE,...]",
                     help="sampler: ddim (the model's own, default), unipc, dpm++, sde-dpm++, euler (these with "
                          "trailing spacing) or fast; optional config options, e.g. unipc:solver_order=3")
    gen.add_argument("--fast", action="store_true",
                     help="the recommended few-step sampler at its step count (same as --scheduler fast --steps 15)")
    gen.add_argument("--guidance", type=float, default=9.0, help="classifier-free guidance scale (default: 9.0)")
    gen.add_argument("--frames", type=int, default=16, help="number of frames (default: 16)")
    gen.add_argument("--fps", type=int, default=16, help="frames per second: a condition and the file's rate "
                                                         "(default: 16)")
    gen.add_argument("--height", type=int, help="frame height, a multiple of 8 (default: the model's; 704)")
    gen.add_argument("--width", type=int, help="frame width, a multiple of 8 (default: the model's; 1280)")
    gen.add_argument("--seed", type=int, help="random seed (default: a random one, printed)")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 is deterministic (default: 0; "
                                                             "ddim only)")
    gen.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: float16 on CUDA, else float32)")
    gen.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--out", type=Path, default=Path("video.gif"), help="output .gif or .mp4 (default: video.gif)")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                     help="load a UNet LoRA (pytorch_lora_weights.safetensors or its folder) at SCALE (default 1.0); "
                          "repeat for several (needs peft: pip install 'i2vgen[lora]')")
    gen.add_argument("--force", action="store_true",
                     help="generate even when the memory estimate says the video will not fit")
    add_batch_options(gen)
    # Listed here for `i2vgen --help`; its arguments belong to the training module (see main).
    commands.add_parser("train", add_help=False, help="train or fine-tune the UNet: i2vgen train --config FILE "
                                                      "(see docs/training.md and i2vgen train --help)")
    commands.add_parser("app", add_help=False, help="a local web page: upload an image, type a prompt, watch the "
                                                    "video (i2vgen app --help; needs pip install 'i2vgen[app]')")
    return parser


def add_batch_options(gen):
    """Many videos, in one process or many under torchrun (i2vgen/jobs.py, docs/distributed.md)."""
    batch = gen.add_argument_group("many videos (python -m i2vgen under torchrun runs them on N processes)")
    batch.add_argument("--jobs", type=Path, help="a JSON-lines file, one video a line: its keys are the options "
                                                 "above without dashes, e.g. {\"image\": \"a.png\", \"prompt\": "
                                                 "\"...\", \"seed\": 3, \"out\": \"a.gif\"}; the command line "
                                                 "gives the defaults. Needs --out-dir")
    batch.add_argument("--out-dir", type=Path, help="folder of the jobs' videos (their \"out\" is relative to it); "
                                                    "videos already there are skipped, so a rerun resumes")
    batch.add_argument("--cfg-parallel", action="store_true",
                       help="run the two halves of classifier-free guidance on a pair of processes (an even "
                            "number of them): each video sooner")


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


def sampler_of(args) -> tuple[str, dict, int]:
    """(scheduler name, its options, steps) that --fast, --scheduler and --steps ask for (options made without
    the parser, as the web app's, may leave out the first two: the model's own DDIM)."""
    from i2vgen.schedulers.fast import FAST_STEPS

    fast, scheduler = getattr(args, "fast", False), getattr(args, "scheduler", "ddim")
    if fast and scheduler != "ddim":
        raise UsageError("--fast picks its own sampler: leave out --scheduler")
    name, options = parse_scheduler("fast" if fast else scheduler)
    steps = args.steps if args.steps is not None else FAST_STEPS if fast else 50
    return name, options, steps


def check_args(args):
    """Everything that can be checked before the (slow) model load: values, the output path, the device; fills in
    the default step count."""
    from i2vgen.checks import check_device, check_int, check_real, check_text
    from i2vgen.video import check_output_path

    name, _, args.steps = sampler_of(args)
    if args.eta and name != "ddim":
        raise UsageError(f"--eta applies only to the ddim scheduler, not {name}")
    for name in ("image", "prompt"):
        if getattr(args, name) is None:
            raise UsageError(f"--{name} is required")
    try:
        for name in ("steps", "frames"):
            check_int(f"--{name}", getattr(args, name), 1)
        check_int("--fps", args.fps, 1, MAX_FPS)
        check_real("--guidance", args.guidance)
        check_real("--eta", args.eta, 0.0, 1.0)
        if args.seed is not None:
            check_int("--seed", args.seed, 0, 2**64 - 1)
        check_text("--prompt", args.prompt)
        if args.negative_prompt is not None:
            check_text("--negative-prompt", args.negative_prompt)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value < 8 or value % 8):
            raise UsageError(f"--{name} must be a positive multiple of 8, got {value}")
    if args.out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out must end in .gif or .mp4, got {args.out.name}")
    for spec in args.lora:
        parse_lora(spec)
    if args.out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UsageError("writing .mp4 needs imageio-ffmpeg: pip install 'i2vgen[mp4]', "
                             "or use --out video.gif") from None
    try:
        check_output_path(args.out)
    except OSError as error:
        raise UsageError(f"--out: {error}") from None
    if args.device is not None:
        try:
            check_device(args.device)
        except ValueError as error:
            raise UsageError(f"--device: {error}") from None


def parse_lora(spec: str) -> tuple[Path, float]:
    """--lora PATH[:SCALE] -> (path, scale); the path must exist."""
    path, _, scale = spec.rpartition(":")
    try:
        path, scale = (Path(path), float(scale)) if path else (Path(spec), 1.0)
    except ValueError:
        path, scale = Path(spec), 1.0
    if not path.exists():
        raise UsageError(f"--lora: {path} does not exist (give a LoRA .safetensors file or its folder, then "
                         f"optionally :SCALE)")
    return path, scale


def read_image(path: str):
    """The image as the pipeline will use it (upright, 8-bit RGB: preprocess.normalize_image)."""
    import PIL.Image

    from i2vgen.preprocess import normalize_image

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


def load_pipeline(args, device=None, verbose: bool = True):
    """The pipeline that the run-wide options (--model, --variant, --dtype, --device) ask for."""
    model = resolve_model(args.model)

    import torch
    import transformers

    from i2vgen.pipeline import I2VGenXLPipeline

    transformers.utils.logging.disable_progress_bar()
    device = str(device or args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    if verbose:
        print(f"Model: {model}", file=sys.stderr)
        if args.model is None:
            print("  NOTE: the embedded tiny demo knows only 64x64 synthetic shapes (\"a red circle moving "
                  "right\"); for real videos pass --model ali-vilab/i2vgen-xl (see weights/README.md).",
                  file=sys.stderr)
    pipe = I2VGenXLPipeline.from_pretrained(model, torch_dtype=dtype, variant=args.variant).to(device)
    loras = [parse_lora(spec) for spec in getattr(args, "lora", None) or []]
    if loras:
        names = [pipe.load_lora_weights(path) for path, _ in loras]
        pipe.set_adapters(names, [scale for _, scale in loras])
    return pipe


def render(pipe, args, image, seed: int, output_type: str = "np", callback_on_step_end=None,
           verbose: bool = False):
    """One video's frames (F, H, W, 3) from a video's options. The seed seeds torch's global RNG too (the
    first frame's latent is drawn from it), so the frames depend on the options and the seed alone.
    callback_on_step_end goes to the pipeline (the web app's progress bar and Stop button)."""
    import torch

    from i2vgen.schedulers import by_name

    height, width = args.height or pipe.default_size[0], args.width or pipe.default_size[1]
    check_memory(pipe, args, height, width, verbose)
    name, options, steps = sampler_of(args)
    released = pipe.scheduler  # the model's own; each video builds its sampler from its config
    pipe.scheduler = by_name(name, released.config, **options)
    try:
        return pipe(
            prompt=args.prompt, image=image, height=height, width=width, target_fps=args.fps,
            num_frames=args.frames,
            num_inference_steps=steps, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
            eta=args.eta, generator=torch.manual_seed(seed), output_type=output_type,
            callback_on_step_end=callback_on_step_end,
        ).frames[0]
    finally:
        pipe.scheduler = released


def check_memory(pipe, args, height: int, width: int, verbose: bool):
    """Refuse the video (unless --force) if the device has less memory free than it needs beyond the weights;
    verbose: print both figures."""
    from i2vgen import checks

    device = pipe.execution_device
    needed = checks.estimate_activation_bytes(pipe.unet.config, pipe.vae.config, pipe.dtype, 1, args.frames, height,
                                              width, guided=args.guidance > 1)
    available = checks.available_bytes(device)
    if verbose:
        amount = f"{needed / 2**30:.2f} GiB" if needed >= 2**30 else f"{needed / 2**20:.1f} MiB"  # tiny models
        print(f"Memory: at least {amount} beyond the weights; {available / 2**30:.1f} GiB free on {device}",
              file=sys.stderr)
    if not getattr(args, "force", False):  # the web app's options have no --force
        checks.check_memory(needed, available, device, "lower --height and --width (memory grows with their "
                            "product) or --frames, or pass --force to try anyway")


def save_video(frames, args):
    from i2vgen.video import export_to_gif, export_to_video

    export = export_to_video if args.out.suffix.lower() == ".mp4" else export_to_gif
    export(frames, args.out, fps=args.fps)


def generate(args) -> Path:
    check_args(args)
    image = read_image(args.image)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    if args.cfg_parallel:
        return generate_in_pairs(args, image, seed)
    start = time.perf_counter()
    pipe = load_pipeline(args)
    print(f"Sampler: {sampler_of(args)[0]}, {args.steps} steps", file=sys.stderr)
    frames = render(pipe, args, image, seed, verbose=True)
    save_video(frames, args)
    height, width = frames.shape[1:3]
    print(f"Wrote {args.out} ({len(frames)} frames, {width}x{height}, {args.fps} fps, seed {seed}) "
          f"in {time.perf_counter() - start:.1f} s")
    return args.out


def generate_in_pairs(args, image, seed: int) -> Path:
    """One video with CFG-parallel on two processes (torchrun --nproc-per-node 2 -m i2vgen generate ...);
    the first process of the pair writes it."""
    from i2vgen.distributed import cfg_pairs, process_group

    with process_group(args.device) as launch:
        if launch.world_size != 2:
            raise UsageError(f"--cfg-parallel for one video needs 2 processes, got {launch.world_size} "
                             "(for more, give a job file: --jobs FILE --out-dir DIR)")
        start = time.perf_counter()
        pipe = load_pipeline(args, launch.device, verbose=launch.is_main)
        pipe.set_progress_bar_config(disable=not launch.is_main)
        seed = launch.broadcast(seed)  # without --seed each process drew its own
        guided = args.guidance > 1
        if guided:
            pipe.enable_cfg_parallel(cfg_pairs(launch))
        elif launch.is_main:
            print(f"i2vgen: warning: --guidance {args.guidance} has no guidance to split; one process renders "
                  "the video", file=sys.stderr)
        if guided or launch.is_main:
            frames = render(pipe, args, image, seed, output_type="np" if launch.is_main else "latent",
                            verbose=launch.is_main)
        if launch.is_main:
            save_video(frames, args)
            print(f"Wrote {args.out} ({len(frames)} frames, seed {seed}, CFG-parallel on 2 processes) "
                  f"in {time.perf_counter() - start:.1f} s")
    return args.out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from i2vgen.training.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["app"]:
        from i2vgen.app import main as app_main

        return app_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.jobs is not None or args.out_dir is not None:
            from i2vgen.jobs import run_jobs

            return run_jobs(args, argv)
        from i2vgen.video import exit_on_sigterm

        with exit_on_sigterm():  # SIGTERM ends the run like Ctrl-C: through Python, removing temporary files
            generate(args)
    except UsageError as error:
        print(f"i2vgen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("i2vgen: interrupted; no video written", file=sys.stderr)
        return 130
    except SystemExit as exit:
        if exit.code != 128 + signal.SIGTERM:
            raise
        print("i2vgen: terminated; no video written", file=sys.stderr)
        return exit.code
    except (ValueError, TypeError, OSError, ImportError, RuntimeError, MemoryError, FloatingPointError) as error:
        print(f"i2vgen: error: {_one_line(error)}", file=sys.stderr)
        return 1
    return 0


def _one_line(error: BaseException) -> str:
    """The first line of an error's message (some libraries add pages of advice below it)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
