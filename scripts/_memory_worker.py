"""One side of scripts/memory_plan.py: the memory each stage of one pipeline call needs, on shapes only.

    python scripts/_memory_worker.py --side ours --result out.json [call options]   (.venv)
    /work/venv-ref/bin/python scripts/_memory_worker.py --side ref --result ref.json [...]   (the reference's venv)

Every model is built inside `torch._subclasses.fake_tensor.FakeTensorMode`, so it has real shapes and dtypes but
no data (the released size costs nothing to build), and each stage runs the pipeline's own code for that stage
under `torch.distributed._tools.mem_tracker.MemTracker`, which counts the bytes of every live tensor (parameters,
inputs, activations) and keeps the peak. A stage is measured with its own model and inputs tracked; the models the
pipeline keeps resident at the same time are added by memory_plan.py (parameter bytes, exact).

Not part of the package; only the `ref` side imports diffusers.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.mem_tracker import MemTracker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_worker import PROMPT, make_input_image, model_configs, write_tiny_tokenizer  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("text", "image", "image_latents", "step", "decode")


def param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class PeakTracker(MemTracker):
    """MemTracker without its per-module statistics, which refuse a model called twice per stage (the text
    encoder for the prompt and the negative prompt, the decoder per chunk; a block recomputed under gradient
    checkpointing). Only the global peak is read; the stage's model is registered with `track_external`."""

    def _pre_fw_hook(self, module, inputs):
        pass

    def _post_fw_hook(self, module, inputs, outputs):
        pass

    def _pre_bw_hook(self, module, args):
        pass

    def _post_bw_hook(self, module, args):
        pass


class Stage:
    """Peak bytes of one stage: run `fn` under a MemTracker that also counts `model` and `inputs`."""

    def __init__(self, model, inputs=()):
        self.model, self.inputs = model, [t for t in inputs if isinstance(t, torch.Tensor)]

    def run(self, fn):
        tracker = PeakTracker()
        tracker.track_external(self.model, *self.inputs)
        start = time.perf_counter()
        with tracker:
            out = fn()
        peak = tracker.get_tracker_snapshot("peak")
        total = max((snap["Total"] for snap in peak.values()), default=0)
        model = param_bytes(self.model)
        result = dict(peak=total, params=model, inputs=tensor_bytes(*self.inputs),
                      activations=total - model - tensor_bytes(*self.inputs), seconds=time.perf_counter() - start)
        return out, result


# ------------------------------------------------------------------------------------------------- building
def model_sizes(config: str) -> dict:
    """The bench's configs ("gpu": released, "cpu": reduced), and "tiny": every width 32, for the test suite."""
    if config != "tiny":
        return model_configs(config)
    cfg = model_configs("cpu")
    cfg["unet"].update(block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=16)
    cfg["vae"].update(block_out_channels=(32, 32, 32, 32))
    cfg["text"] = cfg["vision"] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    cfg["projection_dim"] = 32
    return cfg


def clip_towers(config: str, vocab_size: int, special: dict):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = model_sizes(config)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=77,
                                        projection_dim=cfg["projection_dim"], hidden_act="gelu", **special,
                                        **cfg["text"])).eval()
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=224, patch_size=14,
                                                            projection_dim=cfg["projection_dim"],
                                                            hidden_act="gelu", **cfg["vision"])).eval()
    return text, vision


def build_pipeline(side: str, config: str, dtype: torch.dtype):
    """The side's pipeline at `config` ("gpu": released sizes, "cpu": the reduced bench config), with the
    bench's locally written tokenizer. Called inside FakeTensorMode for the plan, outside it for a real run."""
    cfg = model_sizes(config)
    tmp = tempfile.mkdtemp()
    vocab = write_tiny_tokenizer(tmp)
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"])
    special["pad_token_id"] = special["eos_token_id"]
    from transformers import CLIPImageProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), model_max_length=77)
    if side == "ref":
        from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from i2vgen import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
    # Built in `dtype` directly: .to(dtype) cannot swap fake parameters in place.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        text, vision = clip_towers(config, len(vocab), special)
        vae, unet = AutoencoderKL(**cfg["vae"]).eval(), I2VGenXLUNet(**cfg["unet"]).eval()
    finally:
        torch.set_default_dtype(default)
    pipe = I2VGenXLPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, image_encoder=vision,
                            feature_extractor=CLIPImageProcessor(crop_size=224, size=224), unet=unet,
                            scheduler=DDIMScheduler(**cfg["scheduler"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------- stages
def ours_stages(pipe, call: dict) -> dict:
    """Our pipeline's stages, each through the method `__call__` uses for it."""
    from i2vgen.preprocess import postprocess_video, vae_pixel_values

    height, width, frames = call["height"], call["width"], call["num_frames"]
    image = make_input_image(width, height)
    guided = call["guidance_scale"] > 1
    pipe.enable_sequential_guidance(call["guidance"] == "sequential")
    # Set after the guidance mode, which switches chunking on with it: the plan measures each option alone.
    pipe.unet.enable_forward_chunking() if call["forward_chunking"] else pipe.unet.disable_forward_chunking()
    if call.get("free_noise"):  # long videos: windows of 16 frames, 4 apart (docs/long_videos.md)
        pipe.enable_free_noise(context_length=16, context_stride=4)
    if call["vae_tiling"]:
        pipe.vae.enable_tiling()
    out = {}
    (prompt, negative), out["text"] = Stage(pipe.text_encoder).run(
        lambda: pipe._encode_prompts([PROMPT], None, None, None, guided, clip_skip=1))
    embeddings, out["image"] = Stage(pipe.image_encoder).run(lambda: pipe.encode_image([image], width))
    latents_in, out["image_latents"] = Stage(pipe.vae).run(
        lambda: pipe._image_latents(vae_pixel_values([image], width, height), frames, embeddings.dtype))

    with unset_fake_temporarily():  # real timesteps: the scheduler step reads their values
        pipe.scheduler.set_timesteps(call["num_inference_steps"])
        t = int(pipe.scheduler.timesteps[0])  # a number: fake arithmetic on it would stop at `if t_prev >= 0`
    latents = torch.randn(1, 4, frames, height // 8, width // 8, dtype=prompt.dtype)
    conditions = pipe._encode_conditions(prompt, negative, embeddings, latents_in, 16, 1)
    carried = [latents, *[getattr(c, k) for c in conditions for k in ("fps_emb", "context", "image_latents")]]

    def step():
        pred = pipe._predict(latents, t, conditions, call["guidance_scale"])
        return pipe._step(pred, t, latents, 0.0, None)

    _, out["step"] = Stage(pipe.unet, carried).run(step)
    _, out["decode"] = Stage(pipe.vae, [latents]).run(
        lambda: postprocess_video(pipe.decode_latents(latents, call["decode_chunk_size"]), "pt"))
    return out


def ref_stages(pipe, call: dict) -> dict:
    """The reference pipeline's stages: its encode methods, its denoising-loop body, its decode_latents."""
    height, width, frames = call["height"], call["width"], call["num_frames"]
    image = make_input_image(width, height)
    guided = call["guidance_scale"] > 1
    if call["vae_tiling"]:
        pipe.vae.enable_tiling()
    if call["forward_chunking"]:
        pipe.unet.enable_forward_chunking()
    pipe._guidance_scale = call["guidance_scale"]
    out = {}
    (prompt, negative), out["text"] = Stage(pipe.text_encoder).run(
        lambda: pipe.encode_prompt(PROMPT, "cpu", 1, None, clip_skip=1))
    if guided:
        prompt = torch.cat([negative, prompt])
    # The reference's own preprocessing of both image branches, as its __call__ does it.
    from diffusers.pipelines.i2vgen_xl.pipeline_i2vgen_xl import _center_crop_wide, _resize_bilinear

    crop = pipe.feature_extractor.crop_size
    clip_image = _resize_bilinear(_center_crop_wide(image, (width, width)), (crop["width"], crop["height"]))
    with unset_fake_temporarily():  # CPU preprocessing through numpy, which fake tensors cannot enter
        processor = pipe.video_processor
        clip_pixels = pipe.feature_extractor(images=processor.numpy_to_pt(processor.pil_to_numpy(clip_image)),
                                             do_normalize=True, do_center_crop=False, do_resize=False,
                                             do_rescale=False, return_tensors="pt").pixel_values
        vae_pixels = processor.preprocess(_center_crop_wide(image, (width, height)))
    embeddings, out["image"] = Stage(pipe.image_encoder).run(lambda: pipe._encode_image(clip_pixels, "cpu", 1))
    vae_pixels = vae_pixels.to("cpu", embeddings.dtype)
    latents_in, out["image_latents"] = Stage(pipe.vae, [vae_pixels]).run(
        lambda: pipe.prepare_image_latents(vae_pixels, "cpu", frames, 1))

    with unset_fake_temporarily():  # real timesteps: the scheduler step reads their values
        pipe.scheduler.set_timesteps(call["num_inference_steps"])
        t = int(pipe.scheduler.timesteps[0])  # a number: fake arithmetic on it would stop at `if t_prev >= 0`
    latents = torch.randn(1, 4, frames, height // 8, width // 8, dtype=prompt.dtype)
    fps = torch.tensor([16]).repeat(prompt.shape[0])

    def step():  # the body of the reference's denoising loop (pipeline_i2vgen_xl.py, "8. Denoising loop")
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = pipe.scheduler.scale_model_input(model_input, t)
        pred = pipe.unet(model_input, t, encoder_hidden_states=prompt, fps=fps, image_latents=latents_in,
                         image_embeddings=embeddings, return_dict=False)[0]
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + call["guidance_scale"] * (cond - uncond)
        b, c, f, h, w = latents.shape
        folded = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        pred = pred.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        new = pipe.scheduler.step(pred, t, folded).prev_sample
        return new[None, :].reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)

    _, out["step"] = Stage(pipe.unet, [latents, prompt, fps, latents_in, embeddings]).run(step)
    _, out["decode"] = Stage(pipe.vae, [latents]).run(lambda: pipe.video_processor.postprocess_video(
        pipe.decode_latents(latents, call["decode_chunk_size"]), output_type="pt"))
    return out


def measure(side: str, call: dict, fake: bool = True) -> dict:
    """Per-stage figures and every model's parameter bytes for one call (see `parse_call` for its keys)."""
    dtype = DTYPES[call["dtype"]]
    stages = ours_stages if side == "ours" else ref_stages
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else torch.no_grad()
    with mode, torch.no_grad():
        torch.manual_seed(0)
        pipe = build_pipeline(side, call["config"], dtype)
        result = dict(side=side, call=call, stages=stages(pipe, call),
                      params={name: param_bytes(getattr(pipe, name))
                              for name in ("text_encoder", "image_encoder", "unet", "vae")})
    return result


def add_call_arguments(p: argparse.ArgumentParser):
    p.add_argument("--config", choices=["gpu", "cpu", "tiny"], default="gpu",
                   help="model sizes: gpu = the released model, cpu = the reduced bench config, tiny = width 32")
    p.add_argument("--height", type=int, default=704)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--num-inference-steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=9.0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--guidance", choices=["batched", "sequential"], default="batched",
                   help="classifier-free guidance as one batch of 2 or two passes (ours only; the reference batches)")
    p.add_argument("--decode-chunk-size", type=int, default=1)
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--forward-chunking", action="store_true", help="unet.enable_forward_chunking()")
    p.add_argument("--free-noise", action="store_true", help="pipe.enable_free_noise() (ours only)")


def call_of(args) -> dict:
    keys = ("config", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "dtype", "guidance",
            "decode_chunk_size", "vae_tiling", "forward_chunking")
    call = {k: getattr(args, k) for k in keys}
    if args.free_noise:  # only when on, so that the cached results of the other calls keep their keys
        call["free_noise"] = True
    return call


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["ours", "ref"], required=True)
    p.add_argument("--result", required=True)
    add_call_arguments(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = measure(args.side, call_of(args))
    Path(args.result).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
