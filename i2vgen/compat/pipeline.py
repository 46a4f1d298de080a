"""`I2VGenXLPipeline`: the core pipeline (i2vgen/pipelines/) plus the rest of diffusers' pipeline API, so code
written for the reference runs unchanged.

Each method keeps the reference's name and signature; where the reference's method has nothing to do here, the
docstring says why and the call warns instead of pretending. Nothing in the core calls these: deleting this file
(and pointing `i2vgen.I2VGenXLPipeline` at `ImageToVideoPipeline`) leaves the call as it is.
Grouped as the reference documents them: components, memory switches, output-changing switches, LoRA.
"""

import contextlib
import inspect
import warnings

import torch

from i2vgen.compat.models import AutoencoderKL, I2VGenXLUNet
from i2vgen.pipelines import ImageToVideoPipeline
from i2vgen.pipelines.inputs import check_inputs


class I2VGenXLPipeline(ImageToVideoPipeline):
    """Image-to-video generation with I2VGen-XL, with diffusers' `I2VGenXLPipeline` API: porting code means
    changing the import. The call, loading and the memory switches are ImageToVideoPipeline's."""

    unet_class, vae_class = I2VGenXLUNet, AutoencoderKL  # with diffusers' model API aliases (compat/models.py)
    _guidance_scale = 9.0  # the call's default until a call sets it (the reference has none before a call)

    # ---- the reference pipeline's own methods, with its signatures (tests/test_pipeline_api.py) ----

    @property
    def guidance_scale(self) -> float:
        """The guidance weight w of the last call (uncond + w (cond - uncond); Ho & Salimans 2022)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    def encode_prompt(self, prompt, device, num_videos_per_prompt, negative_prompt=None, prompt_embeds=None,
                      negative_prompt_embeds=None, clip_skip=None):
        """(prompt_embeds, negative_prompt_embeds), each (P * num_videos_per_prompt, S, D) on `device`, every
        prompt's rows repeated per video; the negative ones (from "" by default) only with guidance
        (`do_classifier_free_guidance`), else None. clip_skip None: the last layer's output."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        embeds, negative = self._encode_prompts(prompts, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                                self.do_classifier_free_guidance, clip_skip)

        def per_video(x):
            return None if x is None else x.repeat_interleave(num_videos_per_prompt, dim=0).to(device)

        return per_video(embeds), per_video(negative)

    def check_inputs(self, prompt, image, height, width, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None):
        """One clear error for a bad size, image, prompt or embeddings (i2vgen/pipelines/inputs.py)."""
        check_inputs(prompt, image, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds)

    def prepare_extra_step_kwargs(self, generator, eta):
        """The scheduler step's keyword arguments among eta and generator (those its `step` takes)."""
        accepted = inspect.signature(self.scheduler.step).parameters
        return {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}

    def prepare_image_latents(self, image, device, num_frames, num_videos_per_prompt):
        """The image-latent condition from preprocessed images (N, 3, H, W) in [-1, 1] (`_image_latents`), tiled
        num_videos_per_prompt times and doubled for guidance, as the reference returns it. (The call itself
        repeats each image per video instead: the reference's tiling pairs prompts with the wrong images.)"""
        latents = self._image_latents(image.to(device), num_frames, self.vae.dtype)
        latents = latents.repeat(num_videos_per_prompt, 1, 1, 1, 1)
        return torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents

    # ---- components ----

    @property
    def components(self) -> dict:
        """The constructor's keyword arguments, {"vae": ..., "unet": ..., ...}: `type(pipe)(**pipe.components)`
        builds a pipeline that shares every model with this one."""
        names = [name for name in inspect.signature(type(self).__init__).parameters if name != "self"]
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """A new pipeline of this class from another one's components, without loading anything again (the
        models are shared, not copied). Keyword arguments replace components; `torch_dtype` casts the models
        (the shared ones too, as in the reference)."""
        torch_dtype = kwargs.pop("torch_dtype", None)
        components = pipeline.components
        unknown = sorted(set(kwargs) - set(components))
        if unknown:
            raise TypeError(f"from_pipe: unknown components {unknown}; {cls.__name__} takes {sorted(components)}")
        new = cls(**{**components, **kwargs})
        new.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
        return new.to(torch_dtype) if torch_dtype is not None else new

    # ---- memory switches: none of them changes the output ----

    def maybe_free_model_hooks(self):
        """Nothing to free here: with model CPU offload each model goes back to the CPU as soon as it has run
        (the reference needs this call to undo the hooks of a call that ended early). Kept so ported code runs."""

    def enable_attention_slicing(self, slice_size: int | str | None = "auto"):
        """Has no effect, and warns. Attention here is one `torch.nn.functional.scaled_dot_product_attention`
        call, whose flash and memory-efficient GPU kernels never hold the whole attention matrix, which is what
        slicing avoids. (The reference's method does nothing for this pipeline either: its UNet has no slicing.)
        To bound memory use `enable_sequential_guidance`, VAE slicing, or model CPU offload."""
        warnings.warn("enable_attention_slicing has no effect: attention already runs through torch's "
                      "scaled_dot_product_attention, which does not materialise the attention matrix on GPUs",
                      stacklevel=2)

    def disable_attention_slicing(self):
        """Nothing to disable (see enable_attention_slicing)."""

    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        """Has no effect, and warns (see I2VGenXLUNet.enable_xformers_memory_efficient_attention): attention
        already is one `scaled_dot_product_attention` call, which picks a flash or memory-efficient kernel."""
        self.unet.enable_xformers_memory_efficient_attention(attention_op)

    def disable_xformers_memory_efficient_attention(self):
        """Nothing to disable (see enable_xformers_memory_efficient_attention)."""

    # ---- switches that change the output ----

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float):
        """FreeU (Si et al. 2023): in the UNet's two lowest-resolution up blocks, scale half of the backbone
        channels by b1 / b2 and the low frequencies of the skip features by s1 / s2. Values used for this
        model: s1=0.9, s2=0.2, b1=1.2, b2=1.4. See `I2VGenXLUNet.enable_freeu`."""
        self.unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)

    def disable_freeu(self):
        self.unet.disable_freeu()

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True):
        """Compute query, key and value with one matrix product (self-attention) or key and value with one
        (cross-attention). Same maths, so the output changes only by float rounding."""
        for wanted, model in ((unet, self.unet), (vae, self.vae)):
            if wanted:
                model.fuse_qkv_projections()

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True):
        for wanted, model in ((unet, self.unet), (vae, self.vae)):
            if wanted:
                model.unfuse_qkv_projections()

    # ---- LoRA adapters in the UNet (i2vgen/lora.py, needs peft when used; the names are diffusers') ----

    def load_lora_weights(self, pretrained_model_name_or_path, adapter_name=None, weight_name=None) -> str:
        """Load a UNet LoRA (a pytorch_lora_weights.safetensors file, or the folder holding it or `weight_name`)
        and make it active beside the active ones, at weight 1. Returns its name ("default_<n>" if not given)."""
        from i2vgen import lora  # needs peft, an optional extra
        return lora.load_lora_weights(self.unet, pretrained_model_name_or_path, adapter_name, weight_name)

    def set_adapters(self, adapter_names, adapter_weights=None):
        """Make exactly these adapters active, each with its weight (default 1.0)."""
        from i2vgen import lora  # needs peft, an optional extra
        lora.set_adapters(self.unet, adapter_names, adapter_weights)

    def fuse_lora(self, lora_scale: float = 1.0, adapter_names=None):
        """Add the active adapters (times lora_scale) into the UNet's weights; `unfuse_lora` restores them exactly."""
        from i2vgen import lora  # needs peft, an optional extra
        lora.fuse_lora(self.unet, lora_scale, adapter_names)

    def unfuse_lora(self):
        from i2vgen import lora  # needs peft, an optional extra
        lora.unfuse_lora(self.unet)

    def _lora_scale(self, scale: float | None):
        """The call's cross_attention_kwargs={"scale": s}: the active adapters at s times their weights."""
        if scale is None:
            return contextlib.nullcontext()
        from i2vgen import lora
        return lora.lora_scale(self.unet, scale)

    def unload_lora_weights(self):
        """Remove every adapter: the UNet is the plain loaded one again, bit for bit."""
        from i2vgen import lora  # needs peft, an optional extra
        lora.unload_lora_weights(self.unet)
