"""Training steps per second on 1 process vs 2 under torchrun (docs/training.md, "Many processes").

    python scripts/bench_train.py                         # CPU, the embedded tiny model, 64x64, 8 frames
    python scripts/bench_train.py --device cuda --parallel fsdp --steps 20   # on a machine with 2 GPUs

The same global batch both ways (1 process with batch 2b, 2 ranks with batch b each), synthetic clips, one thread
per process on the CPU. Steps per second come from log.jsonl's timestamps, after the first step (process-group
and FSDP2 set-up, lazy initialisation). The load average (/proc/loadavg) before and after each run is printed:
on a shared machine it says how many cores the run really had.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "weights" / "tiny-demo"


def run(processes: int, args, folder: Path) -> float:
    """Steps per second of one run (after its first step)."""
    cfg = dict(model=str(MODEL), output_dir=str(folder / f"out{processes}"), num_clips=64, max_steps=args.steps,
               batch_size=args.batch * 2 // processes, checkpoint_every=10 ** 6, lr_warmup_steps=1,
               device=args.device, parallel=args.parallel, num_threads=1)
    (folder / f"cfg{processes}.json").write_text(json.dumps(cfg))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)] if processes > 1 \
        else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    load = Path("/proc/loadavg").read_text().split()[0]
    subprocess.run([*launcher, "-m", "i2vgen", "train", "--config", str(folder / f"cfg{processes}.json")], env=env,
                   check=True, capture_output=True)
    seconds = [json.loads(line)["seconds"] for line in (folder / f"out{processes}" / "log.jsonl").read_text().splitlines()]
    rate = (len(seconds) - 1) / (seconds[-1] - seconds[0])
    print(f"{processes} process(es), batch {cfg['batch_size']} each: {rate:.2f} steps/s "
          f"(load average {load} before, {Path('/proc/loadavg').read_text().split()[0]} after)")
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=1, help="per rank on 2 processes (1 process: twice that)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, two = run(1, args, Path(tmp)), run(2, args, Path(tmp))
    print(f"2 processes / 1 process: {two / one:.2f}x the steps per second, at the same global batch")


if __name__ == "__main__":
    main()
