"""Time one UNet denoising step (a guided batch of 2, the conditioning encoded once) on the CPU.

Used to check that the attention-processor hook (issue 11) costs nothing on the default path: run it on a
copy of the code before the change and on the code after, alternating, on the same machine:

    PYTHONPATH=/path/to/before python scripts/bench_unet_step.py
    PYTHONPATH=.               python scripts/bench_unet_step.py

Prints the median and the spread (min, max) of `--repeat` steps per model size, in milliseconds.
"""

import argparse
import statistics
import time

import torch

import i2vgen
from i2vgen import I2VGenXLUNet

SIZES = {
    # the tiny demo model's shape (weights/tiny-demo): many small attention calls, so Python overhead shows most
    "tiny": dict(config=dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                             cross_attention_dim=32, attention_head_dim=8,
                             down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                             up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")),
                 frames=16, size=(8, 8)),
    # four levels as released, narrower: 32 transformer blocks, as many attention calls as the released UNet
    "small": dict(config=dict(block_out_channels=(64, 128, 128, 128), layers_per_block=2, norm_num_groups=32,
                              cross_attention_dim=64, attention_head_dim=32),
                  frames=4, size=(16, 16)),
}


def step_times(name: str, repeat: int) -> list[float]:
    spec = SIZES[name]
    torch.manual_seed(0)
    unet = I2VGenXLUNet(**spec["config"]).eval()
    (h, w), frames, dim = spec["size"], spec["frames"], spec["config"]["cross_attention_dim"]
    sample = torch.randn(1, 4, frames, h, w)
    with torch.no_grad():
        condition = unet.encode_condition(fps=16, image_latents=torch.randn(1, 4, frames, h, w),
                                          image_embeddings=torch.randn(2, dim), encoder_hidden_states=torch.randn(2, 7, dim))
        times = []
        for i in range(repeat + 2):  # two warm-up steps
            start = time.perf_counter()
            unet(sample, 500, condition=condition)
            if i >= 2:
                times.append(1000 * (time.perf_counter() - start))
    return times


def processor_overhead(calls: int = 20000) -> float | None:
    """Microseconds that going through the default processor adds to one attention call: the AttnProcessor call
    minus the bare F.scaled_dot_product_attention call, on tensors small enough that the kernel costs little.
    None for code without processors."""
    try:
        from i2vgen.models.attention import Attention, AttnProcessor
    except ImportError:
        return None
    attn, processor = Attention(8, heads=1, head_dim=8), AttnProcessor()
    q = torch.randn(1, 1, 2, 8)
    per_call = {}
    for name, call in (("bare", lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)),
                       ("processor", lambda: processor(attn, q, q, q))):
        best = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                call()
            best.append((time.perf_counter() - start) / calls)
        per_call[name] = min(best)
    return 1e6 * (per_call["processor"] - per_call["bare"])


def attention_calls(name: str) -> int:
    """How many attention layers one UNet step runs (every attention layer but the image-latent encoder's)."""
    spec = SIZES[name]
    with torch.device("meta"):
        unet = I2VGenXLUNet(**spec["config"])
    return sum(type(m).__name__ == "Attention" for n, m in unet.named_modules()
               if not n.startswith("image_latents_temporal_encoder"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.sizes.split(","):
        times = step_times(name, args.repeat)
        print(f"{name:6s} {statistics.median(times):8.2f} ms (min {min(times):.2f}, max {max(times):.2f}; "
              f"{args.repeat} steps, {attention_calls(name)} attention calls per step, {args.threads} thread(s), "
              f"i2vgen from {i2vgen.__file__})")
    overhead = processor_overhead()
    if overhead is not None:
        print(f"default processor: {overhead:+.2f} us per attention call against a bare scaled_dot_product_attention")


if __name__ == "__main__":
    main()
