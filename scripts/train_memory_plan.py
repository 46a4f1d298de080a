"""Peak GPU memory per rank of one training step of the released UNet: full fine-tuning and LoRA, 448x256 and
1280x704, 16 frames, batch 1 per GPU, with and without gradient checkpointing, float32 and bf16 autocast,
on 1, 2, 4 and 8 GPUs under DDP and FSDP2.

    python scripts/train_memory_plan.py --docs            # every configuration, the table into docs/training.md
    python scripts/train_memory_plan.py --docs --jobs 2   # two measurements at a time
    python scripts/train_memory_plan.py --check-ddp       # DDP's bucket size against the reducer's own

No GPU is needed: scripts/_train_memory_worker.py runs the trainer's own step (setup_optimization, the velocity
loss, backward, clipping, AdamW, EMA) on fake tensors under MemTracker, as rank 0 of a fake process group for
FSDP2, one configuration per process, cached under out/train_memory_plan/ (2-15 minutes each on a 2-core
machine shared with other jobs, FSDP2 the slowest).
What the plan adds to the measured step:
- DDP: gradient buckets as large as the trainable parameters in float32 (the reducer is C++ and needs real
  tensors; --check-ddp compares the size with the reducer's bucket sizes on a real UNet of 1/5 width);
- (beside the table, not in it) the frozen encoders, which the trainer moves to host memory once the clips are
  encoded and brings back only to validate (train.place_encoders): the VAE and both CLIP
  towers in float32, their parameter bytes (exact, built on fake tensors at the released sizes).
"""

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from memory_plan import write_docs  # noqa: E402

OUT = ROOT / "out" / "train_memory_plan"
DOCS = ROOT / "docs" / "training.md"
GIB = 2 ** 30
# A "24 GB" card has 24 GiB; 2 GiB of it are left for what the figures exclude (the CUDA context, kernel
# workspaces, the allocator's rounding and fragmentation): an assumed margin, not a measured one.
FITS_24GB = 22 * GIB
SIZES = ((448, 256), (1280, 704))
WORLD_SIZES = (2, 4, 8)
# checkpointing: True per block, "layer" per layer (bf16 only; with forward chunking in one LoRA row), False none.
ROWS = [dict(mode=mode, width=w, height=h, checkpointing=ckpt, precision=precision)
        for mode, (w, h), ckpt, precision in itertools.product(("full", "lora"), SIZES, (True, False), ("bf16", "no"))]
ROWS += [dict(mode=mode, width=w, height=h, checkpointing="layer", precision="bf16")
         for mode, (w, h) in itertools.product(("full", "lora"), SIZES)]
ROWS += [dict(ROWS[-1], forward_chunking=True)]


def worker(argv: list[str], python: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(["nice", python, str(ROOT / "scripts" / "_train_memory_worker.py"), *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True)


def result_path(step: dict) -> Path:
    return OUT / f"step-{hashlib.sha1(json.dumps(step, sort_keys=True).encode()).hexdigest()[:12]}.json"


def measure(step: dict, python: str, fresh: bool = False) -> dict:
    """The worker's result for one step configuration, from the cache when present."""
    path = result_path(step)
    if fresh or not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        argv = ["--result", str(path)]
        for name, value in step.items():
            flag = "--" + name.replace("_", "-")
            argv += ([flag] if value else []) if isinstance(value, bool) else [flag, str(value)]
        print(f"measuring {' '.join(argv[2:])}", file=sys.stderr)
        proc = worker(argv, python)
        if proc.returncode:
            sys.exit(f"worker failed ({proc.returncode}) on {step}:\n{proc.stderr[-4000:]}")
    return json.loads(path.read_text())


CLIP_VOCAB = 49408  # the released tokenizer's vocabulary (the text tower's token embedding)


def encoder_bytes(python: str) -> int:
    """Parameter bytes of the frozen VAE, CLIP text and CLIP image towers at the released sizes in float32."""
    path = OUT / "encoders.json"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        code = ("import json, sys, torch; sys.path.insert(0, 'scripts');"
                "from torch._subclasses.fake_tensor import FakeTensorMode;"
                "from i2vgen import AutoencoderKL;"
                "from _memory_worker import clip_towers, model_sizes, param_bytes\n"
                "with FakeTensorMode(allow_non_fake_inputs=True):\n"
                f"    text, image = clip_towers('gpu', {CLIP_VOCAB}, dict(bos_token_id=0, eos_token_id=1, "
                "pad_token_id=1))\n"
                "    vae = AutoencoderKL(**model_sizes('gpu')['vae'])\n"
                "print(json.dumps(dict(vae=param_bytes(vae), text_encoder=param_bytes(text), "
                "image_encoder=param_bytes(image))))")
        proc = subprocess.run([python, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"building the encoders failed:\n{proc.stderr[-4000:]}")
        path.write_text(proc.stdout.strip().splitlines()[-1])
    return sum(json.loads(path.read_text()).values())


def step_config(row: dict, world_size: int = 1) -> dict:
    step = dict(config="gpu", height=row["height"], width=row["width"], num_frames=16, batch_size=1,
                mode=row["mode"], lora_rank=8, precision=row["precision"], checkpointing=row["checkpointing"],
                world_size=world_size, parallel="fsdp")
    return step | ({"forward_chunking": True} if row.get("forward_chunking") else {})  # as the worker's step_of


def all_steps() -> list[dict]:
    """Every measurement, in the order worth having first if a run is cut short: one GPU; FSDP2 for the
    recommended settings (bf16, checkpointing) on 2, 4, 8 GPUs for the full UNet at 448x256 and on 8 for the
    others; then the rest."""
    rows = [row for row in ROWS if row["precision"] == "bf16" and row["checkpointing"]]
    first = [step_config(row) for row in ROWS] + [step_config(rows[0], n) for n in WORLD_SIZES]
    first += [step_config(row, 8) for row in sorted(rows[1:], key=lambda r: (-r["width"], r["mode"] == "full"))]
    return first + [step for n in (4, 2, 8) for row in ROWS if (step := step_config(row, n)) not in first]


def cached(step: dict) -> dict | None:
    path = result_path(step)
    return json.loads(path.read_text()) if path.exists() else None


def row_label(row: dict) -> str:
    return " | ".join([{"full": "full UNet", "lora": "LoRA r8"}[row["mode"]], f"{row['width']}x{row['height']}",
                       {True: "per block", "layer": "per layer", False: "no"}[row["checkpointing"]]
                       + (" + forward chunking" if row.get("forward_chunking") else ""),
                       {"bf16": "bf16", "no": "fp32"}[row["precision"]]])


def gib(value: int | None) -> str:
    if value is None:
        return "-"
    text = f"{value / GIB:.1f}"
    return f"**{text}**" if value <= FITS_24GB else text


def table(encoders: int) -> str:
    """Peak GiB per GPU: the measured step plus what the plan adds (DDP buckets); - = not measured. The frozen
    encoders wait in host memory during steps (train.place_encoders): a line below the table gives their size."""
    head = ["| trains | size x 16 frames | gradient checkpointing | precision | 1 GPU | DDP, 2-8 GPUs | "
            + " | ".join(f"FSDP2, {n} GPUs" for n in WORLD_SIZES)
            + " | 1 GPU's peak: weights + EMA + AdamW / the rest |",
            "|" + "---|" * (7 + len(WORLD_SIZES))]
    lines = []
    for row in ROWS:
        one = cached(step_config(row))
        fsdp = [(r := cached(step_config(row, n))) and r["peak"] for n in WORLD_SIZES]
        cells = ["-", "-", "-"]
        if one:
            kinds = one["by_kind"]
            state = kinds["Parameter"] + kinds["Buffer"] + kinds["Optstate"]
            cells = [gib(one["peak"]), gib(one["peak"] + one["trainable_bytes"]),
                     f"{state / GIB:.1f} / {(one['peak'] - state) / GIB:.1f}"]
        lines.append(f"| {row_label(row)} | {cells[0]} | {cells[1]} | " + " | ".join(gib(v) for v in fsdp)
                     + f" | {cells[2]} |")
    note = (f"\nNot in the cells: the frozen encoders (VAE, CLIP text and image towers, float32), "
            f"{encoders / GIB:.2f} GiB,\non the GPU only while clips are encoded and during validation.\n")
    return "\n".join(head + lines) + "\n" + note


def check_ddp(python: str) -> str:
    """DDP's buckets against the trainable bytes the plan adds, on real UNets of 1/5 width (full and LoRA)."""
    lines = []
    for mode in ("full", "lora"):
        proc = worker(["--check-ddp", "--config", "cpu", "--mode", mode, "--world-size", "2", "--result", "-"], python)
        if proc.returncode:
            sys.exit(f"DDP check failed:\n{proc.stderr[-4000:]}")
        lines.append(f"{mode}: {proc.stdout.strip().splitlines()[-1]}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=sys.executable, help="the interpreter that runs the worker")
    p.add_argument("--jobs", type=int, default=1, help="measurements at a time")
    p.add_argument("--fresh", action="store_true", help="measure again even when a cached result exists")
    p.add_argument("--docs", action="store_true", help="write the table into docs/training.md")
    p.add_argument("--cached", action="store_true", help="only the cached results (- for the others)")
    p.add_argument("--check-ddp", action="store_true", help="compare DDP's buckets with the plan's figure")
    args = p.parse_args()
    if args.check_ddp:
        print(check_ddp(args.python))
        return
    if not args.cached:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda step: measure(step, args.python, args.fresh), all_steps()))
    text = table(encoder_bytes(args.python))
    if args.docs:
        write_docs(text, DOCS, "train memory plan")
    print(text)


if __name__ == "__main__":
    main()
