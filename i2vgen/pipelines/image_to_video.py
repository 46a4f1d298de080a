"""I2VGenXLPipeline: an image and a prompt in, a video out (I2VGen-XL, Zhang et al. 2023).

One call runs, in the reference's order (which fixes the order random numbers are drawn in):
1. text:   CLIP text encoder -> prompt tokens (clip_skip: penultimate layer + final LayerNorm);
2. image:  CLIP image embedding (global semantics) and the VAE latent of the first frame (detail), the
           latter sampled from the posterior with torch's *global* RNG, as the reference does;
3. noise:  x_T ~ N(0, I) of shape (B, 4, F, H/8, W/8) from `generator`;
4. DDIM:   everything that does not change across steps goes through `unet.encode_condition` once;
           each step predicts v for [unconditional, conditional] and mixes them with the guidance scale;
5. decode: the VAE decodes `decode_chunk_size` frames at a time; pixels -> [0, 1].

Beyond the reference: one image broadcasts over a list of prompts, classifier-free guidance can run as two
sequential passes (half the activation memory), and models can be offloaded to the CPU between uses.
Two reference bugs are not reproduced, both only with a list of several images: the reference crops every
image with the first one's scale and offsets (we crop each on its own), and with num_videos_per_prompt > 1
it tiles the image latents while repeating the prompts per video, pairing prompts with the wrong images
(we repeat both per video).
"""

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from einops import rearrange
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from i2vgen.checks import check_device
from i2vgen.loading import (COMPONENTS, check_model_index, check_variant, component_dtype, component_variants,
                            local_folder, save_components)
from i2vgen.models.cache import CacheConfig
from i2vgen.models.unet import I2VGenXLUNet, image_latents_from
from i2vgen.models.vae import AutoencoderKL
from i2vgen.noise import randn_tensor
from i2vgen.pipelines.clip import CLIPImageProcessor, encode_text, load_clip_components
from i2vgen.pipelines.free_noise import FreeNoiseMixin
from i2vgen.pipelines.inputs import (batch_size, check_call, check_call_numbers, check_callback_result,
                                     check_cross_attention_kwargs, check_finite_latents, check_image_sizes,
                                     check_tensors)
from i2vgen.pipelines.offload import OffloadMixin
from i2vgen.outputs import BaseOutput
from i2vgen.preprocess import clip_pixel_values, postprocess_video, to_pil_images, vae_pixel_values
from i2vgen.schedulers import load_scheduler
from i2vgen.schedulers.ddim import DDIMScheduler
from i2vgen.schedulers.fast import PowerUniPCScheduler, fast_scheduler

__all__ = ["ImageToVideoPipeline", "I2VGenXLPipelineOutput", "CLIPImageProcessor", "randn_tensor"]

# enable_fast_sampling's cache, chosen on training clips of the tiny demo (docs/sampling.md, scripts/sampler_study.py):
# DeepCache every other step; the guidance cache tripled the distance there, so it is off.
FAST_CACHE = CacheConfig(cache_interval=2, cache_branch_id=0)


def default_size(unet_config, vae_config) -> tuple[int, int]:
    """(height, width) of a call that passes None: the UNet config's sample_size (in latents, as the reference
    reads it) times the VAE's scale factor or, when that is unset, the released model's 704 x 1280."""
    size = unet_config.sample_size
    return (size * 2 ** (len(vae_config.block_out_channels) - 1),) * 2 if size else (704, 1280)


@dataclass
class I2VGenXLPipelineOutput(BaseOutput):
    """`frames`: per video a list of PIL images ("pil"), (B, F, H, W, 3) array ("np"),
    (B, F, 3, H, W) tensor ("pt"), or the final latents (B, 4, F, H/8, W/8) ("latent").
    Reads like the reference's: `out.frames`, `out["frames"]`, `out[0]`."""

    frames: list | np.ndarray | torch.Tensor


class ImageToVideoPipeline(FreeNoiseMixin, OffloadMixin):
    """Image-to-video generation with I2VGen-XL: loading, the call and the memory switches. Components and call
    arguments follow diffusers' deprecated `I2VGenXLPipeline`. `i2vgen.I2VGenXLPipeline` is this class plus the
    rest of diffusers' pipeline API (i2vgen/compat/pipeline.py: `components`, `from_pipe`, FreeU, fused QKV,
    LoRA, the switches that do nothing here); model offload is in offload.py, long videos (FreeNoise) in free_noise.py."""

    unet_class, vae_class = I2VGenXLUNet, AutoencoderKL  # what from_pretrained builds

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 image_encoder: CLIPVisionModelWithProjection, feature_extractor, unet: I2VGenXLUNet,
                 scheduler: DDIMScheduler):
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.unet = unet
        self.scheduler = scheduler
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._progress_bar_config = {}
        self._offload_device = None  # offload.py
        self._sequential_hooks = []
        self._sequential_guidance = False
        self._cfg_exchange = None
        self._scheduler_before_fast = None  # what disable_fast_sampling restores

    # ---- loading, saving, placement ----

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, variant=None):
        """Load a diffusers-layout folder or hub id (e.g. "ali-vilab/i2vgen-xl", variant="fp16").
        Weights are cast to `torch_dtype`, float32 by default, or per component by a dict such as
        {"unet": torch.bfloat16, "default": torch.float16}. Components without `variant` files load their default
        weights; a variant that no component has is a ValueError (both as in the reference)."""
        check_variant(variant)
        folder = local_folder(pretrained_model_name_or_path, variant)
        check_model_index(folder)
        models = ("vae", "text_encoder", "image_encoder", "unet")
        dtypes = {name: component_dtype(torch_dtype, name) for name in models}
        variants = component_variants(folder, models, variant)
        return cls(
            vae=cls.vae_class.from_pretrained(folder, subfolder="vae", torch_dtype=dtypes["vae"], variant=variants["vae"]),
            **load_clip_components(folder, dtypes, variants),  # text_encoder, tokenizer, image_encoder, feature_extractor
            unet=cls.unet_class.from_pretrained(folder, subfolder="unet", torch_dtype=dtypes["unet"],
                                                variant=variants["unet"]),
            scheduler=load_scheduler(folder / "scheduler"),  # DDIM, or the sampler a pipeline was saved with
        )

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: str | None = None):
        """Write the diffusers layout: model_index.json and one subfolder per component; the models' weights as
        safetensors, or `.bin` pickles with safe_serialization=False; `variant` names the files <name>.<variant>.*."""
        save_components(save_directory, {name: getattr(self, name) for name in COMPONENTS}, safe_serialization,
                        variant)

    @property
    def models(self) -> list[torch.nn.Module]:
        return [self.text_encoder, self.image_encoder, self.unet, self.vae]

    def to(self, device=None, dtype=None):
        """Move (and/or cast) every model; `pipe.to("cuda")`, `pipe.to(torch.float16)` and both work."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if device is not None:
            check_device(device)  # not meta (no values to compute with), nor an accelerator that is not there
        for model in self.models:
            model.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) used when the call passes None (`default_size` below)."""
        return default_size(self.unet.config, self.vae.config)

    def set_progress_bar_config(self, **kwargs):
        """Options for the tqdm bar over denoising steps, e.g. `disable=True`."""
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable=None, total=None):
        """A tqdm bar over `iterable` (or of `total` steps) with the options of `set_progress_bar_config`."""
        if iterable is not None:
            return tqdm(iterable, **self._progress_bar_config)
        if total is not None:
            return tqdm(total=total, **self._progress_bar_config)
        raise ValueError("progress_bar needs an iterable or a total")

    # ---- memory switches, none of which changes the output (model offload: offload.py) ----

    def enable_sequential_guidance(self, enabled: bool = True):
        """Run the unconditional and conditional UNet passes one after the other instead of as one batch of
        two: half the activation memory, same output. Enabling it ALSO switches on the UNet's forward chunking
        (`unet.enable_forward_chunking()`, the other half of the low-memory setting; exact, so the output stays
        the same); disabling it leaves chunking as it is (`unet.disable_forward_chunking()` turns it off)."""
        self._sequential_guidance = enabled
        if enabled:
            self.unet.enable_forward_chunking()

    def enable_cfg_parallel(self, exchange=None):
        """Run one half of classifier-free guidance here and the other in a partner process: `exchange.half`
        is this process's half (0: unconditional, 1: conditional), and `exchange.gather(pred)` returns both
        halves' predictions stacked [unconditional, conditional], once per step. Both processes then take the
        same step, so the video is the one a single process makes. `i2vgen.distributed.cfg_pairs` builds one
        over torch.distributed (docs/distributed.md); None turns it off."""
        self._cfg_exchange = exchange

    def enable_vae_slicing(self):
        """Decode (and encode) one image at a time instead of the whole batch."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self):
        self.vae.disable_slicing()

    def enable_vae_tiling(self):
        """Decode (and encode) in overlapping spatial tiles, blended across the overlap: memory for large frames
        stays bounded, at the cost of small differences near tile seams (the reference's behaviour)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self):
        self.vae.disable_tiling()

    # ---- speed switch (approximate: changes the video) ----

    def enable_fast_sampling(self, cache: CacheConfig | None = FAST_CACHE):
        """The fastest measured setting at the released DDIM-50's quality on the tiny demo (docs/sampling.md): the
        fitted few-step sampler (`fast_scheduler`) at its recommended step count, which calls without
        num_inference_steps then use, and caching across steps (`unet.enable_cache(cache)`; None: no cache).
        `disable_fast_sampling()` restores the scheduler and turns the cache off."""
        if not isinstance(self.scheduler, PowerUniPCScheduler):
            self._scheduler_before_fast = self.scheduler
        self.scheduler = fast_scheduler(self.scheduler.config)
        if cache is None:
            self.unet.disable_cache()
        else:
            self.unet.enable_cache(cache)

    def disable_fast_sampling(self):
        if self._scheduler_before_fast is not None:
            self.scheduler, self._scheduler_before_fast = self._scheduler_before_fast, None
        self.unet.disable_cache()

    # ---- conditioning ----

    def _encode_text(self, texts: list[str], max_length: int, clip_skip: int | None) -> torch.Tensor:
        """CLIP text tokens (len(texts), max_length, D), from the layer clip_skip says (`clip.encode_text`)."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt").input_ids
        # verbose=False: transformers' own warning would say the same as ours, less usefully
        longest = self.tokenizer(texts, padding="longest", return_tensors="pt", verbose=False).input_ids.shape[-1]
        if longest > max_length:
            warnings.warn(f"a prompt is longer than CLIP's {max_length} tokens and was truncated", stacklevel=4)
        with self._on_execution_device(self.text_encoder) as encoder:
            return encode_text(encoder, tokens.to(self.execution_device), clip_skip)

    def _encode_prompts(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, guided: bool,
                        clip_skip: int | None):
        """Prompt tokens (P, S, D) and, when guided, negative-prompt tokens of the same shape (once per prompt;
        the reference's `encode_prompt`, in compat/pipeline.py, repeats them per video).

        The negative prompt defaults to "" for every prompt; a single string applies to every prompt."""
        device, dtype = self.execution_device, self.text_encoder.dtype
        if prompt_embeds is None:
            prompt_embeds = self._encode_text(prompt, self.tokenizer.model_max_length, clip_skip)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        if not guided:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            batch = prompt_embeds.shape[0]
            negative = negative_prompt if negative_prompt is not None else ""
            negative = [negative] * batch if isinstance(negative, str) else list(negative)
            if len(negative) != batch:
                raise ValueError(f"negative_prompt has {len(negative)} entries but there are {batch} prompts")
            negative_prompt_embeds = self._encode_text(negative, prompt_embeds.shape[1], clip_skip)
        return prompt_embeds, negative_prompt_embeds.to(device=device, dtype=dtype)

    def encode_image(self, images: list[PIL.Image.Image], width: int) -> torch.Tensor:
        """CLIP image embeddings (N, 1, D) from the square centre crop of each image."""
        crop = self.feature_extractor.crop_size
        pixels = clip_pixel_values(images, width, (crop["height"], crop["width"]),
                                   self.feature_extractor.image_mean, self.feature_extractor.image_std)
        with self._on_execution_device(self.image_encoder) as encoder:
            pixels = pixels.to(self.execution_device, encoder.dtype)
            return encoder(pixels).image_embeds.unsqueeze(1)

    def _image_latents(self, pixels: torch.Tensor, num_frames: int, dtype: torch.dtype) -> torch.Tensor:
        """Latents (N, 4, F, h, w) that condition the UNet, from preprocessed images (N, 3, H, W) in [-1, 1]: the
        first frame is the image's VAE latent (a posterior sample from torch's global RNG, times scaling_factor);
        frame k = 1..F-1 is filled with its position k / (F - 1)."""
        with self._on_execution_device(self.vae) as vae:
            pixels = pixels.to(self.execution_device, dtype)
            first = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        return image_latents_from(first, num_frames)

    def _encode_conditions(self, prompt_embeds, negative_prompt_embeds, image_embeddings, image_latents,
                           target_fps: int, num_videos_per_prompt: int) -> list:
        """UNet conditions for the stacked [unconditional, conditional] rows of the B videos (just the conditional
        ones without guidance), once for all steps: one for the stack, or one per half with sequential guidance.
        The unconditional half has the negative-prompt tokens and a zero CLIP image embedding."""
        num_prompts = prompt_embeds.shape[0]

        def per_video(x):  # (P or 1, ...) -> (B, ...): each prompt's rows repeated num_videos_per_prompt times
            return x.expand(num_prompts, *x.shape[1:]).repeat_interleave(num_videos_per_prompt, dim=0)

        conditional = {
            "encoder_hidden_states": per_video(prompt_embeds),
            "image_embeddings": per_video(image_embeddings),
            "fps": torch.full((num_prompts * num_videos_per_prompt,), target_fps, dtype=torch.long,
                              device=prompt_embeds.device),
        }
        halves = [conditional]
        if negative_prompt_embeds is not None:
            unconditional = dict(conditional, encoder_hidden_states=per_video(negative_prompt_embeds),
                                 image_embeddings=torch.zeros_like(conditional["image_embeddings"]))
            halves = [unconditional, conditional]
            if self._cfg_exchange is not None:  # the partner process computes the other half
                halves = [halves[self._cfg_exchange.half]]
        if not self._sequential_guidance:
            halves = [{key: torch.cat([half[key] for half in halves]) for key in conditional}]
        # Both halves see the same image latents: passed once, the UNet runs its context-free layers once.
        image_latents = per_video(image_latents)
        return [self.unet.encode_condition(image_latents=image_latents, **half) for half in halves]

    # ---- denoising and decoding ----

    def _predict(self, latents, t, conditions, guidance_scale: float) -> torch.Tensor:
        """The UNet's prediction; with guidance, uncond + w * (cond - uncond) (Ho & Salimans 2022).

        `conditions` covers the stacked [unconditional, conditional] batch in one or two passes (with
        CFG-parallel, this process's half; the exchange brings the other). The latents
        go in once: with a condition of twice their batch the UNet runs its context-free trunk once for both."""
        pred = torch.cat([self.unet(latents, t, condition=c, return_dict=False)[0] for c in conditions])
        if guidance_scale <= 1:
            return pred
        if self._cfg_exchange is not None:
            pred = self._cfg_exchange.gather(pred)
        uncond, cond = pred.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def _step(self, pred, t, latents, eta: float, generator) -> torch.Tensor:
        """One scheduler step. It runs on frames folded into the batch, (B F) C h w, so that the noise of a
        stochastic step (DDIM with eta > 0, SDE-DPM-Solver++) is drawn from the generator in the reference's shape
        and order."""
        batch = latents.shape[0]
        pred = rearrange(pred, "b c f h w -> (b f) c h w")
        latents = rearrange(latents, "b c f h w -> (b f) c h w")
        kwargs = {"eta": eta} if eta else {}
        if eta > 0 or getattr(self.scheduler, "stochastic", False):
            if isinstance(generator, list):  # one per video, each drawing its video's frames (the reference fails)
                noise = randn_tensor((batch, pred.shape[0] // batch, *pred.shape[1:]), generator, pred.device,
                                     pred.dtype)
                kwargs["variance_noise"] = rearrange(noise, "b f c h w -> (b f) c h w")
            else:
                kwargs["variance_noise"] = randn_tensor(pred.shape, generator, pred.device, pred.dtype)
        latents = self.scheduler.step(pred, t, latents, **kwargs).prev_sample
        return rearrange(latents, "(b f) c h w -> b c f h w", b=batch)

    def _sample(self, latents, conditions, guidance_scale: float, eta: float, generator, callback_on_step_end):
        """x_T -> x_0: at each of the scheduler's timesteps, predict (`_predict`) and step (`_step`). A UNet with
        caching across steps enabled (unet.enable_cache) starts and ends the call with an empty cache."""
        self.unet.clear_cache()
        try:
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                pred = self._predict(self.scheduler.scale_model_input(latents, t), t, conditions, guidance_scale)
                latents = self._step(pred, t, latents, eta, generator)
                if callback_on_step_end is not None:
                    result = check_callback_result(callback_on_step_end(self, i, t, {"latents": latents}))
                    latents = result.get("latents", latents)
                    if result.get("stop"):
                        break
        finally:
            self.unet.clear_cache()  # frees the cached features
        return latents

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Latents (B, 4, F, h, w) -> float32 pixels (B, 3, F, H, W) in [-1, 1]-ish, as the reference, with
        `decode_chunk_size` frames per VAE call (None: all at once)."""
        batch = latents.shape[0]
        latents = rearrange(latents, "b c f h w -> (b f) c h w")
        with self._on_execution_device(self.vae) as vae:
            latents = latents.to(self.execution_device) * (1 / vae.config.scaling_factor)
            chunks = latents.split(decode_chunk_size or latents.shape[0])
            frames = torch.cat([vae.decode(chunk).sample for chunk in chunks])
        return rearrange(frames, "(b f) c h w -> b c f h w", b=batch).float()

    # ---- the call ----

    @torch.no_grad()
    def __call__(self, prompt=None, image=None, height: int | None = None, width: int | None = None,
                 target_fps: int = 16, num_frames: int = 16, num_inference_steps: int | None = None,
                 guidance_scale: float = 9.0, negative_prompt=None, eta: float = 0.0,
                 num_videos_per_prompt: int = 1, decode_chunk_size: int | None = 1, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, output_type: str = "pil",
                 return_dict: bool = True, cross_attention_kwargs: dict | None = None, clip_skip: int | None = 1,
                 callback_on_step_end=None):
        """Generate `num_videos_per_prompt` videos per prompt from `image` (one for all prompts, or one per
        prompt); height / width None: the model's size (`default_size`; 704 x 1280 for the released model). Returns
        `I2VGenXLPipelineOutput(frames)`, or `(frames,)` when return_dict is False. num_inference_steps None: the
        scheduler's `recommended_steps` (50 for DDIM, as the reference's default; 15 for `enable_fast_sampling`).

        cross_attention_kwargs={"scale": s} scales the loaded LoRA adapters by s for this call (diffusers' convention;
        the reference pipeline ignores it). callback_on_step_end(pipe, step, t, {"latents": latents}) runs after
        every step and may return a dict: its "latents" replace the current ones; {"stop": True} ends the loop
        early (the latents are decoded)."""
        # 1. check the inputs; P prompts x num_videos_per_prompt = B videos
        height = self.default_size[0] if height is None else height
        width = self.default_size[1] if width is None else width
        if num_inference_steps is None:
            num_inference_steps = getattr(self.scheduler, "recommended_steps", 50)  # also schedulers of other libraries
        check_call(self.scheduler, prompt, image, height, width, num_frames, num_inference_steps, negative_prompt,
                   prompt_embeds, negative_prompt_embeds, output_type, eta)
        check_call_numbers(self.text_encoder.config.num_hidden_layers, target_fps, guidance_scale, eta,
                           num_videos_per_prompt, decode_chunk_size, clip_skip)
        check_tensors(prompt_embeds, negative_prompt_embeds, latents, generator, callback_on_step_end,
                      self.text_encoder.config.hidden_size)
        lora_scale = check_cross_attention_kwargs(cross_attention_kwargs)
        self._guidance_scale = guidance_scale  # the last call's (the reference's guidance_scale property reads it)
        self.scheduler.set_timesteps(num_inference_steps, device=self.execution_device)  # checks the step count too
        # The loop starts at the first step. (The reference finds it from the first timestep, which fails when the
        # schedule repeats it, as Karras sigmas on the zero-terminal-SNR schedule do.)
        self.scheduler.set_begin_index(0)
        prompts = [prompt] if isinstance(prompt, (str, dict)) else prompt  # a dict: {frame: prompt}, one video
        images = to_pil_images(image)
        check_image_sizes(images)
        num_prompts = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        batch = batch_size(num_prompts, len(images), num_videos_per_prompt, generator)

        # 2. text: (P, S, D), and the negative prompt's when guided; (1, F, S, D) for prompts that change over time
        if isinstance(prompt, dict) or isinstance(negative_prompt, dict):
            prompt_embeds, negative_prompt_embeds = self._encode_prompt_schedule(
                prompt, negative_prompt, num_frames, guidance_scale > 1, clip_skip)
        else:
            prompt_embeds, negative_prompt_embeds = self._encode_prompts(
                prompts, negative_prompt, prompt_embeds, negative_prompt_embeds, guidance_scale > 1, clip_skip)

        # 3. image: CLIP embedding (N, 1, D), then first-frame latents (N, 4, F, h, w) from the global RNG
        image_embeddings = self.encode_image(images, width)
        image_latents = self._image_latents(vae_pixel_values(images, width, height), num_frames,
                                            image_embeddings.dtype)

        # 4. x_T ~ N(0, I) of (B, 4, F, h, w) from the generator, after the image latents (timesteps set in 1:
        # init_noise_sigma may read them)
        latents = self.prepare_latents(batch, self.unet.config.in_channels, num_frames, height, width,
                                       prompt_embeds.dtype, self.execution_device, generator, latents)

        # 5. sampling loop (DDIM or another scheduler), with the conditioning of the B videos encoded once
        with self._on_execution_device(self.unet), self._lora_scale(lora_scale):
            conditions = self._encode_conditions(prompt_embeds, negative_prompt_embeds, image_embeddings,
                                                 image_latents, target_fps, num_videos_per_prompt)
            latents = self._sample(latents, conditions, guidance_scale, eta, generator, callback_on_step_end)

        # 6. decode: never a black video from NaN latents
        check_finite_latents(latents)
        video = latents
        if output_type != "latent":
            video = postprocess_video(self.decode_latents(latents, decode_chunk_size), output_type)
        return I2VGenXLPipelineOutput(frames=video) if return_dict else (video,)

    def prepare_latents(self, batch_size: int, num_channels_latents: int, num_frames: int, height: int, width: int,
                        dtype: torch.dtype, device, generator, latents: torch.Tensor | None = None) -> torch.Tensor:
        """x_T (B, C, F, h, w) on `device`: `latents` if given, else N(0, I) noise from `generator`; times the
        scheduler's init_noise_sigma (with FreeNoise, the noise rescheduled over the frames: free_noise.py). The
        reference's signature."""
        shape = (batch_size, num_channels_latents, num_frames,
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = self._reschedule_noise(randn_tensor(shape, generator, device, dtype), generator)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma  # float64 given: cast

    def _lora_scale(self, scale: float | None):
        """The call's LoRA scale (cross_attention_kwargs): the core pipeline holds no adapters, so nothing to
        scale; I2VGenXLPipeline (compat/pipeline.py) scales the UNet's."""
        return contextlib.nullcontext()
