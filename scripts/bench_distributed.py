"""Measure what torch.distributed buys on this machine (docs/distributed.md), with the embedded tiny model.

    python scripts/bench_distributed.py                  # 64x64, 8 frames, 20 steps; prints a markdown table
    python scripts/bench_distributed.py --write-docs     # and puts it into docs/distributed.md

Two comparisons, every process with one thread (OMP_NUM_THREADS=1), alternated (A B A B ...) so that a change
in the machine's load hits both sides alike:
- throughput: a job file of --videos videos on 1 process vs under torchrun on 2 processes (job sharding);
- latency: a one-video job file on 1 process vs on 2 processes with --cfg-parallel; and, as the floor that
  CFG-parallel can reach, 1 process with guidance 1: one UNet pass of batch 1 a step, which is each process's
  work in a pair (guidance 9 in one process is one pass of batch 2 a step).
The figures are the run summaries' (rendering only: after the model load, up to the last video written).
Around each run it records the load average (/proc/loadavg) and the CPU time the run's processes got, so a
figure taken on a shared machine says how many cores it actually had.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
DOCS = ROOT / "docs" / "distributed.md"
BEGIN, END = "<!-- bench_distributed: begin -->", "<!-- bench_distributed: end -->"
SUMMARY = re.compile(r"i2vgen: (\d+) done, \d+ skipped, (\d+) failed in ([\d.]+) s")
FLOOR = "1 process, guidance 1 (the floor)"
PROMPTS = ["a red circle moving right", "a blue square moving up", "a green triangle moving left",
           "a yellow circle moving down"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=8, help="videos in the throughput job file (default: 8)")
    p.add_argument("--size", type=int, default=64, help="frame height and width (default: 64, the demo's)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="runs per side and comparison (default: 3)")
    p.add_argument("--python", default=str(PYTHON if PYTHON.exists() else sys.executable))
    p.add_argument("--write-docs", action="store_true", help="replace the figures in docs/distributed.md")
    return p.parse_args()


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run(args, folder: Path, jobs: list[dict], processes: int, options: list[str]) -> dict:
    """One run in a fresh output folder; its rendering seconds, load average and cores used."""
    folder.mkdir(parents=True)
    (folder / "jobs.jsonl").write_text("".join(json.dumps(job) + "\n" for job in jobs))
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)] if processes > 1 else []
    command = [args.python, *launcher, "-m", "i2vgen", "generate", "--jobs", str(folder / "jobs.jsonl"),
               "--out-dir", str(folder / "out"), "--image", str(ROOT / "assets" / "landscape.png"),
               "--height", str(args.size), "--width", str(args.size), "--frames", str(args.frames),
               "--steps", str(args.steps), "--guidance", "9", *options]
    cpu_before, load_before, start = resource.getrusage(resource.RUSAGE_CHILDREN), loadavg(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = SUMMARY.search(result.stdout)
    if result.returncode or not found or int(found[1]) != len(jobs):
        sys.exit(f"run failed ({' '.join(command)}):\n{result.stdout}\n{result.stderr[-3000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"seconds": float(found[3]), "videos": len(jobs), "load": (load_before + loadavg()) / 2,
            "cores": cpu / wall}


def compare(args, root: Path, name: str, jobs: list[dict], sides: dict) -> dict:
    """Alternate the sides `repeats` times; per side the median rendering time and the mean load and cores."""
    runs = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side, (processes, options) in sides.items():
            runs[side].append(run(args, root / f"{name}-{side}-{repeat}", jobs, processes, options))
            print(f"{name} {side} #{repeat}: {runs[side][-1]}", file=sys.stderr)
    return {side: {"seconds": statistics.median(r["seconds"] for r in rs),
                   "load": statistics.mean(r["load"] for r in rs),
                   "cores": statistics.mean(r["cores"] for r in rs)} for side, rs in runs.items()}


def table(args, throughput: dict, latency: dict) -> str:
    one, two = throughput["1 process"], throughput["2 processes"]
    single, pair, floor = latency["1 process"], latency["CFG-parallel, 2 processes"], latency[FLOOR]
    per_minute = {side: 60 * args.videos / t["seconds"] for side, t in throughput.items()}
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()} Linux, {os.cpu_count()} cores "
        f"shared with other work, torch threads 1 per process; tiny demo model, {args.size}x{args.size}, "
        f"{args.frames} frames, {args.steps} steps, guidance 9; median of {args.repeats} alternated runs "
        f"(`python scripts/bench_distributed.py`).",
        "",
        "| comparison | side | rendering | load average | cores the run got | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| throughput, {args.videos} videos | 1 process | {per_minute['1 process']:.1f} videos/min | "
        f"{one['load']:.1f} | {one['cores']:.2f} | |",
        f"| | 2 processes | {per_minute['2 processes']:.1f} videos/min | {two['load']:.1f} | {two['cores']:.2f} | "
        f"**{per_minute['2 processes'] / per_minute['1 process']:.2f}x** videos/min |",
        f"| latency, 1 video | 1 process | {single['seconds']:.2f} s | {single['load']:.1f} | "
        f"{single['cores']:.2f} | |",
        f"| | CFG-parallel, 2 processes | {pair['seconds']:.2f} s | {pair['load']:.1f} | {pair['cores']:.2f} | "
        f"**{pair['seconds'] / single['seconds']:.2f}x** time |",
        f"| | {FLOOR} | {floor['seconds']:.2f} s | {floor['load']:.1f} | {floor['cores']:.2f} | "
        f"{floor['seconds'] / single['seconds']:.2f}x time |",
    ]
    return "\n".join(lines)


def main():
    args = parse_args()
    jobs = [{"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "out": f"{i}.gif"} for i in range(args.videos)]
    with tempfile.TemporaryDirectory(prefix="bench_distributed.") as root:
        throughput = compare(args, Path(root), "throughput", jobs, {"1 process": (1, []), "2 processes": (2, [])})
        latency = compare(args, Path(root), "latency", jobs[:1], {
            "1 process": (1, []), "CFG-parallel, 2 processes": (2, ["--cfg-parallel"]),
            FLOOR: (1, ["--guidance", "1"])})
    text = table(args, throughput, latency)
    print(text)
    if args.write_docs:
        docs = DOCS.read_text()
        head, _, rest = docs.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOCS.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
