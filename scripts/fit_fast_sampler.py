"""Fit the fast sampler (i2vgen/schedulers/fast.py) on TRAINING clips: which solver order and timestep power rho
bring a 15-step video closest to the converged one.

    OMP_NUM_THREADS=1 nice .venv/bin/python scripts/fit_fast_sampler.py [--per-direction 2] [--steps 15]
        [--orders 2,3] [--powers 0.6,0.8,1.0,1.25,1.5] [--out runs/fast_fit]

The first frames and captions come from the TRAINING split of i2vgen/training/data.py (its own seed), never from
the held-out frames that scripts/sampler_study.py and scripts/eval_demo.py evaluate on. Everything else is the
study's: eval_demo's generation settings, distance = mean |video - converged video|, converged = DDIM with
trailing spacing at 250 steps. Results go to --out/fit.jsonl (resumable); the best line is printed last.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from i2vgen import I2VGenXLPipeline, PowerUniPCScheduler
from i2vgen.schedulers.fast import power_timesteps
from i2vgen.training.data import DIRECTIONS, sample_spec
from sampler_study import converged_videos, generate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="weights/tiny-demo")
    parser.add_argument("--per-direction", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2024, help="draws the training clips and the noise")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--solver-types", default="bh2")
    parser.add_argument("--powers", default="0.6,0.8,1.0,1.25,1.5")
    parser.add_argument("--refine", type=int, default=0, metavar="SWEEPS",
                        help="then move each timestep of the best power-law schedule in turn (Align Your Steps-like "
                             "coordinate search), this many sweeps")
    parser.add_argument("--out", type=Path, default=Path("runs/fast_fit"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    pipe = I2VGenXLPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(args.seed)
    specs = [sample_spec(rng, "train", direction=d) for d in DIRECTIONS for _ in range(args.per_direction)]
    batch = len(specs)
    converged = converged_videos(pipe, specs, args.seed, batch, args.out / f"converged_train_{len(specs)}.npy")
    results_path = args.out / "fit.jsonl"
    rows = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.is_file() else []
    done = {(r["solver_order"], r["solver_type"], r["timestep_power"], r["steps"]) for r in rows}
    for order in (int(o) for o in args.orders.split(",")):
        for solver_type in args.solver_types.split(","):
            for power in (float(p) for p in args.powers.split(",")):
                if (order, solver_type, power, args.steps) in done:
                    continue
                scheduler = PowerUniPCScheduler.from_config(pipe.scheduler.config, solver_order=order,
                                                            solver_type=solver_type, timestep_power=power,
                                                            final_sigmas_type="zero")
                videos = generate(pipe, scheduler, specs, args.steps, args.seed, batch)
                row = {"solver_order": order, "solver_type": solver_type, "timestep_power": power,
                       "steps": args.steps, "distance": float(np.abs(videos - converged).mean())}
                rows.append(row)
                with results_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), file=sys.stderr)
    rows = [r for r in rows if r["steps"] == args.steps]
    for r in sorted(rows, key=lambda r: -r["distance"]):
        print(f"order {r['solver_order']} {r['solver_type']} rho {r['timestep_power']:.3f} "
              f"{r.get('timesteps', '')}: distance {r['distance'] * 1e3:.3f}e-3")
    if args.refine:
        refine(pipe, specs, converged, min(rows, key=lambda r: r["distance"]), args, results_path)


def refine(pipe, specs, converged, best: dict, args, results_path: Path) -> None:
    """Coordinate search on the timesteps (t_0 = 999 stays): move t_i a third of the way towards a neighbour
    (t_{n} = 0 below the last), keep the move if the distance drops; `args.refine` sweeps over i = 1 .. n-1."""
    options = dict(solver_order=best["solver_order"], solver_type=best["solver_type"],
                   timestep_power=best["timestep_power"], final_sigmas_type="zero")
    timesteps = best.get("timesteps") or power_timesteps(1000, args.steps, best["timestep_power"]).tolist()
    distance = best["distance"]
    for sweep in range(args.refine):
        for i in range(1, args.steps):
            for neighbour in (timesteps[i - 1], timesteps[i + 1] if i + 1 < args.steps else 0):
                moved = timesteps[i] + round((neighbour - timesteps[i]) / 3)
                if moved in (timesteps[i], neighbour):
                    continue
                candidate = timesteps[:i] + [moved] + timesteps[i + 1:]
                scheduler = PowerUniPCScheduler.from_config(pipe.scheduler.config, fitted_timesteps=candidate,
                                                            **options)
                videos = generate(pipe, scheduler, specs, args.steps, args.seed, len(specs))
                d = float(np.abs(videos - converged).mean())
                row = {**options, "steps": args.steps, "timesteps": candidate, "distance": d, "sweep": sweep}
                with results_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"sweep {sweep} t_{i} {timesteps[i]} -> {moved}: {d * 1e3:.3f}e-3 (best {distance * 1e3:.3f}e-3)",
                      file=sys.stderr, flush=True)
                if d < distance:
                    timesteps, distance = candidate, d
                    break
    print(f"refined: {timesteps} distance {distance * 1e3:.3f}e-3")


if __name__ == "__main__":
    main()
