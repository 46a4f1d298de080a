"""The one-call GPU check behind scripts/gpu_check.sh: ours and the reference at the released size on one GPU.

    python scripts/gpu_check.py [--ref-site DIR] [--device cuda] [--steps 3]
    python scripts/gpu_check.py --device cpu --tiny          # smoke mode (the test suite), ours only

1. build: one random-weight pipeline (released sizes, fp16; --tiny: width-32 models, fp32), saved once in the
   diffusers layout, by the reference stack when --ref-site is given, else by ours;
2. run: each side in a fresh process (the reference's with --ref-site first on sys.path, so that its pinned
   diffusers / transformers 4.x shadow the machine's), 1280x704, 16 frames, same weights, image, prompt and seeds:
   a warm-up call, a timed call of --steps steps (per-step and decode times, peak torch.cuda.max_memory_allocated),
   then ours with `enable_fast_sampling()` (the fast sampler at its step count with caching across steps, a whole
   call), then the same call with model CPU offload (ours: with its memory options: sequential guidance, forward
   chunking); last, ours' UNet eagerly and under torch.compile, in what is left of 8 minutes;
3. print a table: times (and 50 steps extrapolated from the measured ones), peaks, frame differences.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
SEED = 0
MIB = 2 ** 20
COMPILE_DEADLINE_S = 450  # the torch.compile timing gets what is left of this after the runs (8 minutes in all)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", nargs="?", choices=["all", "build", "run", "compile"], default="all")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="width-32 models, 64x64, 4 frames, float32 (smoke test)")
    p.add_argument("--steps", type=int, default=3, help="denoising steps of the timed calls (extrapolated to 50)")
    p.add_argument("--ref-site", help="folder with the reference's packages (pip install --target); none: ours only")
    p.add_argument("--out", default=str(ROOT / "out" / "gpu_check"))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing")
    p.add_argument("--side", choices=["ours", "ref"], help="run: which pipeline")
    return p.parse_args()


def call_shape(args) -> dict:
    if args.tiny:
        return dict(height=64, width=64, num_frames=4, dtype="fp32", config="tiny")
    return dict(height=704, width=1280, num_frames=16, dtype="fp16", config="gpu")


# ------------------------------------------------------------------------------------------------- build
def build(args):
    """Build the pipeline with random weights (the side whose stack is on sys.path) and save it."""
    import torch
    from _bench_worker import make_input_image
    from _memory_worker import DTYPES, build_pipeline

    shape = call_shape(args)
    side = "ref" if args.ref_site else "ours"
    torch.manual_seed(SEED)
    pipe = build_pipeline(side, shape["config"], DTYPES[shape["dtype"]])
    with torch.no_grad():  # the temporal convs' last layers start at zero: give them values (as bench.py does)
        for param in pipe.unet.parameters():
            if param.ndim > 1 and not param.any():
                param.normal_(std=0.02)
    folder = Path(args.out) / "model"
    pipe.save_pretrained(folder)
    make_input_image(shape["width"], shape["height"]).save(folder / "input.png")


# ------------------------------------------------------------------------------------------------- run
def run(args):
    """One side: load, warm up, time a call, time it again with CPU offload; write JSON and frames."""
    import torch
    from _bench_worker import PROMPT, Timeline
    from _memory_worker import DTYPES
    from PIL import Image

    shape, device = call_shape(args), torch.device(args.device)
    cuda = device.type == "cuda"
    folder = Path(args.out) / "model"
    if args.side == "ref":
        from diffusers import I2VGenXLPipeline
    else:
        sys.path.insert(0, str(ROOT))
        from i2vgen import I2VGenXLPipeline
    pipe = I2VGenXLPipeline.from_pretrained(folder, torch_dtype=DTYPES[shape["dtype"]])
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=PROMPT, image=Image.open(folder / "input.png").convert("RGB"), height=shape["height"],
              width=shape["width"], num_frames=shape["num_frames"], guidance_scale=9.0, output_type="np")

    def call(steps):
        torch.manual_seed(SEED)  # the reference draws the image-latent posterior sample from the global RNG
        generator = torch.Generator("cpu").manual_seed(SEED)
        return np.asarray(pipe(**kw, num_inference_steps=steps, generator=generator).frames, dtype=np.float32)

    def timed(steps):
        timeline = Timeline(cuda)
        wrapped = ((pipe.unet, "forward", "unet"), (pipe.vae, "decode", "vae.decode"),
                   (pipe.scheduler, "step", "scheduler.step"))
        saved = [(obj, method, obj.__dict__.get(method)) for obj, method, _ in wrapped]  # offload hooks live there
        for obj, method, name in wrapped:
            timeline.wrap(obj, method, name)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = timeline.now()
        frames = call(steps)
        stages = timeline.stages(start, timeline.now())["wall"]
        for obj, method, original in saved:  # drop the timers, keep what was there
            delattr(obj, method)
            if original is not None:
                setattr(obj, method, original)
        peak = torch.cuda.max_memory_allocated() / MIB if cuda else None
        return frames, dict(steps=stages["steps"], decode=stages["decode"], call=stages["call"], peak_mib=peak)

    result = dict(side=args.side, device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__)
    pipe.to(device)
    call(1)  # warm-up: kernels, allocator
    frames, result["plain"] = timed(args.steps)
    np.save(Path(args.out) / f"{args.side}-plain.npy", frames)
    if args.side == "ours":  # the cached mode (issue 23): a whole call at its own step count
        pipe.enable_fast_sampling()
        call(2)
        _, result["fast"] = timed(None)
        result["fast"]["num_steps"] = len(pipe.scheduler.timesteps)
        pipe.disable_fast_sampling()

    pipe.to("cpu")
    if args.side == "ours":  # our memory options: sequential guidance (the UNet's forward chunking with it)
        pipe.enable_sequential_guidance()
    pipe.enable_model_cpu_offload(device=device)
    call(1)
    frames, result["offload"] = timed(args.steps)
    np.save(Path(args.out) / f"{args.side}-offload.npy", frames)
    (Path(args.out) / f"{args.side}.json").write_text(json.dumps(result, indent=1))


def compile_speedup(args):
    """Seconds per call of our UNet (guidance batch of 2) eager and under torch.compile, after warm-up."""
    import torch
    from _memory_worker import DTYPES

    sys.path.insert(0, str(ROOT))
    from i2vgen import I2VGenXLUNet

    shape, device = call_shape(args), torch.device(args.device)
    unet = I2VGenXLUNet.from_pretrained(Path(args.out) / "model", subfolder="unet",
                                        torch_dtype=DTYPES[shape["dtype"]]).to(device)
    dtype = unet.dtype
    f, h, w = shape["num_frames"], shape["height"] // 8, shape["width"] // 8
    dim = unet.config.cross_attention_dim
    inputs = dict(sample=torch.randn(2, 4, f, h, w, device=device, dtype=dtype), timestep=999,
                  encoder_hidden_states=torch.randn(2, 77, dim, device=device, dtype=dtype),
                  fps=torch.tensor([16, 16], device=device), image_embeddings=torch.randn(2, dim, device=device,
                                                                                          dtype=dtype),
                  image_latents=torch.randn(2, 4, f, h, w, device=device, dtype=dtype))

    def seconds(fn, repeats=3):
        with torch.no_grad():
            fn(**inputs)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                fn(**inputs)
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    eager = seconds(unet)
    start = time.perf_counter()
    compiled = torch.compile(unet)
    with torch.no_grad():
        compiled(**inputs)
    compile_s = time.perf_counter() - start
    result = dict(eager_s=eager, compiled_s=seconds(compiled), compile_s=compile_s)
    (Path(args.out) / "ours-compile.json").write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------- report
def side_env(args, side: str) -> dict:
    env = dict(os.environ)
    if side == "ref":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.ref_site, env.get("PYTHONPATH")]))
    return env


def subprocess_job(args, job: str, side: str, timeout: float | None = None):
    argv = [sys.executable, __file__, job, "--device", args.device, "--steps", str(args.steps), "--out", args.out]
    argv += ["--tiny"] * args.tiny + ["--no-compile"] * args.no_compile + ["--side", side]
    argv += ["--ref-site", args.ref_site] if args.ref_site else []
    start = time.perf_counter()
    proc = subprocess.run(argv, env=side_env(args, side), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        sys.exit(f"{job} ({side}) failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    print(f"{job} {side}: {time.perf_counter() - start:.0f} s", flush=True)


def report(args) -> str:
    sides = [s for s in ("ours", "ref") if (Path(args.out) / f"{s}.json").exists()]
    results = {s: json.loads((Path(args.out) / f"{s}.json").read_text()) for s in sides}
    lines = [f"device: {results['ours']['device']}, torch {results['ours']['torch']}; {call_shape(args)}; "
             f"{args.steps} timed steps, 50 extrapolated (x 50 / {args.steps} of the step time)", "",
             "| | " + " | ".join(sides) + " |", "|---|" + "---|" * len(sides)]

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(results[s]) for s in sides) + " |")

    for mode in ("plain", "offload"):
        label = "model CPU offload" + (" (ours: + sequential guidance)" if mode == "offload" else "")
        label = label if mode == "offload" else "no offload"
        row(f"{label}: s per step (median)", lambda r: f"{np.median(r[mode]['steps']):.3f}")
        row(f"{label}: 50 steps, extrapolated s", lambda r: f"{50 * np.median(r[mode]['steps']):.1f}")
        row(f"{label}: decode s", lambda r: f"{r[mode]['decode']:.2f}")
        row(f"{label}: peak max_memory_allocated MiB",
            lambda r: "-" if r[mode]["peak_mib"] is None else f"{r[mode]['peak_mib']:.0f}")
    fast, plain = results["ours"]["fast"], results["ours"]["plain"]
    ddim50 = plain["call"] + (50 - args.steps) * np.median(plain["steps"])
    lines.append(f"\nours, enable_fast_sampling ({fast['num_steps']} steps, cached): whole call {fast['call']:.2f} s "
                 f"against {ddim50:.2f} s for DDIM-50 (extrapolated): {fast['call'] / ddim50:.2f}x")
    compile_file = Path(args.out) / "ours-compile.json"
    if compile_file.exists():
        c = json.loads(compile_file.read_text())
        lines.append(f"\nours, UNet call (guidance batch of 2): eager {c['eager_s']:.3f} s, torch.compile "
                     f"{c['compiled_s']:.3f} s: speedup {c['eager_s'] / c['compiled_s']:.2f}x (compile {c['compile_s']:.0f} s)")
    frames = {f"{s}-{m}": np.load(Path(args.out) / f"{s}-{m}.npy") for s in sides for m in ("plain", "offload")}
    lines.append(f"\nmax |frame difference| ours offload vs ours: "
                 f"{np.abs(frames['ours-offload'] - frames['ours-plain']).max():.2e}")
    if "ref" in sides:
        lines.append(f"max |frame difference| ours vs reference: "
                     f"{np.abs(frames['ours-plain'] - frames['ref-plain']).max():.2e} "
                     f"(mean {np.abs(frames['ours-plain'] - frames['ref-plain']).mean():.2e})")
    else:
        lines.append("reference: SKIPPED (no --ref-site / wheel folder given)")
    return "\n".join(lines)


def main():
    args = parse_args()
    if args.job == "build":
        return build(args)
    if args.job == "run":
        return run(args)
    if args.job == "compile":
        return compile_speedup(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "ours-compile.json").unlink(missing_ok=True)
    start = time.perf_counter()
    if args.ref_site:
        subprocess_job(args, "build", "ref")
        for side in ("ref", "ours"):
            subprocess_job(args, "run", side)
    else:  # ours only: one process is enough
        build(args)
        args.side = "ours"
        run(args)
    if args.device != "cpu" and not args.no_compile:  # last, with what is left of the 8 minutes
        left = COMPILE_DEADLINE_S - (time.perf_counter() - start)
        try:
            subprocess_job(args, "compile", "ours", timeout=max(left, 30))
        except subprocess.TimeoutExpired:
            print(f"torch.compile: not measured (stopped after {max(left, 30):.0f} s, at the 8-minute budget)")
    print(report(args))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
