"""Quality per UNet pass of each sampler on the tiny demo model (issue 12's table; docs/sampling.md).

    OMP_NUM_THREADS=1 nice .venv/bin/python scripts/sampler_study.py [--per-direction 10] [--steps 5,10,15,25,50]
        [--samplers NAME,...] [--out runs/sampler_study] [--plot docs/sampling_plot.png] [--table docs/...md]

For the held-out first frames of scripts/eval_demo.py (same seed, `--per-direction` per direction, its settings:
64x64, 8 frames, guidance 6.0, the caption "a <color> <shape> moving <direction>") every sampler makes the video
from the same initial noise (same generator seeds and global seeds per batch). Per sampler and step count:
- success rate, mean displacement along the asked direction and first-frame PSNR (eval_demo's judge);
- distance to the converged video: mean |video - converged| over pixels in [0, 1], converged = DDIM with trailing
  spacing at 250 steps (cached in --out);
- UNet calls (guided passes: one batch of [unconditional, conditional] per step) and seconds per video.
Results go to --out/results.jsonl, one line per (sampler, steps), so an interrupted run resumes where it stopped;
step counts run in the order given (all samplers at the first count, then the next).
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

from eval_demo import judge
from i2vgen import DDIMScheduler, I2VGenXLPipeline
from i2vgen.schedulers import TRAILING, by_name
from i2vgen.training.data import DIRECTIONS, render_frame, sample_spec

CONVERGED_STEPS = 250
# study name -> (label, i2vgen.schedulers.by_name name, options over the pipeline's released DDIM config)
SAMPLERS = {
    "ddim_leading": ("DDIM, leading (released)", "ddim", {}),
    "ddim_trailing": ("DDIM, trailing", "ddim", TRAILING),
    "dpm2m": ("DPM-Solver++ 2M, trailing, final sigma 0", "dpm++", {}),
    "unipc": ("UniPC (bh2, order 2), trailing", "unipc", {}),
    "unipc3": ("UniPC (bh2, order 3), trailing", "unipc", {"solver_order": 3}),
    "euler": ("Euler, trailing", "euler", {}),
    "fast": ("i2vgen.fast_scheduler (new)", "fast", {}),
}


def generate(pipe, scheduler, specs, steps: int, seed: int, batch: int) -> np.ndarray:
    """Videos (N, F, H, W, 3) in [0, 1] for the first frames and captions of `specs`, eval_demo's settings and seeds
    (batch k: generator and global RNG seeded with seed + k * batch, as eval_demo does)."""
    released, pipe.scheduler = pipe.scheduler, scheduler
    videos = []
    try:
        for start in range(0, len(specs), batch):
            chunk = specs[start : start + batch]
            images = [PIL.Image.fromarray(render_frame(s, 0)) for s in chunk]
            generator = torch.Generator().manual_seed(seed + start)
            torch.manual_seed(seed + start)
            videos.append(pipe(prompt=[s.caption for s in chunk], image=images, height=64, width=64, num_frames=8,
                               num_inference_steps=steps, guidance_scale=6.0, generator=generator,
                               output_type="np").frames)
    finally:
        pipe.scheduler = released
    return np.concatenate(videos)


def converged_videos(pipe, specs, seed: int, batch: int, cache: Path) -> np.ndarray:
    """DDIM, trailing spacing, 250 steps: the reference point every sampler is measured against (cached)."""
    if cache.is_file():
        return np.load(cache)
    videos = generate(pipe, DDIMScheduler.from_config(pipe.scheduler.config, **TRAILING), specs, CONVERGED_STEPS,
                      seed, batch)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, videos)
    return videos


def measure(videos: np.ndarray, converged: np.ndarray, specs) -> dict:
    trials = [judge(v, render_frame(s, 0) / 255.0, s.direction) for v, s in zip(videos, specs)]
    return {
        "distance": float(np.abs(videos - converged).mean()),
        "success_rate": float(np.mean([t["success"] for t in trials])),
        "displacement": float(np.mean([t["along"] or 0.0 for t in trials])),
        "first_frame_psnr": float(np.mean([t["psnr"] for t in trials])),
        "brightness_shift_255": float((videos.mean() - converged.mean()) * 255),
    }


def plot(path: Path, rows: list, width: int = 840, height: int = 460) -> None:
    """Distance to the converged video vs UNet passes, one line per sampler, log-log, drawn with PIL."""
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (0, 0, 0)]
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    xs = np.log10([r["unet_calls"] for r in rows])
    ys = np.log10([r["distance"] for r in rows])
    left, right, top, bottom = 70, 330, 40, 50
    x_lo, x_hi, y_lo, y_hi = xs.min() - 0.05, xs.max() + 0.05, ys.min() - 0.1, ys.max() + 0.1
    to_xy = lambda x, y: (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),  # noqa: E731
                          top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom))
    image = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for n in sorted({r["unet_calls"] for r in rows}):
        x, _ = to_xy(np.log10(n), y_lo)
        draw.line([(x, height - bottom), (x, height - bottom + 4)], fill=(0, 0, 0))
        draw.text((x - 6, height - bottom + 8), str(n), fill=(0, 0, 0))
    for exp in np.arange(np.ceil(y_lo * 4) / 4, y_hi, 0.25):
        _, y = to_xy(x_lo, exp)
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.text((6, y - 6), f"{10 ** exp * 1e3:.2f}e-3", fill=(0, 0, 0))
    goal = next((r["distance"] for r in rows if r["sampler"] == "ddim_leading" and r["steps"] == 50), None)
    if goal is not None:
        _, y = to_xy(x_lo, np.log10(goal))
        draw.line([(left, y), (width - right, y)], fill=(170, 170, 170))
        draw.text((left + 4, y + 2), "released DDIM-50", fill=(120, 120, 120))
    for k, name in enumerate(names):
        points = [to_xy(np.log10(r["unet_calls"]), np.log10(r["distance"])) for r in rows if r["sampler"] == name]
        color = colors[k % len(colors)]
        draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        legend_y = top + 14 + 18 * k
        draw.line([(width - right + 12, legend_y), (width - right + 32, legend_y)], fill=color, width=3)
        draw.text((width - right + 38, top + 8 + 18 * k), SAMPLERS[name][0], fill=(0, 0, 0))
    draw.text((left, 12), f"mean |video - converged| (log) vs guided UNet passes (log); tiny demo, {rows[0]['trials']} "
              "held-out first frames", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def table(rows: list) -> str:
    steps = sorted({r["steps"] for r in rows})
    by = {(r["sampler"], r["steps"]): r for r in rows}
    lines = ["| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |", "| --- |" + " --- |" * len(steps)]
    for name in dict.fromkeys(r["sampler"] for r in rows):
        cells = []
        for n in steps:
            r = by.get((name, n))
            cells.append("" if r is None else f"{r['distance'] * 1e3:.2f}e-3 ({r['success_rate']:.0%}, "
                                              f"{r['displacement']:.1f} px, {r['first_frame_psnr']:.1f} dB)")
        lines.append(f"| {SAMPLERS[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/tiny-demo")
    parser.add_argument("--per-direction", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1234, help="eval_demo's seed: its held-out frames and noise")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--steps", default="5,10,15,25,50")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--out", type=Path, default=Path("runs/sampler_study"))
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--table", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    pipe = I2VGenXLPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(args.seed)
    specs = [sample_spec(rng, "eval", direction=d) for d in DIRECTIONS for _ in range(args.per_direction)]
    converged = converged_videos(pipe, specs, args.seed, args.batch, args.out / f"converged_{len(specs)}.npy")
    results_path = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    rows = [r for r in rows if r["trials"] == len(specs)]  # runs with another --per-direction are kept apart
    done = {(r["sampler"], r["steps"]) for r in rows}
    for steps in (int(s) for s in args.steps.split(",")):  # in the order given: the most wanted counts first
        for name in args.samplers.split(","):
            if (name, steps) in done:
                continue
            start = time.time()
            _, preset, options = SAMPLERS[name]
            scheduler = by_name(preset, pipe.scheduler.config, **options)
            videos = generate(pipe, scheduler, specs, steps, args.seed, args.batch)
            row = {"sampler": name, "steps": steps, "unet_calls": steps, "trials": len(specs),
                   **measure(videos, converged, specs), "seconds_per_video": (time.time() - start) / len(specs)}
            rows.append(row)
            with results_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr)
    rows = [r for r in rows if r["sampler"] in args.samplers.split(",")]
    print(table(rows))
    if args.table:
        args.table.write_text(table(rows) + "\n")
    if args.plot:
        plot(args.plot, rows)


if __name__ == "__main__":
    main()
