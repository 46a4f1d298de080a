"""Command line: `i2vgen generate --image IMG --prompt TEXT [--out video.gif|video.mp4] ...`.

Without --model it runs the tiny demo model embedded in a source checkout (weights/tiny-demo: trained here
on synthetic 64x64 clips of a coloured shape moving left, right, up or down), so it works on any CPU in
seconds. Every argument is checked before the model loads, and so are the time and memory the video will take at
least (estimate.py: printed, and a video over an hour or over the free memory refused unless --force). Errors are
one line on stderr and a non-zero exit; an interrupted run (Ctrl-C or SIGTERM) leaves no partial video.

The parsed options become a `VideoRequest` and `ModelOptions` (render.py), rendered as the web app and job files
render theirs; `i2vgen app`, `i2vgen eval` and `--jobs` are dispatched to web.py, evaluate.py and jobs.py.
"""

import argparse
import dataclasses
import random
import signal
import sys
import time
from pathlib import Path

from i2vgen.apps.estimate import ModelShape, check_estimate, check_request, estimate
from i2vgen.apps.render import (DTYPES, ModelOptions, UsageError, VideoRequest, check_sampler, load_pipeline,
                                read_image, render, save_video)

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
                     help="pipe.enable_fast_sampling(): the few-step sampler at its step count (15) with caching "
                          "across steps (approximate; docs/sampling.md)")
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
                     help="generate even when the estimate says the video will take over an hour or not fit in "
                          "the free memory")
    add_free_noise_options(gen)
    add_batch_options(gen)
    # Listed here for `i2vgen --help`; its arguments belong to the training module (see main).
    commands.add_parser("train", add_help=False, help="train or fine-tune the UNet: i2vgen train --config FILE "
                                                      "(see docs/training.md and i2vgen train --help)")
    commands.add_parser("app", add_help=False, help="a local web page: upload an image, type a prompt, watch the "
                                                    "video (i2vgen app --help; needs pip install 'i2vgen[app]')")
    return parser


def add_free_noise_options(gen):
    """Long videos and prompts that change over time (docs/long_videos.md)."""
    long = gen.add_argument_group("long videos (FreeNoise; docs/long_videos.md)")
    long.add_argument("--prompt-at", action="append", default=[], metavar="FRAME:TEXT",
                      help="at FRAME, this prompt (--prompt is frame 0's); repeat for more, e.g. --prompt-at '8:a red circle moving left'")
    long.add_argument("--prompt-interpolation", default="linear",
                      help="between two given prompts: linear (a blend over the frames between them, default) or "
                           "hold (each prompt holds until the next one's frame)")
    long.add_argument("--free-noise", action="store_true",
                      help="for more frames than the model was trained on: temporal attention within windows of "
                           "--context-length frames, fused, and noise re-used across windows")
    long.add_argument("--context-length", type=int, default=16,
                      help="window in frames: the model's training length (default: 16; the tiny demo's is 8)")
    long.add_argument("--context-stride", type=int, default=4, help="frames between windows (default: 4)")
    long.add_argument("--weighting-scheme", default="pyramid",
                      help="how overlapping windows are fused: flat, pyramid (default) or delayed_reverse_sawtooth")
    long.add_argument("--noise-type", default="shuffle_context",
                      help="initial noise past the first window: shuffle_context (default), repeat_context or random")


def add_batch_options(gen):
    """Many videos, in one process or many under torchrun (apps/jobs.py, docs/distributed.md)."""
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


def model_options(args) -> ModelOptions:
    """The run-wide options of a parsed command line."""
    return ModelOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ModelOptions)})


def video_request(args) -> VideoRequest:
    """The video a parsed command line asks for (with --jobs: the jobs' defaults)."""
    return VideoRequest(**{f.name: getattr(args, f.name) for f in dataclasses.fields(VideoRequest)})


def generate(args) -> Path:
    options, request = model_options(args), video_request(args)
    request.check()
    options.check()
    check_sampler(options, request)
    image = read_image(request.image)
    seed = request.seed if request.seed is not None else random.randrange(2**31)
    if args.cfg_parallel:
        return generate_in_pairs(options, request, image, seed)
    check_request(request, ModelShape.of_folder(options), *options.placement())  # before the weights load
    start = time.perf_counter()
    pipe = load_pipeline(options)
    print(f"Sampler: {request.sampler()[0]}, {request.steps} steps{', cached' if request.fast else ''}",
          file=sys.stderr)
    frames = render(pipe, request, image, seed, verbose=True)
    save_video(frames, request)
    height, width = frames.shape[1:3]
    print(f"Wrote {request.out} ({len(frames)} frames, {width}x{height}, {request.fps} fps, seed {seed}) "
          f"in {time.perf_counter() - start:.1f} s")
    return request.out


def generate_in_pairs(options: ModelOptions, request: VideoRequest, image, seed: int) -> Path:
    """One video with CFG-parallel on two processes (torchrun --nproc-per-node 2 -m i2vgen generate ...);
    the first process of the pair writes it."""
    from i2vgen.distributed import cfg_pairs, process_group

    with process_group(options.device) as launch:
        if launch.world_size != 2:
            raise UsageError(f"--cfg-parallel for one video needs 2 processes, got {launch.world_size} "
                             "(for more, give a job file: --jobs FILE --out-dir DIR)")
        # Rank 0's estimate for both, so that the pair refuses or goes on together.
        found = launch.broadcast(estimate(request, ModelShape.of_folder(options), *options.placement(launch.device),
                                          processes=2) if launch.is_main else None)
        if launch.is_main:
            print(found.line(), file=sys.stderr)
        check_estimate(request, found)
        start = time.perf_counter()
        pipe = load_pipeline(options, launch.device, verbose=launch.is_main)
        pipe.set_progress_bar_config(disable=not launch.is_main)
        seed = launch.broadcast(seed)  # without --seed each process drew its own
        guided = request.guidance > 1
        if guided:
            pipe.enable_cfg_parallel(cfg_pairs(launch))
        elif launch.is_main:
            print(f"i2vgen: warning: --guidance {request.guidance} has no guidance to split; one process renders "
                  "the video", file=sys.stderr)
        if guided or launch.is_main:
            frames = render(pipe, request, image, seed, output_type="np" if launch.is_main else "latent",
                            verbose=launch.is_main)
        if launch.is_main:
            save_video(frames, request)
            print(f"Wrote {request.out} ({len(frames)} frames, seed {seed}, CFG-parallel on 2 processes) "
                  f"in {time.perf_counter() - start:.1f} s")
    return request.out


def generate_jobs(args, argv: list[str]) -> int:
    """--jobs FILE --out-dir DIR (jobs.py): the command line's video options are every job's defaults."""
    from i2vgen.apps.jobs import run_jobs

    if args.jobs is None or args.out_dir is None:
        raise UsageError("--jobs FILE and --out-dir DIR go together")
    if any(arg == "--out" or arg.startswith("--out=") for arg in argv):
        raise UsageError('with --jobs each job names its video: "out" in the job, relative to --out-dir')
    options = model_options(args)
    options.check()  # once for the run: a bad --device or --lora fails every job alike
    return run_jobs(args.jobs, args.out_dir, options, video_request(args), args.cfg_parallel)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from i2vgen.training.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["app"]:
        from i2vgen.apps.web import main as app_main

        return app_main(argv[1:])
    if argv[:1] == ["eval"]:
        from i2vgen.apps.evaluate import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.jobs is not None or args.out_dir is not None:
            return generate_jobs(args, argv)
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
