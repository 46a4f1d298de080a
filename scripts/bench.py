"""Benchmark i2vgen's pipeline against the reference (diffusers' I2VGenXLPipeline) on the same weights and inputs.

    python scripts/bench.py --config cpu                 # reduced-width model, 128x128, 8 frames, 6 steps, fp32
    python scripts/bench.py --config gpu                 # released model, 1280x704, 16 frames, 50 steps, fp16
    python scripts/bench.py --config cpu --cfg-mode sequential --write-docs

Steps: (1) build a random-weight pipeline once with the reference stack and save it in the diffusers layout
(out/bench/<config>, or --model DIR); (2) count the FLOPs of one UNet step and one VAE frame decode on the meta
device; (3) run ours and the reference alternately (ABBA order), each run a fresh process that loads the pipeline,
makes one warm-up call and one timed call with the same seeds; (4) print a markdown table of per-stage times
(wall clock and process CPU time), peak memory, ratios ours/reference and the largest frame difference.

The reference runs in its own virtual environment (.venv-ref; created with scripts/reference-requirements.txt when
missing), ours in .venv. Options under "ours" change only our side; the reference runs as users run it by default.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    import numpy as np
except ImportError:  # a bare system python: rerun with the project's venv
    venv_python = ROOT / ".venv" / "bin" / "python"
    if not venv_python.exists() or Path(sys.executable) == venv_python:
        raise
    os.execv(venv_python, [str(venv_python), *sys.argv])
WORKER = ROOT / "scripts" / "_bench_worker.py"
DOCS = ROOT / "docs" / "performance.md"

# Dense fp16/bf16 tensor-core peak of an H100 SXM (989.4 TFLOP/s without sparsity; the PCIe card: 756).
GPU_PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
DEFAULTS = {"cpu": dict(device="cpu", threads=1, repeats=3), "gpu": dict(device="cuda", threads=8, repeats=2)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--model", type=Path, help="saved pipeline folder (built there when missing)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the saved pipeline even if present")
    p.add_argument("--build-only", action="store_true", help="build (and count FLOPs), then stop")
    p.add_argument("--repeats", type=int, help="timed processes per side (default: cpu 3, gpu 2)")
    p.add_argument("--threads", type=int, help="torch threads in each process, same for both sides (default: cpu 1)")
    p.add_argument("--device", help="default: cpu for --config cpu, cuda for --config gpu")
    p.add_argument("--warmup-steps", type=int, default=2, help="denoising steps of the in-process warm-up call")
    p.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--ref-python", default=str(ROOT / ".venv-ref" / "bin" / "python"))
    p.add_argument("--only", choices=["ours", "ref"], help="run one side only (no ratios)")
    p.add_argument("--label", help="name of this measurement in the table and docs (default: from the options)")
    p.add_argument("--write-docs", action="store_true", help="add or replace this label's table in docs/performance.md")
    p.add_argument("--from-run", type=Path, help="print (and --write-docs) the table of a saved run folder, no runs")
    ours = p.add_argument_group("ours (each applied only where the pipeline exposes it; the run notes say so)")
    ours.add_argument("--cfg-mode", choices=["batched", "sequential"], help="guidance as one batch of 2 or 2 passes")
    ours.add_argument("--offload", action="store_true", help="model CPU offload")
    ours.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (both sides default to 1)")
    ours.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: the config's (cpu fp32, gpu fp16)")
    ours.add_argument("--compile", action="store_true", help="torch.compile the UNet forward")
    ours.add_argument("--channels-last", action="store_true", help="UNet weights in channels_last")
    p.add_argument("--ref-offload", action="store_true", help="enable_model_cpu_offload on the reference too")
    args = p.parse_args()
    for key, value in DEFAULTS[args.config].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.model = (args.model or ROOT / "out" / "bench" / args.config).resolve()
    return args


def label_of(args):
    if args.label:
        return args.label
    parts = [args.config]
    for flag in ("cfg_mode", "decode_chunk_size", "dtype"):
        if getattr(args, flag) is not None:
            parts.append(f"{flag.replace('_', '-')} {getattr(args, flag)}")
    parts += [flag.replace("_", "-") for flag in ("offload", "compile", "channels_last") if getattr(args, flag)]
    return ", ".join(parts)


def ensure_ref_venv(args):
    """Create .venv-ref with the pinned reference stack when it is missing (a fresh clone)."""
    if Path(args.ref_python).exists() or args.ref_python != str(ROOT / ".venv-ref" / "bin" / "python"):
        return
    print("creating .venv-ref with scripts/reference-requirements.txt (diffusers 0.35.2, transformers 4.57.6)")
    subprocess.run([sys.executable, "-m", "venv", str(ROOT / ".venv-ref")], check=True)
    pip = [args.ref_python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["-r", str(ROOT / "scripts" / "reference-requirements.txt")], check=True)


def worker(python, *argv):
    cmd = [python, str(WORKER), *map(str, argv)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def ensure_model(args):
    marker = args.model / "bench.json"
    if marker.exists() and not args.rebuild:
        built = json.loads(marker.read_text())
        if built["config"] != args.config:
            sys.exit(f"{args.model} holds the {built['config']} config; pass --model or --rebuild")
        return
    print(f"building the {args.config} pipeline in {args.model} (reference stack, random weights)")
    worker(args.ref_python, "build", "--config", args.config, "--out", args.model)


def ensure_flops(args):
    path = args.model / "flops.json"
    if not path.exists():
        worker(args.ref_python, "flops", "--config", args.config, "--model", args.model, "--result", path)
    return json.loads(path.read_text())


def load_average():
    return os.getloadavg()


def run_all(args, run_dir):
    """ABBA order (ours, ref, ref, ours, ours, ...) so slow drifts of the shared machine hit both sides alike."""
    sides = [args.only] if args.only else ["ours", "ref"]
    results = {side: [] for side in sides}
    loads = [load_average()]
    for i in range(args.repeats):
        for side in sides if i % 2 == 0 else sides[::-1]:
            stem = run_dir / f"{side}-{i}"
            argv = ["run", "--side", side, "--config", args.config, "--model", args.model, "--device", args.device,
                    "--threads", args.threads, "--warmup-steps", args.warmup_steps,
                    "--result", f"{stem}.json", "--frames", f"{stem}.npy"]
            if side == "ours":
                for flag in ("cfg_mode", "decode_chunk_size", "dtype"):
                    if getattr(args, flag) is not None:
                        argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
                argv += [f"--{f.replace('_', '-')}" for f in ("offload", "compile", "channels_last") if getattr(args, f)]
            elif args.ref_offload:
                argv.append("--offload")
            python = args.ours_python if side == "ours" else args.ref_python
            start = time.time()
            worker(python, *argv)
            result = json.loads(Path(f"{stem}.json").read_text())
            result["frames_path"] = f"{stem}.npy"
            results[side].append(result)
            loads.append(load_average())
            print(f"  {side} #{i}: call {result['stages']['wall']['call']:.2f} s wall, "
                  f"{result['stages']['cpu']['call']:.2f} s CPU, peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"(process {time.time() - start:.0f} s, load {loads[-1][0]:.2f})", flush=True)
    return results, loads


def summarize(runs):
    """Per side: the figures of the table, each as a list over runs."""
    def stage(r, clock, key):
        return r["stages"][clock][key]

    rows = {}
    for clock in ("wall", "cpu"):
        rows[f"encode ({clock})"] = [stage(r, clock, "encode") for r in runs]
        rows[f"step mean ({clock})"] = [statistics.mean(stage(r, clock, "steps")) for r in runs]
        rows[f"step median ({clock})"] = [statistics.median(stage(r, clock, "steps")) for r in runs]
        rows[f"VAE decode ({clock})"] = [stage(r, clock, "decode") for r in runs]
        rows[f"whole call ({clock})"] = [stage(r, clock, "call") for r in runs]
    rows["peak RSS (MB)"] = [r["peak_rss_mb"] for r in runs]
    rows["RSS after load (MB)"] = [r["rss_mb"]["loaded"]["current"] for r in runs]
    if all("gpu" in r for r in runs):
        rows["GPU peak allocated (MB)"] = [r["gpu"]["peak_allocated_mb"] for r in runs]
        rows["GPU allocated after load (MB)"] = [r["gpu"]["after_load_allocated_mb"] for r in runs]
    rows["load (s)"] = [r["load_s"] for r in runs]
    return rows


def fmt(values, unit):
    med = statistics.median(values)
    if unit == "MB":
        text = f"{med:.0f}"
        spread = f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else ""
    else:
        text = f"{med:.3f}" if med < 10 else f"{med:.2f}"
        spread = f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
    return text + spread


def frame_differences(results):
    """Largest |ours - reference| over every pixel of the timed calls' frames, and each side's largest
    run-to-run difference (determinism)."""
    frames = {side: [np.load(r["frames_path"]) for r in runs] for side, runs in results.items()}
    out = {}
    for side, arrays in frames.items():
        out[f"{side} run-to-run"] = max((float(np.abs(a - arrays[0]).max()) for a in arrays), default=0.0)
    if len(frames) == 2:
        out["ours vs reference"] = max(float(np.abs(a - b).max()) for a in frames["ours"] for b in frames["ref"])
        out["ours vs reference (mean)"] = float(np.abs(frames["ours"][0] - frames["ref"][0]).mean())
    return out


def table(args, results, loads, flops):
    sides = list(results)
    summary = {side: summarize(runs) for side, runs in results.items()}
    first = results[sides[0]][0]
    lines = [
        f"### {label_of(args)}",
        "",
        f"{first['frames_shape'][1]} frames of {first['frames_shape'][2]}x{first['frames_shape'][3]}, "
        f"{len(first['stages']['wall']['steps'])} steps, {first['dtype']} on {first['device']}, "
        f"{first['threads']} torch thread(s), {args.repeats} timed process(es) per side, ABBA order. "
        f"Seconds (or MB): median (min-max).",
        "",
    ]
    header = "| stage | " + " | ".join("ours" if s == "ours" else "reference" for s in sides)
    header += " | ours / ref |" if len(sides) == 2 else " |"
    lines += [header, "|---" * (len(sides) + 1 + (len(sides) == 2)) + "|"]
    for row in summary[sides[0]]:
        unit = "MB" if "MB" in row else "s"
        cells = [fmt(summary[s][row], unit) for s in sides]
        if len(sides) == 2:
            ratio = statistics.median(summary["ours"][row]) / statistics.median(summary["ref"][row])
            cells.append(f"{ratio:.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, value in frame_differences(results).items():
        lines.append(f"- max |frame difference| {key}: {value:.2e}")
    for side in sides:
        notes = sorted({n for r in results[side] for n in r["notes"]})
        if notes:
            lines.append(f"- {side} options: " + "; ".join(notes))
        bad = [r["frames_nonfinite"] for r in results[side] if r["frames_nonfinite"]]
        if bad:
            lines.append(f"- {side}: {bad[0]} non-finite pixels in the output")
    sat = first["frames_saturated"]
    lines.append(f"- pixels clamped at 0 or 1 (random weights): {100 * sat:.1f} %")
    lines.append(
        f"- FLOPs (torch.utils.flop_counter, meta device): one UNet step (CFG batch of 2) "
        f"{flops['unet_step'] / 1e12:.3f} TFLOP, one VAE frame decode {flops['vae_frame'] / 1e12:.4f} TFLOP, "
        f"video {flops['video'] / 1e12:.2f} TFLOP")
    for side in sides:
        call = statistics.median(summary[side]["whole call (wall)"])
        rate = flops["video"] / call
        text = f"- {side}: {rate / 1e12:.3f} TFLOP/s achieved over the whole call"
        gpu = results[side][0].get("gpu")
        if gpu:
            peak = next((v for k, v in GPU_PEAK_FLOPS.items() if k in gpu["name"]), None)
            if peak:
                text += (f", {100 * rate / peak:.1f} % of the {gpu['name']}'s {peak / 1e12:.0f} TFLOP/s dense "
                         f"fp16/bf16 peak; FLOP floor {flops['video'] / peak:.1f} s, ours/floor {call * peak / flops['video']:.2f}")
        lines.append(text)
    lines.append(f"- load average (1 min) before / during / after: {loads[0][0]:.2f} / "
                 f"{statistics.median(l[0] for l in loads[1:-1]) if len(loads) > 2 else loads[-1][0]:.2f} / "
                 f"{loads[-1][0]:.2f}")
    when = datetime.datetime.fromtimestamp(Path(first["frames_path"]).stat().st_mtime)
    lines.append(f"- measured {when.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'}")
    return "\n".join(lines) + "\n"


def write_docs(label, text):
    """Replace (or append) the block between this label's markers in docs/performance.md."""
    begin, end = f"<!-- bench: {label} -->", f"<!-- /bench: {label} -->"
    block = f"{begin}\n{text}{end}\n"
    doc = DOCS.read_text() if DOCS.exists() else "# Performance\n\n"
    if begin in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(doc)
    print(f"updated {DOCS.relative_to(ROOT)} ({label})")


def load_run(args):
    """Results and load averages of a saved run folder (the options must be given again for the label)."""
    results = {}
    for path in sorted(args.from_run.glob("*-*.json")):
        result = json.loads(path.read_text())
        result["frames_path"] = str(path.with_suffix(".npy"))
        results.setdefault(result["side"], []).append(result)
    results = {side: results[side] for side in ("ours", "ref") if side in results}
    args.repeats = max(len(runs) for runs in results.values())
    loads_path = args.from_run / "loads.json"
    loads = json.loads(loads_path.read_text()) if loads_path.exists() else [[float("nan")]] * 2
    return results, loads


def main():
    args = parse_args()
    if args.from_run:
        flops = json.loads((args.model / "flops.json").read_text())
        results, loads = load_run(args)
        run_dir = args.from_run
    else:
        ensure_ref_venv(args)
        ensure_model(args)
        flops = ensure_flops(args)
        if args.build_only:
            print(json.dumps(flops))
            return
        run_dir = ROOT / "out" / "bench" / "runs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True)
        print(f"{label_of(args)}: {args.repeats} x "
              f"{'ours' if args.only == 'ours' else 'ref' if args.only else 'ours + ref'} in {run_dir.relative_to(ROOT)}",
              flush=True)
        results, loads = run_all(args, run_dir)
        (run_dir / "loads.json").write_text(json.dumps(loads))
    text = table(args, results, loads, flops)
    (run_dir / "table.md").write_text(text)
    print()
    print(text)
    if args.write_docs:
        write_docs(label_of(args), text)


if __name__ == "__main__":
    main()
