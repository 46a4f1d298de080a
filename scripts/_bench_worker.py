"""One process of the benchmark in scripts/bench.py. Not part of the package; never imported by it.

Three jobs, each run by bench.py in a fresh interpreter:

    build  (reference venv) build a random-weight pipeline with diffusers + transformers 4.x and save it once in
           the diffusers folder layout, with a tiny locally written CLIP tokenizer and an input image.
    flops  (reference venv) count the FLOPs of one UNet step (CFG batch) and one VAE frame decode with
           torch.utils.flop_counter on the meta device: shapes only, so the full-width GPU config counts on a laptop.
    run    (either venv) load the saved pipeline with `--side ours` (i2vgen) or `--side ref` (diffusers), run one
           warm-up call, then one timed call with per-stage timers; write a JSON result and the frames (.npy).

Only the `ref` side and `build`/`flops` import diffusers; the `ours` side imports i2vgen only.
"""

import argparse
import functools
import inspect
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np
import torch

# Shapes of the two benchmark configs. The model configs themselves are written to the saved folder by `build`;
# `run` reads the call arguments from here.
CALLS = {
    "cpu": dict(height=128, width=128, num_frames=8, num_inference_steps=6, guidance_scale=9.0, dtype="fp32"),
    "gpu": dict(height=704, width=1280, num_frames=16, num_inference_steps=50, guidance_scale=9.0, dtype="fp16"),
}
PROMPT = "a red fox running through fresh snow at sunrise"
SEED = 0
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------------------- build
def model_configs(config):
    """Configs of every model for `config`; the released ones (REFERENCE.md) at full or reduced width."""
    if config == "gpu":
        unet = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024)  # the released UNet
        vae_channels = (128, 256, 512, 512)  # SD 2.1's KL-VAE
        # OpenCLIP ViT-H/14 towers at their released sizes (their time is small next to 50 UNet steps).
        text = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
        vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16)
        projection_dim = 1024
    else:
        # Released block types, layers_per_block 2, norm groups 32, head dim 64 (heads 1, 2, 4, 4), at 1/5 width.
        unet = dict(block_out_channels=(64, 128, 256, 256), cross_attention_dim=128)
        vae_channels = (32, 64, 128, 128)  # SD's 4 levels at 1/4 width (groups of 1 channel at the first level)
        text = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
        vision = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
        projection_dim = 128
    unet.update(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=64,
        num_attention_heads=None,
    )
    vae = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=vae_channels,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=768,
        scaling_factor=0.18125,
        force_upcast=True,
    )
    scheduler = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return dict(unet=unet, vae=vae, scheduler=scheduler, text=text, vision=vision, projection_dim=projection_dim)


def write_tiny_tokenizer(folder):
    """A byte-level CLIP BPE vocabulary with no merges: every byte is a token, with and without the end-of-word
    mark, plus the two special tokens. The CLIP tokenizer accepts it; no hub access is needed."""
    try:
        from transformers.models.clip.tokenization_clip import bytes_to_unicode
    except ImportError:  # transformers 5 keeps it in one place only
        from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return vocab


def make_input_image(width, height):
    """A smooth, deterministic RGB picture a little larger than the target, off its aspect ratio, so both
    center-crop-wide branches of the preprocessing do real work."""
    from PIL import Image

    rng = np.random.RandomState(SEED)
    small = (rng.rand(9, 16, 3) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((width * 9 // 8, height * 9 // 8 + 24), Image.BILINEAR)


def build(args):
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    cfg = model_configs(args.config)
    dtype = DTYPES[CALLS[args.config]["dtype"]]
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_tiny_tokenizer(tmp)
        tokenizer = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), model_max_length=77)
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    special["pad_token_id"] = special["eos_token_id"]

    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=77, projection_dim=cfg["projection_dim"],
                       hidden_act="gelu", **special, **cfg["text"])
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(image_size=224, patch_size=14, projection_dim=cfg["projection_dim"], hidden_act="gelu",
                         **cfg["vision"])
    )
    unet = I2VGenXLUNet(**cfg["unet"])
    # A fresh build zero-initialises the last conv of every temporal conv layer (identity at the start of
    # training), which would leave those layers out of the frame comparison: give them small random values.
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if param.ndim > 1 and not param.any():
                param.normal_(std=0.02)
    pipe = I2VGenXLPipeline(
        vae=AutoencoderKL(**cfg["vae"]),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
        unet=unet,
        scheduler=DDIMScheduler(**cfg["scheduler"]),
    ).to(dtype)
    pipe.save_pretrained(args.out)
    call = CALLS[args.config]
    make_input_image(call["width"], call["height"]).save(os.path.join(args.out, "input.png"))
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(dict(config=args.config, dtype=CALLS[args.config]["dtype"], unet_parameters=n_unet), f, indent=1)
    print(f"saved {args.config} pipeline ({n_unet / 1e6:.1f} M UNet parameters) to {args.out}")


# ----------------------------------------------------------------------------------------------------------- flops
def flops(args):
    """FLOPs of one denoising step (UNet on the CFG batch of 2) and of decoding one frame, on the meta device."""
    from diffusers import AutoencoderKL, I2VGenXLUNet
    from torch.utils.flop_counter import FlopCounterMode

    call = CALLS[args.config]
    if args.model and os.path.exists(os.path.join(args.model, "unet", "config.json")):
        unet_cfg = I2VGenXLUNet.load_config(args.model, subfolder="unet")
        vae_cfg = AutoencoderKL.load_config(args.model, subfolder="vae")
    else:  # no saved pipeline needed: the configs `build` would write
        unet_cfg, vae_cfg = model_configs(args.config)["unet"], model_configs(args.config)["vae"]
    with torch.device("meta"):
        unet = I2VGenXLUNet.from_config(unet_cfg).eval()
        vae = AutoencoderKL.from_config(vae_cfg).eval()
    h, w, f = call["height"] // 8, call["width"] // 8, call["num_frames"]
    dim = unet_cfg["cross_attention_dim"]
    kw = dict(device="meta")
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            unet(
                torch.empty(2, 4, f, h, w, **kw),
                torch.tensor(999, **kw),
                encoder_hidden_states=torch.empty(2, 77, dim, **kw),
                fps=torch.tensor([16, 16], **kw),
                image_latents=torch.empty(2, 4, f, h, w, **kw),
                image_embeddings=torch.empty(2, 1, dim, **kw),
            )
        unet_step = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            vae.decode(torch.empty(1, 4, h, w, **kw))
        vae_frame = counter.get_total_flops()
    steps, frames = call["num_inference_steps"], call["num_frames"]
    out = dict(unet_step=unet_step, vae_frame=vae_frame, video=steps * unet_step + frames * vae_frame)
    with open(args.result, "w") as fh:
        json.dump(out, fh)
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------------------------- run
ENCODERS = ("text_encoder", "image_encoder", "vae.encode", "unet.encode_condition")


class Timeline:
    """Start/end times (wall clock and this process's CPU time) of the calls that mark the stages of one
    pipeline call, and the peak RSS when each call returned."""

    def __init__(self, cuda):
        self.cuda = cuda
        self.events = []  # (name, wall start, wall end, cpu start, cpu end, peak RSS MB at end)

    def now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def wrap(self, obj, method, name):
        """Time every call of obj.method (an instance attribute shadows the class's, so callers see the wrapper)."""
        inner = getattr(obj, method)

        @functools.wraps(inner)
        def timed(*a, **k):
            start, cpu_start = self.now()
            out = inner(*a, **k)
            end, cpu_end = self.now()
            self.events.append((name, start, end, cpu_start, cpu_end, rss_mb()[1]))
            return out

        setattr(obj, method, timed)

    def stages(self, call_start, call_end):
        """Encode = call start to the first UNet call; step i ends with the i-th scheduler step and starts where the
        previous one ended; decode = the VAE decode calls. Each as wall seconds and CPU seconds."""
        unet = [e for e in self.events if e[0] == "unet"]
        step_ends = [e for e in self.events if e[0] == "scheduler.step"]
        first = (unet[0][1], unet[0][3]) if unet else call_start
        bounds = [first] + [(e[2], e[4]) for e in step_ends]
        last = bounds[-1]

        def total(name, clock):
            return sum(e[2 + 2 * clock] - e[1 + 2 * clock] for e in self.events if e[0] == name)

        def peak_after(name):
            return max((e[5] for e in self.events if e[0] == name), default=None)

        out = {}
        for clock, key in ((0, "wall"), (1, "cpu")):
            out[key] = dict(
                encode=first[clock] - call_start[clock],
                steps=[b[clock] - a[clock] for a, b in zip(bounds, bounds[1:])],
                decode=total("vae.decode", clock),
                after_loop=call_end[clock] - last[clock],
                call=call_end[clock] - call_start[clock],
                modules={n: total(n, clock) for n in sorted({e[0] for e in self.events})},
            )
        out["unet_calls"] = len(unet)
        out["peak_rss_mb_after"] = dict(
            encode=max((e[5] for e in self.events if e[0] in ENCODERS), default=None),
            first_step=step_ends[0][5] if step_ends else None,
            loop=peak_after("scheduler.step"),
            decode=peak_after("vae.decode"),
        )
        return out


def rss_mb():
    """(current RSS, peak RSS) of this process in MB; Linux reports ru_maxrss in KiB."""
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_pipeline(args, dtype, device):
    """The pipeline of the side under test, and notes on which of our options were applied or skipped."""
    notes = []
    if args.side == "ref":
        from diffusers import I2VGenXLPipeline

        pipe = I2VGenXLPipeline.from_pretrained(args.model, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        if args.offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        return pipe, notes

    # The package of the checkout this script lives in, whatever is installed in the environment.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from i2vgen import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(args.model, torch_dtype=dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    if args.offload:
        if hasattr(pipe, "enable_model_cpu_offload"):
            pipe.enable_model_cpu_offload(device=device)
            notes.append("offload: enable_model_cpu_offload")
        else:
            notes.append("offload: SKIPPED (pipeline has no enable_model_cpu_offload)")
            pipe.to(device)
    else:
        pipe.to(device)
    if args.channels_last:
        # Only the 2D convolutions: channels_last is a rank-4 format (the temporal Conv3d weights stay).
        for module in pipe.unet.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.to(memory_format=torch.channels_last)
        notes.append("channels_last: the UNet's Conv2d weights")
    if args.compile:
        # Compile the forward, not the module, so the stage timer can wrap it from outside the graph.
        pipe.unet.forward = torch.compile(pipe.unet.forward)
        notes.append("compile: torch.compile(unet.forward)")
    return pipe, notes


def call_kwargs(args, pipe, steps):
    """Arguments of one pipeline call: the reference's signature; our extra options only where supported."""
    from PIL import Image

    call = CALLS[args.config]
    kw = dict(
        prompt=PROMPT,
        image=Image.open(os.path.join(args.model, "input.png")).convert("RGB"),
        height=call["height"],
        width=call["width"],
        num_frames=call["num_frames"],
        num_inference_steps=steps,
        guidance_scale=call["guidance_scale"],
        output_type="np",
    )
    notes = []
    if args.decode_chunk_size is not None:
        kw["decode_chunk_size"] = args.decode_chunk_size
    if args.side == "ours" and args.cfg_mode is not None:
        if hasattr(pipe, "enable_sequential_guidance"):
            pipe.enable_sequential_guidance(args.cfg_mode == "sequential")
            notes.append(f"cfg_mode: enable_sequential_guidance({args.cfg_mode == 'sequential'})")
        elif "cfg_mode" in inspect.signature(pipe.__call__).parameters:
            kw["cfg_mode"] = args.cfg_mode
            notes.append(f"cfg_mode={args.cfg_mode}")
        else:
            notes.append("cfg_mode: SKIPPED (the pipeline exposes no sequential guidance)")
    return kw, notes


def seeded_call(pipe, kw, device):
    """Seed the global RNG (the reference draws the image-latent posterior sample from it) and a CPU generator
    for the initial noise, the same way on both sides, then call."""
    torch.manual_seed(SEED)
    generator = torch.Generator("cpu").manual_seed(SEED)
    return pipe(**kw, generator=generator).frames


def run(args):
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = DTYPES[args.dtype or CALLS[args.config]["dtype"]]
    rss = {"start": rss_mb()}

    start = time.perf_counter()
    pipe, notes = load_pipeline(args, dtype, device)
    load_s = time.perf_counter() - start
    rss["loaded"] = rss_mb()
    gpu = {}
    if cuda:
        torch.cuda.synchronize()
        gpu["after_load_allocated_mb"] = torch.cuda.memory_allocated() / 2**20

    steps = CALLS[args.config]["num_inference_steps"]
    kw, call_notes = call_kwargs(args, pipe, steps)
    notes += call_notes

    # Warm-up: the same shapes and code paths (allocator, kernels, compile) with fewer steps.
    start = time.perf_counter()
    seeded_call(pipe, dict(kw, num_inference_steps=min(args.warmup_steps, steps)), device)
    warmup_s = time.perf_counter() - start
    rss["warmed"] = rss_mb()

    timeline = Timeline(cuda)
    timeline.wrap(pipe.unet, "forward", "unet")
    timeline.wrap(pipe.text_encoder, "forward", "text_encoder")
    timeline.wrap(pipe.image_encoder, "forward", "image_encoder")
    timeline.wrap(pipe.vae, "encode", "vae.encode")
    timeline.wrap(pipe.vae, "decode", "vae.decode")
    timeline.wrap(pipe.scheduler, "step", "scheduler.step")
    for method in ("encode_condition",):  # work our UNet does once per video
        if hasattr(pipe.unet, method):
            timeline.wrap(pipe.unet, method, f"unet.{method}")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    call_start = timeline.now()
    frames = seeded_call(pipe, kw, device)
    call_end = timeline.now()
    rss["end"] = rss_mb()

    frames = np.asarray(frames, dtype=np.float32)
    np.save(args.frames, frames)
    result = dict(
        side=args.side,
        config=args.config,
        dtype=str(dtype).replace("torch.", ""),
        device=str(device),
        threads=torch.get_num_threads(),
        notes=notes,
        load_s=load_s,
        warmup_s=warmup_s,
        process_s=time.perf_counter() - t0,
        stages=timeline.stages(call_start, call_end),
        rss_mb={k: dict(current=c, peak=p) for k, (c, p) in rss.items()},
        peak_rss_mb=rss["end"][1],
        frames_shape=list(frames.shape),
        frames_nonfinite=int((~np.isfinite(frames)).sum()),
        frames_saturated=float(((frames <= 0) | (frames >= 1)).mean()),
        versions=dict(torch=torch.__version__, python=sys.version.split()[0]),
    )
    if cuda:
        gpu["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        gpu["name"] = torch.cuda.get_device_name()
        result["gpu"] = gpu
    with open(args.result, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{args.side}: call {result['stages']['wall']['call']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", choices=["build", "flops", "run"])
    p.add_argument("--config", choices=sorted(CALLS), required=True)
    p.add_argument("--out", help="build: folder to save the pipeline in")
    p.add_argument("--model", help="flops/run: saved pipeline folder")
    p.add_argument("--result", help="flops/run: JSON file to write")
    p.add_argument("--frames", help="run: .npy file for the output frames")
    p.add_argument("--side", choices=["ours", "ref"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=sorted(DTYPES))
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--decode-chunk-size", type=int)
    p.add_argument("--cfg-mode", choices=["batched", "sequential"])
    p.add_argument("--offload", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    {"build": build, "flops": flops, "run": run}[args.job](args)


if __name__ == "__main__":
    main()
