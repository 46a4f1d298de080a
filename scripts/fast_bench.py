"""Wall time of `pipe.enable_fast_sampling()` against the released DDIM-50 at the released proportions (issue 23).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fast_bench.py [--size 64] [--frames 16] [--order ddim50,fast,...]

Our pipeline with every model at its released size and random weights (UNet 1.42 B, SD 2.1's VAE, OpenCLIP ViT-H/14
towers: scripts/_bench_worker.py's "gpu" configs), a small frame size on the CPU, guidance 9, 16 frames. Whole calls
(text, image, sampling, decode), the two settings alternated (ABBA) in one process after one short warm-up call
each, with the same seeds (ABBA by default; `--order ddim50,fast` when the CPU allows only one of each). Prints one JSON line per call and the median ratio, with the machine's load average.
The reference side is not run here (docs/performance.md: our DDIM step equals the reference's within 1-3 %).
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig,
                          CLIPVisionModelWithProjection)

from _bench_worker import PROMPT, make_input_image, model_configs, write_tiny_tokenizer
from i2vgen import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
from i2vgen.pipelines.clip import CLIPImageProcessor


def released_pipeline() -> I2VGenXLPipeline:
    """Every model at its released size with random weights (seeded), float32."""
    cfg = model_configs("gpu")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_tiny_tokenizer(tmp)
        tokenizer = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), model_max_length=77)
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), projection_dim=cfg["projection_dim"], **special,
                                        **cfg["text"]))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=224, patch_size=14,
                                                            projection_dim=cfg["projection_dim"], **cfg["vision"]))
    return I2VGenXLPipeline(
        vae=AutoencoderKL(**cfg["vae"]), text_encoder=text, tokenizer=tokenizer, image_encoder=vision,
        feature_extractor=CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}),
        unet=I2VGenXLUNet(**cfg["unet"]), scheduler=DDIMScheduler(**cfg["scheduler"]))


def timed_call(pipe, setting: str, args, steps=None) -> float:
    if setting == "fast":
        pipe.enable_fast_sampling()
    try:
        torch.manual_seed(0)
        start = time.perf_counter()
        pipe(PROMPT, make_input_image(args.size, args.size), height=args.size, width=args.size,
             num_frames=args.frames, num_inference_steps=steps, guidance_scale=9.0,
             generator=torch.Generator().manual_seed(0), output_type="np")
        return time.perf_counter() - start
    finally:
        pipe.disable_fast_sampling()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--order", default="ddim50,fast,fast,ddim50", help="the timed calls, in this order")
    parser.add_argument("--out", help="append the JSON lines here too")
    args = parser.parse_args()
    pipe = released_pipeline()
    pipe.set_progress_bar_config(disable=True)
    for setting in ("ddim50", "fast"):
        timed_call(pipe, setting, args, steps=1)  # warm-up
    times = {"ddim50": [], "fast": []}
    for setting in args.order.split(","):
        seconds = timed_call(pipe, setting, args)
        times[setting].append(seconds)
        line = json.dumps({"setting": setting, "seconds": round(seconds, 2), "load": os.getloadavg(),
                           "threads": torch.get_num_threads(), "size": args.size, "frames": args.frames})
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    ratio = statistics.median(times["fast"]) / statistics.median(times["ddim50"])
    print(json.dumps({"fast_over_ddim50": round(ratio, 3)}))


if __name__ == "__main__":
    main()
