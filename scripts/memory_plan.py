"""Peak GPU memory of one image-to-video call at the released size, per stage and in all, ours beside the reference.

    python scripts/memory_plan.py                                  # the default call (1280x704, 16 frames, fp16)
    python scripts/memory_plan.py --offload --guidance sequential --forward-chunking --num-frames 32
    python scripts/memory_plan.py --docs                           # the configurations in docs/performance.md
    python scripts/memory_plan.py --long-videos                    # 16-128 frames, FreeNoise (docs/long_videos.md)

No GPU is needed: scripts/_memory_worker.py builds each side's pipeline on fake tensors (real shapes and dtypes,
no data; UNet 1.42 B, SD 2.1 VAE, OpenCLIP ViT-H/14 towers) and runs every stage of a call under MemTracker, in
its own environment (ours in .venv, the reference in /work/venv-ref or --ref-python). A stage's peak here is its
measured peak (its model, its inputs, its activations) plus the parameters of the other models the pipeline keeps
on the device meanwhile (RESIDENT); the whole call's peak is the largest stage's. Released-size runs take about a
minute of CPU per side and configuration; results are cached under out/memory_plan/.

What the figures leave out (add a margin for them, see docs/performance.md): the CUDA context (300-500 MB, not
counted by torch.cuda.max_memory_allocated either), the caching allocator's rounding and fragmentation, kernel
workspaces (cuBLAS, cuDNN convolution algorithms), and the few-MB tensors carried between stages (prompt tokens,
image embeddings) outside the stages that read them.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from _memory_worker import STAGES, add_call_arguments, call_of  # noqa: E402

OUT = ROOT / "out" / "memory_plan"
DOCS = ROOT / "docs" / "performance.md"
GIB = 2 ** 30
MODELS = ("text_encoder", "image_encoder", "unet", "vae")
STAGE_MODEL = {"text": "text_encoder", "image": "image_encoder", "image_latents": "vae", "step": "unet",
               "decode": "vae"}
# Models on the device during each stage under model CPU offload. Ours moves each model on for its stage and
# off after it. The reference (accelerate hooks, order text_encoder -> image_encoder -> unet -> vae) offloads a
# model only when the next one in that order starts, so the image encoder stays during the VAE encode of the
# image, and the VAE, used out of order, stays on the device through the denoising loop.
RESIDENT = {
    "ours": {stage: (model,) for stage, model in STAGE_MODEL.items()},
    "ref": dict(text=("text_encoder",), image=("image_encoder",), image_latents=("image_encoder", "vae"),
                step=("unet", "vae"), decode=("vae",)),
}
# The configurations of docs/performance.md: (label, call options).
MEMORY_OPTIONS = dict(offload=True, guidance="sequential", decode_chunk_size=1, forward_chunking=True)
DOC_CONFIGS = [
    ("default call: 1280x704, 16 frames, fp16, no option", {}),
    ("memory options, 16 frames", MEMORY_OPTIONS),
    ("memory options, 32 frames", dict(MEMORY_OPTIONS, num_frames=32)),
]


def measure(side: str, call: dict, python: str, fresh: bool = False) -> dict:
    """The worker's per-stage result for one side and call, from the cache when present."""
    key = hashlib.sha1(json.dumps([side, call], sort_keys=True).encode()).hexdigest()[:12]
    path = OUT / f"{side}-{key}.json"
    if fresh or not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        argv = [python, str(ROOT / "scripts" / "_memory_worker.py"), "--side", side, "--result", str(path)]
        for name, value in call.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv += [flag] if value else []
            else:
                argv += [flag, str(value)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        print(f"measuring {side}: {' '.join(argv[2:])}", file=sys.stderr)
        proc = subprocess.run(["nice", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(path.read_text())


def plan(result: dict, offload: bool) -> dict:
    """Per stage: resident parameters, activations (everything else the stage holds) and the peak; "call": the
    largest stage. Bytes."""
    params, side = result["params"], result["side"]
    out = {}
    for stage in STAGES:
        measured = result["stages"][stage]
        resident = RESIDENT[side][stage] if offload else MODELS
        others = sum(params[m] for m in resident if m != STAGE_MODEL[stage])
        resident_params = measured["params"] + others
        out[stage] = dict(params=resident_params, activations=measured["peak"] - measured["params"],
                          peak=measured["peak"] + others)
    out["call"] = dict(max(out.values(), key=lambda s: s["peak"]))
    return out


STAGE_NAMES = dict(text="text encoder (prompt, negative prompt)", image="image encoder (CLIP embedding)",
                   image_latents="image latents (VAE encode of the first frame)",
                   step="one denoising step (UNet, guidance, DDIM)", decode="decode (VAE, float32 video)",
                   call="**whole call (largest stage)**")


def cell(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['peak'] / GIB:.2f} ({s['params'] / GIB:.2f} + {s['activations'] / GIB:.2f})"


def table(label: str, ours: dict | None, ref: dict | None, notes: list[str]) -> str:
    lines = [f"**{label}**", "", "| stage | ours: peak (parameters + activations), GiB | reference | ours / reference |",
             "|---|---|---|---|"]
    for stage in (*STAGES, "call"):
        o, r = (p[stage] if p else None for p in (ours, ref))
        ratio = f"{o['peak'] / r['peak']:.2f}" if o and r else "-"
        lines.append(f"| {STAGE_NAMES[stage]} | {cell(o)} | {cell(r)} | {ratio} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def options_text(call: dict, offload: bool, side: str) -> str:
    parts = [f"{call['width']}x{call['height']}", f"{call['num_frames']} frames", call["dtype"],
             f"{call['num_inference_steps']} steps (one measured: every step is the same)",
             f"guidance {call['guidance_scale']:g} " + (call["guidance"] if side == "ours" else "batched"),
             f"decode_chunk_size {call['decode_chunk_size']}"]
    parts += [name for name, on in (("model CPU offload", offload), ("VAE tiling", call["vae_tiling"]),
                                    ("enable_forward_chunking", call["forward_chunking"] and side == "ours")) if on]
    return ", ".join(parts)


def run_config(label: str, call: dict, offload: bool, args) -> str:
    sides = ["ours", "ref"] if args.side == "both" else [args.side]
    results = {}
    for side in sides:
        # The reference always batches guidance. Its enable_forward_chunking is left off: it splits every
        # feed-forward into rows of one along dim 0, which in a first-level temporal block is 225,280 slices.
        side_call = dict(call, guidance="batched", forward_chunking=False) if side == "ref" else call
        results[side] = plan(measure(side, side_call, args.ours_python if side == "ours" else args.ref_python,
                                     args.fresh), offload)
    notes = [f"{name}: {options_text(call, offload, side)}" for side, name in (("ours", "ours"), ("ref", "reference"))
             if side in results]
    return table(label, results.get("ours"), results.get("ref"), notes)


LONG_FRAMES = (16, 32, 64, 128)


def long_video_table(args) -> str:
    """Our whole call's peak with the memory options and FreeNoise (windows of 16 frames, 4 apart), 16-128 frames."""
    lines = ["| frames | whole call: peak GiB | denoising step: peak (parameters + activations) | decode: peak |",
             "|---|---|---|---|"]
    for frames in LONG_FRAMES:
        call = dict(call_of(args), **{k: v for k, v in MEMORY_OPTIONS.items() if k != "offload"}, num_frames=frames,
                    free_noise=True)
        p = plan(measure("ours", call, args.ours_python, args.fresh), offload=True)
        lines.append(f"| {frames} | {p['call']['peak'] / GIB:.2f} | {cell(p['step'])} | {p['decode']['peak'] / GIB:.2f} |")
    return "\n".join(lines) + "\n"


def write_docs(text: str, path: Path = DOCS, marker: str = "memory plan"):
    """Replace the section between `<!-- marker -->` and `<!-- /marker -->` of `path` with `text`."""
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    docs = path.read_text()
    if begin not in docs:
        sys.exit(f"{path} has no '{begin}' ... '{end}' section to replace")
    head, rest = docs.split(begin, 1)
    path.write_text(head + begin + "\n" + text + end + rest.split(end, 1)[1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_call_arguments(p)
    p.add_argument("--offload", action="store_true", help="model CPU offload (both sides)")
    p.add_argument("--side", choices=["both", "ours", "ref"], default="both")
    p.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    p.add_argument("--ref-python", default="/work/venv-ref/bin/python")
    p.add_argument("--fresh", action="store_true", help="measure again even when a cached result exists")
    p.add_argument("--docs", action="store_true", help="the configurations of docs/performance.md, written there")
    p.add_argument("--long-videos", action="store_true", help="16-128 frames with the memory options and FreeNoise "
                                                              "(the table in docs/long_videos.md)")
    args = p.parse_args()
    if args.long_videos:
        text = long_video_table(args)
    elif args.docs:
        base = call_of(args)
        text = "\n".join(run_config(label, dict(base, **{k: v for k, v in opts.items() if k != "offload"}),
                                    opts.get("offload", False), args) for label, opts in DOC_CONFIGS)
        write_docs(text)
    else:
        text = run_config("memory plan", call_of(args), args.offload, args)
    print(text)


if __name__ == "__main__":
    main()
