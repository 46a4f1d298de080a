"""Check the time estimate that `i2vgen generate` prints (i2vgen/apps/estimate.py) against measured wall times.

    python scripts/check_estimate.py [--threads 1] [--only 0 2]   # the cases below on this CPU: a markdown table

For each case: the estimate (FLOPs counted on meta tensors over the matmul throughput measured just before), then
the wall time of the same video through the same render path as the CLI (one 1-step warm-up call first, so that
kernel warm-up is not timed), and their ratio. The estimate is a lower bound, so the ratio should stay below 1;
how far below says how much of the device's matmul peak the call reaches. Cases: the embedded tiny demo at its own
size, and a wider random-weight UNet (block_out_channels 64-256, as scripts/bench.py's cpu config) swapped into it.
"""

import argparse
import os
import time
from pathlib import Path

import PIL.Image
import torch

from i2vgen.apps.estimate import ModelShape, estimate
from i2vgen.apps.render import EMBEDDED_MODEL, VideoRequest, render
from i2vgen.compat.pipeline import I2VGenXLPipeline
from i2vgen.models.unet import I2VGenXLUNet, I2VGenXLUNetConfig

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "red_circle.png"
CASES = [  # (name, wide UNet?, request options)
    ("tiny demo 64x64, 8 frames, 25 steps, guided", False,
     dict(height=64, width=64, frames=8, steps=25, guidance=6.0)),
    ("tiny demo 64x64, 16 frames, 25 steps, unguided", False,
     dict(height=64, width=64, frames=16, steps=25, guidance=1.0)),
    ("wide UNet 128x128, 8 frames, 4 steps, guided", True,
     dict(height=128, width=128, frames=8, steps=4, guidance=6.0)),
    ("wide UNet 256x256, 4 frames, 2 steps, guided", True,
     dict(height=256, width=256, frames=4, steps=2, guidance=6.0)),
]


def wide_unet(cross_attention_dim: int) -> I2VGenXLUNet:
    torch.manual_seed(0)
    config = I2VGenXLUNetConfig(block_out_channels=(64, 128, 256, 256), cross_attention_dim=cross_attention_dim,
                                attention_head_dim=32, norm_num_groups=32)
    return I2VGenXLUNet(config).eval()


def measure(pipe, request: VideoRequest, image) -> float:
    warmup = VideoRequest(**{**request.__dict__, "steps": 1})
    render(pipe, warmup, image, 0)
    start = time.perf_counter()
    render(pipe, request, image, 0)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="*", help="case numbers to run (default: all)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = I2VGenXLPipeline.from_pretrained(EMBEDDED_MODEL)
    tiny.set_progress_bar_config(disable=True)
    wide = I2VGenXLPipeline(**{**tiny.components, "unet": wide_unet(tiny.unet.config.cross_attention_dim)})
    wide.set_progress_bar_config(disable=True)
    image = PIL.Image.open(IMAGE).convert("RGB")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs\n")
    print("| case | estimate (lower bound) | measured | estimate / measured | load avg before, after |")
    print("| --- | --- | --- | --- | --- |")
    for number, (name, is_wide, options) in enumerate(CASES):
        if args.only and number not in args.only:
            continue
        pipe = wide if is_wide else tiny
        request = VideoRequest(image=str(IMAGE), prompt="a red circle moving right", **options)
        load_before = os.getloadavg()[0]
        found = estimate(request, ModelShape.of_pipeline(pipe), torch.device("cpu"), torch.float32)
        seconds = measure(pipe, request, image)
        print(f"| {name} | {found.seconds:.2f} s ({found.flops / 1e9:.1f} GFLOP at "
              f"{found.flops_per_second / 1e9:.0f} GFLOP/s) | {seconds:.2f} s | {found.seconds / seconds:.2f} | "
              f"{load_before:.1f}, {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
