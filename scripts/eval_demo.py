"""Does the tiny demo model animate an image the way the prompt says? (issue 5's acceptance test)

    .venv/bin/python scripts/eval_demo.py [--model weights/tiny-demo] [--per-direction 25]
        [--grid docs/demo_grid.gif] [--training-log runs/tiny-demo/unet/log.jsonl --curve docs/training_curve.png]
    .venv/bin/python scripts/eval_demo.py --lora weights/tiny-demo-lora-diagonal --directions diagonal
        [--check-unload]       (issue 15: the diagonal-motion LoRA; also --directions axis with the LoRA loaded)

For first frames from the held-out split of the synthetic data (start positions and colours never used in
training, i2vgen/training/data.py), run I2VGenXLPipeline at 64x64, 8 frames, 25 DDIM steps, guidance 6.0 with
the caption "a <color> <shape> moving <direction>". A trial succeeds when
- the object's centroid moves at least 6 px the asked way from the first to the last frame,
  and more along that axis than across it (for a diagonal, "up-left" etc.: at least 6 px along the
  diagonal and at least 3 px on each axis in the asked sign), and
- the first frame matches the input image, PSNR >= 20 dB.
The object is found as the pixels that differ from the frame's background (its median colour) by more than
a quarter of the range in some channel.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from i2vgen import I2VGenXLPipeline
from i2vgen.evaluation.fidelity import psnr
from i2vgen.training.data import DIAGONALS, DIRECTIONS, MOTIONS, render_frame, sample_spec

MIN_DISPLACEMENT = 6.0  # pixels, first to last frame
MIN_AXIS_DISPLACEMENT = 3.0  # pixels on each axis, diagonals only
DIRECTION_SETS = {"axis": tuple(DIRECTIONS), "diagonal": tuple(DIAGONALS), "all": tuple(MOTIONS)}
MIN_PSNR = 20.0  # dB, first frame vs input


def object_mask(frame: np.ndarray) -> np.ndarray:
    """The pixels that stand out from the background (the frame's median colour) by a quarter of the range."""
    background = np.median(frame.reshape(-1, 3), axis=0)
    return np.abs(frame - background).max(axis=-1) > 0.25


def object_centroid(frame: np.ndarray) -> tuple[float, float] | None:
    """(x, y) centroid of the pixels that stand out from the background, or None if there are none."""
    mask = object_mask(frame)
    if mask.sum() < 3:
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def judge(video: np.ndarray, image: np.ndarray, direction: str) -> dict:
    """video (F, H, W, 3) and image (H, W, 3) in [0, 1] -> measurements and success."""
    first, last = object_centroid(video[0]), object_centroid(video[-1])
    result = {"psnr": psnr(video[0], image), "along": None, "across": None}
    asked = np.array(MOTIONS[direction], dtype=float)
    diagonal = direction in DIAGONALS
    if first is not None and last is not None:
        move = np.subtract(last, first)
        unit = asked / np.linalg.norm(asked)
        result["along"] = float(move @ unit)
        result["across"] = float(abs(move @ [-unit[1], unit[0]]))
        result["per_axis"] = [float(m) for m in move * asked]  # displacement in the asked sign, x and y
    if result["along"] is None:
        result["moved"] = False
    elif diagonal:
        result["moved"] = result["along"] >= MIN_DISPLACEMENT and min(result["per_axis"]) >= MIN_AXIS_DISPLACEMENT
    else:
        result["moved"] = result["along"] >= MIN_DISPLACEMENT and result["along"] > result["across"]
    result["success"] = result["moved"] and result["psnr"] >= MIN_PSNR
    return result


def generate(pipe, specs: list, seed: int) -> tuple[list, np.ndarray]:
    """The first frames of `specs` and the videos the pipeline makes from them and their captions, seeded."""
    images = [PIL.Image.fromarray(render_frame(s, 0)) for s in specs]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the pipeline samples the first frame's VAE posterior from the global RNG
    frames = pipe(prompt=[s.caption for s in specs], image=images, height=64, width=64, num_frames=8,
                  num_inference_steps=25, guidance_scale=6.0, generator=generator, output_type="np").frames
    return images, np.asarray(frames)


def evaluate(pipe, per_direction: int, seed: int, batch: int, directions=tuple(DIRECTIONS),
             split: str = "eval") -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, split, direction=d) for d in directions for _ in range(per_direction)]
    results, videos = [], []
    for start in range(0, len(specs), batch):
        chunk = specs[start : start + batch]
        images, frames = generate(pipe, chunk, seed + start)
        for spec, image, video in zip(chunk, images, frames):
            result = judge(video, np.asarray(image) / 255.0, spec.direction)
            results.append({"caption": spec.caption, "start": spec.start, "speed": spec.speed, **result})
            videos.append(video)
        done = len(results)
        print(f"{done}/{len(specs)} trials, success so far {np.mean([r['success'] for r in results]):.0%}",
              file=sys.stderr)
    return results, videos


def direction_of(result: dict) -> str:
    return result["caption"].split(" moving ")[1]


def summary(results: list) -> dict:
    by_direction = {d: [r for r in results if direction_of(r) == d] for d in MOTIONS}
    by_direction = {d: rs for d, rs in by_direction.items() if rs}
    rate = lambda rs, key: float(np.mean([r[key] for r in rs]))  # noqa: E731
    return {
        "trials": len(results),
        "success_rate": rate(results, "success"),
        "per_direction": {d: rate(rs, "success") for d, rs in by_direction.items()},
        "mean_displacement_per_direction": {d: float(np.mean([r["along"] or 0.0 for r in rs]))
                                            for d, rs in by_direction.items()},
        "moved_rate": rate(results, "moved"),
        "first_frame_psnr_mean": rate(results, "psnr"),
        "first_frame_psnr_min": float(min(r["psnr"] for r in results)),
        "first_frame_psnr_ok_rate": float(np.mean([r["psnr"] >= MIN_PSNR for r in results])),
        "mean_displacement_along": float(np.mean([r["along"] or 0.0 for r in results])),
    }


def write_grid(path: Path, results: list, videos: list, per_row: int = 4, scale: int = 2):
    """A GIF: one row per direction, `per_row` held-out examples each, the caption's direction at the left."""
    cell, label = 64 * scale, 72
    rows = {d: [i for i, r in enumerate(results) if direction_of(r) == d][:per_row] for d in MOTIONS}
    rows = {d: indices for d, indices in rows.items() if indices}
    frames = []
    for f in range(videos[0].shape[0]):
        canvas = PIL.Image.new("RGB", (label + per_row * (cell + 4), len(rows) * (cell + 4)), (255, 255, 255))
        draw = PIL.ImageDraw.Draw(canvas)
        for row, (direction, indices) in enumerate(rows.items()):
            draw.text((4, row * (cell + 4) + cell // 2 - 6), direction, fill=(0, 0, 0))
            for col, i in enumerate(indices):
                image = PIL.Image.fromarray((videos[i][f] * 255).round().astype(np.uint8)).resize((cell, cell), PIL.Image.NEAREST)
                canvas.paste(image, (label + col * (cell + 4), row * (cell + 4)))
        frames.append(canvas)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)


def write_curve(path: Path, logs: list[Path], width: int = 640, height: int = 360):
    """Training loss per step (light) and its running mean over 50 steps (dark), log-scale y, as a PNG.
    Several logs are runs that continue one another; their steps are laid end to end, with a mark where a
    new run starts."""
    steps, loss, starts = [], [], []
    for log in logs:
        entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        offset = steps[-1] if steps else 0
        starts.append(offset)
        steps += [offset + e["step"] for e in entries]
        loss += [e["loss"] for e in entries]
    steps, loss = np.array(steps), np.log10(np.array(loss))
    smooth = np.convolve(loss, np.ones(50) / 50, mode="valid") if len(loss) >= 50 else loss
    margin = 50
    lo, hi = loss.min(), loss.max()
    to_xy = lambda s, v: (margin + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (width - 2 * margin),  # noqa: E731
                          height - margin - (v - lo) / max(hi - lo, 1e-9) * (height - 2 * margin))
    image = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(image)
    draw.line([to_xy(s, v) for s, v in zip(steps, loss)], fill=(190, 200, 230), width=1)
    draw.line([to_xy(s, v) for s, v in zip(steps[len(steps) - len(smooth):], smooth)], fill=(20, 50, 160), width=2)
    draw.rectangle([margin, margin, width - margin, height - margin], outline=(0, 0, 0))
    for stage, start in enumerate(starts[1:], 2):
        x = to_xy(start, lo)[0]
        draw.line([(x, margin), (x, height - margin)], fill=(200, 60, 60), width=1)
        draw.text((x + 4, margin + 4), f"stage {stage}", fill=(200, 60, 60))
    for v in np.linspace(lo, hi, 5):
        draw.text((4, to_xy(steps[0], v)[1] - 6), f"{10 ** v:.3f}", fill=(0, 0, 0))
    for s in np.linspace(steps[0], steps[-1], 5):
        draw.text((to_xy(s, lo)[0] - 10, height - margin + 6), f"{int(s)}", fill=(0, 0, 0))
    draw.text((margin, 16), "UNet training loss (v-prediction MSE, log scale) vs optimiser step", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def check_unload(pipe, lora: str, seed: int, per_direction: int = 1) -> dict:
    """Videos from held-out first frames of all eight motions (evaluation seed + 1) with the base model, with
    the LoRA, after fuse_lora + unfuse_lora, and after unload_lora_weights: are the restored ones bit-identical?
    Leaves the LoRA loaded (unfused)."""
    rng = np.random.default_rng(seed + 1)
    specs = [sample_spec(rng, "eval", direction=d) for d in MOTIONS for _ in range(per_direction)]
    base = generate(pipe, specs, seed)[1]
    pipe.load_lora_weights(lora)
    with_lora = generate(pipe, specs, seed)[1]
    pipe.fuse_lora()
    fused = generate(pipe, specs, seed)[1]
    pipe.unfuse_lora()
    unfused = generate(pipe, specs, seed)[1]
    pipe.unload_lora_weights()
    unloaded = generate(pipe, specs, seed)[1]
    pipe.load_lora_weights(lora)
    return {"lora_changes_output": bool(np.abs(with_lora - base).max() > 0.05),
            "fused_vs_lora_max_abs_diff": float(np.abs(fused - with_lora).max()),  # float rounding of W + dW
            "unfused_identical_to_lora": bool(np.array_equal(unfused, with_lora)),
            "unloaded_identical_to_base": bool(np.array_equal(unloaded, base))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/tiny-demo")
    parser.add_argument("--per-direction", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--batch", type=int, default=10, help="videos per pipeline call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", type=Path, help="write a GIF grid of examples here")
    parser.add_argument("--training-log", type=Path, action="append",
                        help="log.jsonl of the training run (repeat for runs that continue one another)")
    parser.add_argument("--curve", type=Path, help="write the training curve PNG here (needs --training-log)")
    parser.add_argument("--json", type=Path, help="write all measurements here")
    parser.add_argument("--lora", help="load this LoRA (file or folder) at scale 1.0 before evaluating")
    parser.add_argument("--directions", choices=DIRECTION_SETS, default="axis",
                        help="axis: left/right/up/down (default); diagonal: up-left, ...; all: both")
    parser.add_argument("--check-unload", action="store_true",
                        help="with --lora: check that unloading it, and fusing then unfusing it, restore "
                             "bit-identical videos")
    parser.add_argument("--goal", type=float, default=0.9, help="success rate to pass (default 0.9)")
    parser.add_argument("--split", choices=("eval", "train"), default="eval",
                        help="first frames from the held-out split (default) or, to choose settings without "
                             "looking at the held-out frames, from the training split")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.curve and args.training_log:
        write_curve(args.curve, args.training_log)
    pipe = I2VGenXLPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    checks = {}
    if args.lora and args.check_unload:
        checks = check_unload(pipe, args.lora, args.seed)
        print(json.dumps(checks, indent=2))
    elif args.lora:
        pipe.load_lora_weights(args.lora)
    start = time.time()
    results, videos = evaluate(pipe, args.per_direction, args.seed, args.batch, DIRECTION_SETS[args.directions],
                               args.split)
    report = summary(results) | {"seconds": round(time.time() - start, 1)} | checks
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": report, "trials": results}, indent=2) + "\n")
    if args.grid:
        write_grid(args.grid, results, videos)
    ok = report["success_rate"] >= args.goal and all(v for v in checks.values() if isinstance(v, bool))
    print(f"{'PASS' if ok else 'FAIL'}: {report['success_rate']:.0%} of {len(results)} trials succeed "
          f"(goal >= {args.goal:.0%})" + (f"; bit-identity checks {checks}" if checks else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
