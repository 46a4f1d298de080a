"""Long videos on the tiny demo model (trained on 8 frames): FreeNoise against plain generation (issue 22).

    .venv/bin/python scripts/eval_long_videos.py [--per-direction 6] [--json runs/long.json] [--gifs docs/]

First frames from the held-out split, drawn as scripts/eval_demo.py draws them; 64x64, 25 DDIM steps, guidance 6,
one thread. Each case runs twice with the same seeds: plain, and with FreeNoise at settings fixed before any
measurement (SETTINGS: a window of the demo's 8 training frames, diffusers' stride ratio 16 / 4, its default
weighting and noise). Cases:
1. 24 frames, the prompt switching every 8 frames between opposite directions ({0: d, 8: opposite, 16: d} for
   d = right, left, up, down), with the prompt held over each segment ("hold") and, second, diffusers' linear
   blend between the given frames. A segment succeeds when the object moves >= 6 px the asked way from its
   first to its last frame; a video has no jump when its largest per-frame step is <= 2.5x its median step.
2. One prompt over 16 and 24 frames: the object stays the same object (per-frame size and mean colour within
   the range of the 8-frame video from the same first frame and seed, frames touching the border left out) and
   keeps moving until it reaches the border (after frame 7, at least half its speed over frames 0-7).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_demo import MIN_DISPLACEMENT  # noqa: E402  (the 8-frame evaluation's threshold, 6 px)

from i2vgen import I2VGenXLPipeline  # noqa: E402
from i2vgen.pipelines.prompt_schedule import INTERPOLATIONS  # noqa: E402
from i2vgen.training.data import DIRECTIONS, render_frame, sample_spec  # noqa: E402

SETTINGS = dict(context_length=8, context_stride=2, weighting_scheme="pyramid", noise_type="shuffle_context")
OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
SEGMENT, MAX_JUMP_RATIO, MIN_SPEED_KEPT = 8, 2.5, 0.5
CALL = dict(height=64, width=64, num_inference_steps=25, guidance_scale=6.0, output_type="np")


def track(video: np.ndarray) -> list[dict]:
    """Per frame: the object's centroid (x, y), size (pixels), mean colour and the borders it touches; None
    where no object stands out (eval_demo's rule: > 1/4 of the range from the median colour)."""
    out = []
    for frame in video:
        mask = np.abs(frame - np.median(frame.reshape(-1, 3), axis=0)).max(axis=-1) > 0.25
        if mask.sum() < 3:
            out.append(None)
            continue
        ys, xs = np.nonzero(mask)
        edge = frame.shape[0] - 1
        out.append({"c": np.array([xs.mean(), ys.mean()]), "size": int(mask.sum()), "rgb": frame[mask].mean(0),
                    "border": {"left": xs.min() == 0, "right": xs.max() == edge, "up": ys.min() == 0,
                               "down": ys.max() == edge}})
    return out


def along(a: dict | None, b: dict | None, direction: str) -> float | None:
    return None if a is None or b is None else float((b["c"] - a["c"]) @ np.array(DIRECTIONS[direction]))


def run(pipe, spec, prompt, frames: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)  # the first frame's VAE posterior sample
    image = PIL.Image.fromarray(render_frame(spec, 0))
    return pipe(prompt=prompt, image=image, num_frames=frames, generator=torch.Generator().manual_seed(seed),
                **CALL).frames[0]


def switching(video: np.ndarray, direction: str) -> dict:
    objects, asked = track(video), [direction, OPPOSITE[direction], direction]
    moves = [along(objects[k * SEGMENT], objects[k * SEGMENT + SEGMENT - 1], d) for k, d in enumerate(asked)]
    steps = [np.linalg.norm(b["c"] - a["c"]) for a, b in zip(objects, objects[1:]) if a and b]
    ratio = float(max(steps) / max(np.median(steps), 1e-6)) if len(steps) == len(objects) - 1 else float("inf")
    return {"moves": moves, "segments_ok": [m is not None and m >= MIN_DISPLACEMENT for m in moves],
            "jump_ratio": ratio, "no_jump": ratio <= MAX_JUMP_RATIO}


def single(video: np.ndarray, reference: np.ndarray, direction: str) -> dict:
    objects, ref = track(video), [o for o in track(reference) if o and not any(o["border"].values())]
    inside = [o for o in objects if o and not any(o["border"].values())]
    if not ref or None in objects[:SEGMENT]:
        return {"same_object": 0.0, "keeps_moving": False}
    lo_size, hi_size = min(o["size"] for o in ref), max(o["size"] for o in ref)
    lo_rgb, hi_rgb = np.min([o["rgb"] for o in ref], 0), np.max([o["rgb"] for o in ref], 0)
    same = [lo_size <= o["size"] <= hi_size and bool(np.all((lo_rgb <= o["rgb"]) & (o["rgb"] <= hi_rgb)))
            for o in inside]
    end = next((j for j, o in enumerate(objects) if o is None or o["border"][direction]), len(objects) - 1)
    speed = along(objects[0], objects[SEGMENT - 1], direction) / (SEGMENT - 1)
    later = along(objects[SEGMENT - 1], objects[end], direction) if end > SEGMENT - 1 else None
    kept = end <= SEGMENT - 1 or (speed > 0 and later is not None and later / (end - SEGMENT + 1)
                                  >= MIN_SPEED_KEPT * speed)
    return {"same_object": float(np.mean(same)) if same else 1.0, "keeps_moving": bool(kept), "border_at": end}


def side_by_side(path: Path, plain: np.ndarray, free: np.ndarray, scale: int = 2):
    """A small GIF: plain generation (left) and FreeNoise (right), each frame scaled `scale` times."""
    frames = []
    for a, b in zip(plain, free):
        row = np.concatenate([a, np.ones((a.shape[0], 4, 3)), b], axis=1)
        image = PIL.Image.fromarray((row * 255).round().astype(np.uint8))
        frames.append(image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)


def use(pipe, method: str, interpolation: str = "linear"):
    pipe.disable_free_noise()
    if method == "free_noise":
        pipe.enable_free_noise(**SETTINGS)
    pipe.set_prompt_interpolation(INTERPOLATIONS[interpolation])


def draw_specs(per_direction: int, seed: int, split: str) -> list:
    rng = np.random.default_rng(seed)  # as eval_demo: held-out first frames, the same draws
    return [sample_spec(rng, split, direction=d) for d in DIRECTIONS for _ in range(per_direction)]


def caption(spec, direction: str) -> str:
    return spec.caption.rsplit(" ", 1)[0] + f" {direction}"  # "a red circle moving" + direction


def switch_schedule(spec) -> dict:
    d = spec.direction
    return {0: caption(spec, d), 8: caption(spec, OPPOSITE[d]), 16: caption(spec, d)}


def evaluate(pipe, specs: list, seed: int, methods=("plain", "free_noise"), interpolations=("hold", "linear"),
             single_frames=(16, 24)) -> dict:
    """All trials' measurements."""
    results = {"switching": {}, "single": {}}
    for interpolation in interpolations:
        for method in methods:
            use(pipe, method, interpolation)
            trials, start = [], time.time()
            for i, spec in enumerate(specs):
                video = run(pipe, spec, switch_schedule(spec), 24, seed + i)
                trials.append(switching(video, spec.direction) | {"direction": spec.direction})
            results["switching"][f"{interpolation}/{method}"] = trials
            print(f"switching {interpolation} {method}: {time.time() - start:.0f} s", file=sys.stderr)
    use(pipe, "plain")
    references = [run(pipe, spec, spec.caption, SEGMENT, seed + i) for i, spec in enumerate(specs) if single_frames]
    for frames in single_frames:
        for method in methods:
            use(pipe, method)
            trials, start = [], time.time()
            for i, spec in enumerate(specs):
                video = run(pipe, spec, spec.caption, frames, seed + i)
                trials.append(single(video, references[i], spec.direction) | {"direction": spec.direction})
            results["single"][f"{frames}/{method}"] = trials
            print(f"single {frames} {method}: {time.time() - start:.0f} s", file=sys.stderr)
    use(pipe, "plain")
    return results


def example_videos(pipe, specs: list, per_direction: int, seed: int, interpolation: str) -> dict:
    """The GIFs' videos, plain and FreeNoise, same seeds as in `evaluate`: the switching prompt of the first trial
    of "right" and of "down", and one prompt over 24 frames from the first trial's first frame."""
    out = {}
    for method in ("plain", "free_noise"):
        use(pipe, method, interpolation)
        for i, spec in enumerate(specs):
            if i % per_direction == 0 and spec.direction in ("right", "down"):
                out[f"switch_{spec.direction}_{interpolation}", method] = run(pipe, spec, switch_schedule(spec), 24,
                                                                             seed + i)
        out["single_24", method] = run(pipe, specs[0], specs[0].caption, 24, seed)
    use(pipe, "plain")
    return out


def summary(results: dict) -> dict:
    out = {}
    for name, trials in results["switching"].items():
        out[f"switching {name}"] = {
            "segments_ok": float(np.mean([ok for t in trials for ok in t["segments_ok"]])),
            "videos_without_jump": float(np.mean([t["no_jump"] for t in trials])),
            "median_jump_ratio": float(np.median([t["jump_ratio"] for t in trials])),
            "worst_jump_ratio": float(max(t["jump_ratio"] for t in trials)),
            "mean_move_per_segment": [float(np.mean([t["moves"][k] or 0.0 for t in trials])) for k in range(3)]}
    for name, trials in results["single"].items():
        out[f"single {name}"] = {"frames_same_object": float(np.mean([t["same_object"] for t in trials])),
                                 "keeps_moving": float(np.mean([t["keeps_moving"] for t in trials]))}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/tiny-demo")
    parser.add_argument("--per-direction", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1234)  # eval_demo's
    parser.add_argument("--json", type=Path)
    parser.add_argument("--gifs", type=Path, help="write side-by-side GIFs (plain | FreeNoise) of the example trials "
                                                  "into this folder (their videos are generated again)")
    parser.add_argument("--gif-interpolation", choices=("hold", "linear"), default="hold",
                        help="the prompt interpolation of the switching GIFs")
    parser.add_argument("--split", choices=("eval", "train"), default="eval",
                        help="first frames from the held-out split (default) or, to compare settings without "
                             "looking at the held-out frames, from the training split")
    parser.add_argument("--methods", nargs="+", choices=("plain", "free_noise"), default=["plain", "free_noise"],
                        help="which methods to run (a grid of FreeNoise settings needs plain generation once)")
    parser.add_argument("--interpolations", nargs="*", choices=("hold", "linear"), default=["hold", "linear"],
                        help="prompt interpolations of the switching case")
    parser.add_argument("--single-frames", nargs="*", type=int, choices=(16, 24), default=[16, 24],
                        help="lengths of the single-prompt case")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another FreeNoise setting than SETTINGS', e.g. context_stride=4 (for --split train)")
    args = parser.parse_args(argv)
    for item in args.set:
        key, _, value = item.partition("=")
        SETTINGS[key] = int(value) if value.isdigit() else value
    torch.set_num_threads(1)
    pipe = I2VGenXLPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    specs = draw_specs(args.per_direction, args.seed, args.split)
    results = evaluate(pipe, specs, args.seed, args.methods, args.interpolations, args.single_frames)
    report = summary(results)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": SETTINGS, "summary": report, "trials": results},
                                        indent=2, default=float) + "\n")
    if args.gifs:
        examples = example_videos(pipe, specs, args.per_direction, args.seed, args.gif_interpolation)
        for name in sorted({name for name, _ in examples}):
            side_by_side(args.gifs / f"long_{name}.gif", examples[name, "plain"], examples[name, "free_noise"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
