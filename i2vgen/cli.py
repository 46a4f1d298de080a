"""Command line: `i2vgen generate --image IMG --prompt TEXT [--out video.gif|video.mp4] ...`.

Without --model it runs the tiny demo model embedded in a source checkout (weights/tiny-demo: trained here
on synthetic 64x64 clips of a coloured shape moving left, right, up or down), so it works on any CPU in
seconds. Errors are one line on stderr and
a non-zero exit; an interrupted run leaves no partial video.
"""

import argparse
import random
import sys
import time
from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "tiny-demo"
DTYPES = ("float32", "float16", "bfloat16")
FORMATS = (".gif", ".mp4")


class UsageError(Exception):
    """Bad arguments found after parsing (exit status 2, like argparse's own)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vgen", description="I2VGen-XL image-to-video generation.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="make a video from an image and a prompt",
        description="Make a video from an image and a prompt. Defaults follow the reference pipeline.",
    )
    gen.add_argument("--image", required=True, help="input image file (its content becomes the first frame)")
    gen.add_argument("--prompt", required=True, help="what should happen in the video")
    gen.add_argument("--model", help="local diffusers-layout folder or hub id, e.g. ali-vilab/i2vgen-xl "
                                     "(default: the embedded tiny demo model, 64x64 synthetic shapes)")
    gen.add_argument("--variant", help='weights variant to load, e.g. "fp16" for the released fp16 files')
    gen.add_argument("--negative-prompt", help="what to steer away from (default: empty)")
    gen.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    gen.add_argument("--guidance", type=float, default=9.0, help="classifier-free guidance scale (default: 9.0)")
    gen.add_argument("--frames", type=int, default=16, help="number of frames (default: 16)")
    gen.add_argument("--fps", type=int, default=16, help="frames per second: a condition and the file's rate "
                                                         "(default: 16)")
    gen.add_argument("--height", type=int, help="frame height, a multiple of 8 (default: the model's; 704)")
    gen.add_argument("--width", type=int, help="frame width, a multiple of 8 (default: the model's; 1280)")
    gen.add_argument("--seed", type=int, help="random seed (default: a random one, printed)")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 is deterministic (default: 0)")
    gen.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: float16 on CUDA, else float32)")
    gen.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--out", type=Path, default=Path("video.gif"), help="output .gif or .mp4 (default: video.gif)")
    # Listed here for `i2vgen --help`; its arguments belong to the training module (see main).
    commands.add_parser("train", add_help=False, help="train or fine-tune the UNet: i2vgen train --config FILE "
                                                      "(see docs/training.md and i2vgen train --help)")
    commands.add_parser("app", add_help=False, help="a local web page: upload an image, type a prompt, watch the "
                                                    "video (i2vgen app --help; needs pip install 'i2vgen[app]')")
    return parser


def check_args(args):
    """Everything that can be checked before the (slow) model load."""
    for name in ("steps", "frames", "fps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (value < 8 or value % 8):
            raise UsageError(f"--{name} must be a positive multiple of 8, got {value}")
    if args.out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out must end in .gif or .mp4, got {args.out.name}")
    if not args.out.parent.is_dir():
        raise UsageError(f"output folder does not exist: {args.out.parent}")
    if args.out.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise UsageError("writing .mp4 needs imageio-ffmpeg: pip install 'i2vgen[mp4]', "
                             "or use --out video.gif") from None


def read_image(path: str):
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
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


def generate(args) -> Path:
    check_args(args)
    image = read_image(args.image)
    model = resolve_model(args.model)

    import torch
    import transformers

    from i2vgen.pipeline import I2VGenXLPipeline
    from i2vgen.video import export_to_gif, export_to_video

    transformers.utils.logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f"Model: {model}", file=sys.stderr)
    if args.model is None:
        print("  NOTE: the embedded tiny demo knows only 64x64 synthetic shapes (\"a red circle moving right\"); "
              "for real videos pass --model ali-vilab/i2vgen-xl (see weights/README.md).", file=sys.stderr)

    start = time.perf_counter()
    pipe = I2VGenXLPipeline.from_pretrained(model, torch_dtype=dtype, variant=args.variant).to(device)
    frames = pipe(
        prompt=args.prompt, image=image, height=args.height, width=args.width, target_fps=args.fps,
        num_frames=args.frames,
        num_inference_steps=args.steps, guidance_scale=args.guidance, negative_prompt=args.negative_prompt,
        eta=args.eta, generator=torch.manual_seed(seed), output_type="np",
    ).frames[0]
    export = export_to_video if args.out.suffix.lower() == ".mp4" else export_to_gif
    export(frames, args.out, fps=args.fps)
    height, width = frames.shape[1:3]
    print(f"Wrote {args.out} ({len(frames)} frames, {width}x{height}, {args.fps} fps, seed {seed}) "
          f"in {time.perf_counter() - start:.1f} s")
    return args.out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from i2vgen.training.train import main as train_main

        train_main(argv[1:])
        return 0
    if argv[:1] == ["app"]:
        from .app import main as app_main

        return app_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        generate(args)
    except UsageError as error:
        print(f"i2vgen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("i2vgen: interrupted; no video written", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as error:
        print(f"i2vgen: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
