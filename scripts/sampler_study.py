"""Quality per UNet pass of each sampler and cache setting on the tiny demo model (issues 12 and 23; docs/sampling.md).

    OMP_NUM_THREADS=1 nice .venv/bin/python scripts/sampler_study.py [--per-direction 10] [--steps 5,10,15,25,50]
        [--samplers NAME,...] [--caches NAME,...] [--split eval|train] [--out runs/sampler_study]
        [--plot docs/sampling_plot.png] [--table docs/...md]

For the held-out first frames of scripts/eval_demo.py (same seed, `--per-direction` per direction, its settings:
64x64, 8 frames, guidance 6.0, the caption "a <color> <shape> moving <direction>") every sampler makes the video
from the same initial noise (same generator seeds and global seeds per batch). Per sampler and step count:
- success rate, mean displacement along the asked direction and first-frame PSNR (eval_demo's judge);
- distance to the converged video: mean |video - converged| over pixels in [0, 1], converged = DDIM with trailing
  spacing at 250 steps (cached in --out);
- UNet calls (guided passes: one batch of [unconditional, conditional] per step), their cost in full-pass
  equivalents counted by FLOPs (a cached call of `unet.enable_cache`, models/cache.py, costs less than 1), and
  seconds per video.
`--split train` uses first frames of TRAINING clips instead (fit_fast_sampler.py's seed 2024): settings are chosen
there, never on the held-out frames. Results go to --out/results.jsonl (train: results_train.jsonl), one line per
(cache, sampler, steps), so an interrupted run resumes where it stopped; step counts run in the order given.
"""

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from eval_demo import judge
from i2vgen import CacheConfig, DDIMScheduler, I2VGenXLPipeline
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
# study name -> (label, CacheConfig keys or None): caching across steps (models/cache.py)
CACHES = {
    "none": ("", None),
    "deep2": ("DeepCache 2", dict(cache_interval=2, cache_branch_id=0)),
    "deep3": ("DeepCache 3", dict(cache_interval=3, cache_branch_id=0)),
    "cfg2": ("CFG cache 2", dict(cache_interval=2, cache_branch_id=None, cache_guidance=True)),
    "cfg3": ("CFG cache 3", dict(cache_interval=3, cache_branch_id=None, cache_guidance=True)),
    "both2": ("DeepCache + CFG cache 2", dict(cache_interval=2, cache_branch_id=0, cache_guidance=True)),
    "both3": ("DeepCache + CFG cache 3", dict(cache_interval=3, cache_branch_id=0, cache_guidance=True)),
}


def label(row: dict) -> str:
    cache = CACHES[row.get("cache", "none")][0]
    return SAMPLERS[row["sampler"]][0] + (f" + {cache}" if cache else "")


def unet_cost(unet, cache: str, steps: int) -> float:
    """Full-pass equivalents of `steps` guided UNet calls with cache setting `cache`: every cache_interval-th call
    is a full pass (models/cache.py), the others cost what one cached call costs (`cached_call_cost`)."""
    options = CACHES[cache][1]
    if not options:
        return float(steps)
    full_passes = -(-steps // options["cache_interval"])
    return full_passes + (steps - full_passes) * cached_call_cost(unet, cache)


@functools.cache
@torch.no_grad()
def cached_call_cost(unet, cache: str) -> float:
    """FLOPs of a cached call over those of a full pass (torch.utils.flop_counter), one video of the study's shape."""
    from torch.utils.flop_counter import FlopCounterMode

    options = CACHES[cache][1]
    d = unet.config.cross_attention_dim
    condition = unet.encode_condition(fps=torch.tensor([8, 8]), image_latents=torch.zeros(1, 4, 8, 8, 8),
                                      image_embeddings=torch.zeros(2, d), encoder_hidden_states=torch.zeros(2, 8, d))
    unet.enable_cache(CacheConfig(**options))
    flops = []
    for t in (999, 998):  # a full pass, then a cached call
        with FlopCounterMode(display=False) as counter:
            unet(torch.zeros(1, 4, 8, 8, 8), t, condition=condition)
        flops.append(counter.get_total_flops())
    unet.disable_cache()
    return flops[1] / flops[0]


def generate(pipe, scheduler, specs, steps: int, seed: int, batch: int, cache: str = "none") -> np.ndarray:
    """Videos (N, F, H, W, 3) in [0, 1] for the first frames and captions of `specs`, eval_demo's settings and seeds
    (batch k: generator and global RNG seeded with seed + k * batch, as eval_demo does), with cache setting `cache`."""
    released, pipe.scheduler = pipe.scheduler, scheduler
    options = CACHES[cache][1]
    if options:
        pipe.unet.enable_cache(CacheConfig(**options))
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
        pipe.unet.disable_cache()
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


def cost(row: dict) -> float:
    return row.get("cost", row["unet_calls"])  # rows from before issue 23: no cache, one full pass per call


def plot(path: Path, rows: list, frames: str = "held-out", width: int = 900, height: int = 480) -> None:
    """Distance to the converged video vs UNet cost (full-pass equivalents), one line per sampler and cache setting,
    log-log, drawn with PIL."""
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
              (0, 0, 0), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    names = list(dict.fromkeys(label(r) for r in rows))
    xs = np.log10([cost(r) for r in rows])
    ys = np.log10([r["distance"] for r in rows])
    left, right, top, bottom = 70, 390, 40, 50
    x_lo, x_hi, y_lo, y_hi = xs.min() - 0.05, xs.max() + 0.05, ys.min() - 0.1, ys.max() + 0.1
    to_xy = lambda x, y: (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),  # noqa: E731
                          top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom))
    image = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for n in (3, 5, 7, 10, 15, 20, 30, 50):
        if x_lo <= np.log10(n) <= x_hi:
            x, _ = to_xy(np.log10(n), y_lo)
            draw.line([(x, height - bottom), (x, height - bottom + 4)], fill=(0, 0, 0))
            draw.text((x - 6, height - bottom + 8), str(n), fill=(0, 0, 0))
    for exp in np.arange(np.ceil(y_lo * 4) / 4, y_hi, 0.25):
        _, y = to_xy(x_lo, exp)
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.text((6, y - 6), f"{10 ** exp * 1e3:.2f}e-3", fill=(0, 0, 0))
    goal = next((r["distance"] for r in rows if r["sampler"] == "ddim_leading" and r["steps"] == 50
                 and r.get("cache", "none") == "none"), None)
    if goal is not None:
        _, y = to_xy(x_lo, np.log10(goal))
        draw.line([(left, y), (width - right, y)], fill=(170, 170, 170))
        draw.text((left + 4, y + 2), "released DDIM-50", fill=(120, 120, 120))
    for k, name in enumerate(names):
        points = sorted(to_xy(np.log10(cost(r)), np.log10(r["distance"])) for r in rows if label(r) == name)
        color = colors[k % len(colors)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        legend_y = top + 14 + 18 * k
        draw.line([(width - right + 12, legend_y), (width - right + 32, legend_y)], fill=color, width=3)
        draw.text((width - right + 38, top + 8 + 18 * k), name, fill=(0, 0, 0))
    draw.text((left, 12), f"mean |video - converged| (log) vs UNet cost in full guided passes by FLOPs (log); tiny demo, "
              f"{rows[0]['trials']} {frames} first frames", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def table(rows: list) -> str:
    steps = sorted({r["steps"] for r in rows})
    by = {(label(r), r["steps"]): r for r in rows}
    lines = ["| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |", "| --- |" + " --- |" * len(steps)]
    for name in dict.fromkeys(label(r) for r in rows):
        cells = []
        for n in steps:
            r = by.get((name, n))
            cells.append("" if r is None else f"{r['distance'] * 1e3:.2f}e-3 ({r['success_rate']:.0%}, "
                                              f"{r['displacement']:.1f} px, {r['first_frame_psnr']:.1f} dB"
                                              + (f"; cost {cost(r):.2f}" if cost(r) != n else "") + ")")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/tiny-demo")
    parser.add_argument("--per-direction", type=int, default=10)
    parser.add_argument("--split", choices=["eval", "train"], default="eval",
                        help="eval: eval_demo's held-out first frames; train: training clips, to choose settings on")
    parser.add_argument("--seed", type=int, help="default: eval_demo's 1234 (eval), fit_fast_sampler's 2024 (train)")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--steps", default="5,10,15,25,50")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--caches", default="none", help=f"cache settings, of {','.join(CACHES)}")
    parser.add_argument("--out", type=Path, default=Path("runs/sampler_study"))
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--table", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seed = args.seed if args.seed is not None else 1234 if args.split == "eval" else 2024
    suffix = "" if args.split == "eval" else "_train"

    pipe = I2VGenXLPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, args.split, direction=d) for d in DIRECTIONS for _ in range(args.per_direction)]
    converged = converged_videos(pipe, specs, seed, args.batch, args.out / f"converged{suffix}_{len(specs)}.npy")
    results_path = args.out / f"results{suffix}.jsonl"
    rows = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    rows = [r for r in rows if r["trials"] == len(specs)]  # runs with another --per-direction are kept apart
    done = {(r.get("cache", "none"), r["sampler"], r["steps"]) for r in rows}
    caches, samplers = args.caches.split(","), args.samplers.split(",")
    for steps in (int(s) for s in args.steps.split(",")):  # in the order given: the most wanted counts first
        for name in samplers:
            for cache in caches:
                if (cache, name, steps) not in done:
                    rows.append(run_cell(pipe, specs, converged, name, cache, steps, seed, args.batch, results_path))
    rows = [r for r in rows if r["sampler"] in samplers and r.get("cache", "none") in caches]
    print(table(rows))
    if args.table:
        args.table.write_text(table(rows) + "\n")
    if args.plot:
        plot(args.plot, rows, "held-out" if args.split == "eval" else "training-clip")


def run_cell(pipe, specs, converged, name: str, cache: str, steps: int, seed: int, batch: int, results_path) -> dict:
    """One (sampler, cache, steps) cell: videos, measures, cost; appended to results_path."""
    start = time.time()
    _, preset, options = SAMPLERS[name]
    scheduler = by_name(preset, pipe.scheduler.config, **options)
    videos = generate(pipe, scheduler, specs, steps, seed, batch, cache)
    row = {"sampler": name, "cache": cache, "steps": steps, "unet_calls": steps, "trials": len(specs),
           **measure(videos, converged, specs), "seconds_per_video": (time.time() - start) / len(specs),
           "cost": unet_cost(pipe.unet, cache, steps)}
    with results_path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), file=sys.stderr)
    return row


if __name__ == "__main__":
    main()
