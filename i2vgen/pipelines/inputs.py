"""The pipeline call's input checks (`ImageToVideoPipeline.__call__` step 1, and before decoding): one clear
error naming the argument for anything the call cannot use."""

import inspect

import torch

from i2vgen.checks import check_int, check_real, check_text
from i2vgen.pipelines.prompt_schedule import check_prompt_schedule
from i2vgen.preprocess import OUTPUT_TYPES


def batch_size(num_prompts: int, num_images: int, num_videos_per_prompt: int, generator) -> int:
    """B = P x num_videos_per_prompt, once the images and generators are checked against it."""
    batch = num_prompts * num_videos_per_prompt
    if num_images not in (1, num_prompts):
        raise ValueError(f"got {num_images} images for {num_prompts} prompts: pass one image or one per prompt")
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for {batch} videos: pass one, or one per video")
    return batch


def check_call(scheduler, prompt, image, height, width, num_frames, num_inference_steps, negative_prompt,
               prompt_embeds, negative_prompt_embeds, output_type, eta):
    """The pipeline call's arguments that need no model: sizes, counts, texts and their pairing, output type."""
    check_inputs(prompt, image, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds)
    check_int("num_frames", num_frames, 1)
    for name, texts in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if isinstance(texts, dict):
            check_prompt_schedule(name, texts, num_frames)
    check_int("num_inference_steps", num_inference_steps, 1)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if eta and "eta" not in inspect.signature(scheduler.step).parameters:
        raise ValueError(f"eta applies only to DDIMScheduler; {type(scheduler).__name__} has no eta "
                         "(a stochastic sampler: DPMSolverMultistepScheduler, algorithm_type='sde-dpmsolver++')")


def check_inputs(prompt, image, height, width, negative_prompt=None, prompt_embeds=None,
                 negative_prompt_embeds=None) -> None:
    """The reference's check_inputs: the size, the image, the texts or their embeddings and their pairing."""
    for name, value in (("height", height), ("width", width)):
        if check_int(name, value, 8) % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height} and {width}")
    if image is None:
        raise ValueError("image is required: the first frame of the video is generated from it")
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("pass exactly one of prompt and prompt_embeds")
    for name, texts in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if texts is None:
            continue
        if isinstance(texts, dict):  # prompts that change over time (prompt_schedule.py; checked in check_call)
            if not isinstance(prompt, (str, dict)):
                raise ValueError(f"{name} as a {{frame: prompt}} dict needs prompt to be one string or dict")
            continue
        if not (isinstance(texts, str) or (isinstance(texts, list) and texts)):
            raise TypeError(f"{name} must be a string or a non-empty list of strings, got {texts!r} (or, for one "
                            f"video, a {{frame: prompt}} dict)")
        for text in [texts] if isinstance(texts, str) else texts:
            check_text(f"{name} entries" if isinstance(texts, list) else name, text)
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
    if (prompt_embeds is not None and negative_prompt_embeds is not None
            and prompt_embeds.shape != negative_prompt_embeds.shape):
        raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                         f"{tuple(negative_prompt_embeds.shape)} must have the same shape")


def check_tensors(prompt_embeds, negative_prompt_embeds, latents, generator, callback_on_step_end,
                  text_width: int) -> None:
    """The call's tensors and objects given in place of what it would make: their types, ranks, widths and
    values (a NaN in them would only show as the NaN check's message after the whole sampling)."""
    for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if embeds is None:
            continue
        check_tensor(name, embeds)
        if embeds.ndim != 3 or embeds.shape[-1] != text_width:
            raise ValueError(f"{name} must be (prompts, tokens, {text_width}) as the text encoder makes them, got "
                             f"shape {tuple(embeds.shape)}")
    if latents is not None:
        check_tensor("latents", latents)
    generators = generator if isinstance(generator, list) else [generator]
    if not all(isinstance(g, torch.Generator) for g in generators) and generator is not None:
        raise TypeError(f"generator must be a torch.Generator or a list of them, got {generator!r}")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError(f"callback_on_step_end must be a function, got {callback_on_step_end!r}")


def check_tensor(name: str, value) -> None:
    """A floating-point torch tensor of finite values."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must hold floating-point values, got {value.dtype}")
    if not value.is_meta and not torch.isfinite(value).all():
        raise ValueError(f"{name} holds NaN or infinite values")


def check_image_sizes(images) -> None:
    for image in images:
        if min(image.size) < 1:
            raise ValueError(f"image has size {image.size[0]}x{image.size[1]}; it must be at least 1x1 pixel")


def check_callback_result(result) -> dict:
    """callback_on_step_end's return value: None or a dict ({"latents": ..., "stop": ...})."""
    if result is None:
        return {}
    if not isinstance(result, dict):
        raise TypeError(f"callback_on_step_end must return None or a dict such as {{'latents': latents}}, got "
                        f"{type(result).__name__}")
    if "latents" in result:
        check_tensor("the latents callback_on_step_end returned", result["latents"])
    return result


def check_cross_attention_kwargs(cross_attention_kwargs) -> float | None:
    """The LoRA scale in cross_attention_kwargs={"scale": s} (None without one); any other key is an error."""
    if cross_attention_kwargs is None:
        return None
    if not isinstance(cross_attention_kwargs, dict) or set(cross_attention_kwargs) - {"scale"}:
        raise ValueError(f"cross_attention_kwargs takes only {{'scale': s}} (the LoRA scale), got "
                         f"{cross_attention_kwargs!r}")
    return check_real("cross_attention_kwargs['scale']", cross_attention_kwargs["scale"])


def check_call_numbers(text_encoder_layers: int, target_fps, guidance_scale, eta, num_videos_per_prompt,
                       decode_chunk_size, clip_skip):
    check_int("target_fps", target_fps, 1, 1000)
    check_real("guidance_scale", guidance_scale)
    check_real("eta", eta, 0.0, 1.0)
    check_int("num_videos_per_prompt", num_videos_per_prompt, 1)
    if decode_chunk_size is not None:
        check_int("decode_chunk_size", decode_chunk_size, 1)
    if clip_skip is not None:  # clip_skip = number of layers: the embeddings, before any layer
        check_int("clip_skip", clip_skip, 0, text_encoder_layers)


def check_finite_latents(latents: torch.Tensor) -> None:
    """Decoding NaN or infinite latents gives a black video; stop with the likely causes instead."""
    if not torch.isfinite(latents).all():
        raise FloatingPointError("the denoised latents hold NaN or infinite values, so no video was decoded; "
                                 "likely causes: non-finite model weights or inputs, or float16 overflow (try "
                                 "float32)")
