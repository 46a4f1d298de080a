"""The weights-free metrics of `i2vgen eval` on the tiny demo model, with their noise across seeds (issue 24's
table in docs/evaluation.md).

    OMP_NUM_THREADS=1 nice .venv/bin/python scripts/eval_study.py [--per-direction 3] [--seeds 3]
        [--conditions ddim50,fast,lora] [--out runs/eval_study] [--table docs/...md]

First frames come from the held-out split, drawn as scripts/eval_demo.py draws them (its seed, `--per-direction`
per direction; the four axis directions, or for the LoRA its four diagonals); eval_demo's settings otherwise
(64x64, 8 frames, guidance 6.0, the caption "a <color> <shape> moving <direction>"). For each condition and each
of `--seeds` generation seeds (seed + 1000 k: other noise, same first frames) the videos are written as GIFs
with their first frames (images/, PNG), their ground-truth clips (truth/, the synthetic renderer's, GIF) and a metadata.csv to
--out/CONDITION/seedK/, and evaluated there exactly as `i2vgen eval` does. The table gives, per metric, the mean
over seeds of the per-seed dataset mean, and the standard deviation of those per-seed means (the noise a
comparison between two conditions has to beat).
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from i2vgen import I2VGenXLPipeline
from i2vgen.apps.evaluate import Models, evaluate_folder, write_results
from i2vgen.schedulers import by_name
from i2vgen.schedulers.fast import FAST_STEPS
from i2vgen.training.data import DIAGONALS, DIRECTIONS, render_clip, sample_spec
from i2vgen.video import export_to_gif
from sampler_study import generate

# name -> (label, sampler preset or None for the released DDIM, steps, LoRA, directions)
CONDITIONS = {
    "ddim50": ("DDIM, 50 steps (released sampler)", None, 50, None, tuple(DIRECTIONS)),
    "fast": (f"fast sampler (`--fast`), {FAST_STEPS} steps", "fast", FAST_STEPS, None, tuple(DIRECTIONS)),
    "lora": ("LoRA diagonal, DDIM 50 steps, diagonal prompts", None, 50, "weights/tiny-demo-lora-diagonal",
             tuple(DIAGONALS)),
}
METRICS = ("first_frame_psnr", "first_frame_ssim", "ground_truth_psnr", "ground_truth_ssim", "temporal_flickering",
           "colour_drift", "motion_magnitude", "motion_acceleration", "dynamic_degree")


def write_folder(folder: Path, specs, videos: np.ndarray) -> None:
    """The videos, their first frames and ground-truth clips, and a metadata.csv naming them."""
    for sub in ("images", "truth"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (spec, video) in enumerate(zip(specs, videos)):
        name = f"{k:03d}_{spec.direction}"
        export_to_gif(video, folder / f"{name}.gif", fps=8)
        PIL.Image.fromarray(render_clip(spec)[0]).save(folder / f"images/{name}.png")
        export_to_gif(render_clip(spec), folder / f"truth/{name}.gif", fps=8)
        rows.append({"file_name": f"{name}.gif", "image": f"images/{name}.png", "prompt": spec.caption,
                     "ground_truth": f"truth/{name}.gif"})
    with (folder / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_condition(pipe, name: str, args) -> list[dict]:
    """The summary of each seed's folder for condition `name`."""
    _, preset, steps, lora, directions = CONDITIONS[name]
    rng = np.random.default_rng(args.seed)
    specs = [sample_spec(rng, "eval", direction=d) for d in directions for _ in range(args.per_direction)]
    scheduler = pipe.scheduler if preset is None else by_name(preset, pipe.scheduler.config)
    if lora:
        pipe.load_lora_weights(lora)
    summaries = []
    try:
        for k in range(args.seeds):
            folder = args.out / name / f"seed{k}"
            start = time.time()
            videos = generate(pipe, scheduler, specs, steps, args.seed + 1000 * k, args.batch)
            write_folder(folder, specs, videos)
            records, summary = evaluate_folder(folder, Models())
            write_results(folder, records, summary)
            summaries.append(summary)
            print(f"{name} seed {k}: {len(specs)} videos in {time.time() - start:.0f} s", file=sys.stderr)
    finally:
        if lora:
            pipe.unload_lora_weights()
    return summaries


def table(results: dict) -> str:
    """Markdown: one row per metric, one column per condition, mean over seeds ± std across seeds."""
    lines = ["| metric | " + " | ".join(CONDITIONS[n][0] for n in results) + " |", "| --- |" + " --- |" * len(results)]
    for metric in METRICS:
        cells = []
        for summaries in results.values():
            means = [s["metrics"][metric]["mean"] for s in summaries if metric in s["metrics"]]
            cells.append(f"{np.mean(means):.4f} ± {np.std(means, ddof=1):.4f}" if len(means) > 1 else "-")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/tiny-demo")
    parser.add_argument("--per-direction", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234, help="eval_demo's seed: its held-out first frames")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--out", type=Path, default=Path("runs/eval_study"))
    parser.add_argument("--table", type=Path, help="write the markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    pipe = I2VGenXLPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    results = {name: run_condition(pipe, name, args) for name in args.conditions.split(",")}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    if args.table:
        args.table.write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
