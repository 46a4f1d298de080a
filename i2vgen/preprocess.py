"""Turning the conditioning image into the two tensors the pipeline needs.

I2VGen-XL reads the input image twice (paper section 3.1):
- the *CLIP branch* (global semantics): a square centre crop, resized to the image encoder's input size
  and normalised with the CLIP mean and std;
- the *VAE branch* (low-level detail): a centre crop to the video's (width, height), scaled to [-1, 1],
  to be encoded into the first frame's latents.

Both crops use "center crop wide" from the original code: shrink by an integer-divided scale with a BOX
filter so the image just covers the target, then cut out the centre. Every step goes through 8-bit PIL
images, as the reference does, so the pixels match it exactly.

At the other end, `postprocess_video` turns the decoded pixels into the pipeline's output types.
"""

import numpy as np
import PIL.Image
import torch
from einops import rearrange

OUTPUT_TYPES = ("pil", "np", "pt", "latent")  # "latent": the pipeline returns the latents, undecoded

def to_pil_images(image) -> list[PIL.Image.Image]:
    """Any accepted image input -> a list of RGB PIL images.

    Accepted: a PIL image; a float tensor (C, H, W) or (N, C, H, W) in [0, 1]; a float array (H, W, C) or
    (N, H, W, C) in [0, 1]; or a list of any of these. RGBA, palette and grayscale images become RGB.
    """
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError("`image` is an empty list")
    images = []
    for item in items:
        if isinstance(item, PIL.Image.Image):
            images.append(item)
        elif isinstance(item, torch.Tensor):
            images += _array_to_pil(_check_unit_range(item).detach().cpu().float().numpy(), channels_first=True)
        elif isinstance(item, np.ndarray):
            images += _array_to_pil(_check_unit_range(item).astype(np.float32), channels_first=False)
        else:
            raise TypeError(
                "`image` must be a PIL image, a torch.Tensor, a numpy array, or a list of these; "
                f"got {type(item).__name__}"
            )
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


def _check_unit_range(array):
    if array.ndim not in (3, 4):
        raise ValueError(f"an image array must have 3 or 4 dimensions, got shape {tuple(array.shape)}")
    if array.min() < 0 or array.max() > 1:
        raise ValueError("image tensors and arrays must hold values in [0, 1]")
    return array


def _array_to_pil(array: np.ndarray, channels_first: bool) -> list[PIL.Image.Image]:
    """Float [0, 1] -> 8-bit PIL images, rounding like the reference (x * 255, round half to even)."""
    if array.ndim == 3:
        array = array[None]
    if channels_first:
        array = array.transpose(0, 2, 3, 1)
    array = (array * 255).round().astype(np.uint8)
    if array.shape[-1] == 1:
        return [PIL.Image.fromarray(a[..., 0], mode="L") for a in array]
    return [PIL.Image.fromarray(a) for a in array]


def center_crop_wide(image: PIL.Image.Image, resolution: tuple[int, int]) -> PIL.Image.Image:
    """Resize so the image just covers `resolution` = (width, height), then crop its centre.

    The new size is each side floor-divided by the float scale (the original code's integer division),
    resized with a BOX filter.
    """
    width, height = resolution
    scale = min(image.width / width, image.height / height)
    image = image.resize((round(image.width // scale), round(image.height // scale)), resample=PIL.Image.BOX)
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def pil_to_tensor(images: list[PIL.Image.Image]) -> torch.Tensor:
    """RGB PIL images -> float32 tensor (N, 3, H, W) in [0, 1].

    The tensor is a channels-first view of channels-last memory, exactly as the reference's numpy -> torch
    conversion leaves it: convolutions pick their kernel by memory layout, so the VAE encoder rounds
    differently on a contiguous copy (about 1e-6 in float32, 1e-3 in float16)."""
    array = np.stack([np.asarray(im).astype(np.float32) / 255.0 for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def clip_pixel_values(
    images: list[PIL.Image.Image], width: int, crop_size: tuple[int, int], image_mean, image_std
) -> torch.Tensor:
    """CLIP branch: square crop of side `width`, bilinear resize to `crop_size` = (height, width), CLIP normalise.

    Returns (N, 3, crop_height, crop_width) float32.
    """
    crop_height, crop_width = crop_size
    squares = [center_crop_wide(im, (width, width)) for im in images]
    images = [im.resize((crop_width, crop_height), PIL.Image.BILINEAR) for im in squares]
    pixels = pil_to_tensor(images)
    mean = torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((pixels - mean) / std).contiguous()  # the CLIP processor hands the encoder a contiguous copy


def vae_pixel_values(images: list[PIL.Image.Image], width: int, height: int) -> torch.Tensor:
    """VAE branch: crop to the video size and scale to [-1, 1]. Returns (N, 3, height, width) float32."""
    pixels = pil_to_tensor([center_crop_wide(im, (width, height)) for im in images])
    return 2.0 * pixels - 1.0


def postprocess_video(video: torch.Tensor, output_type: str):
    """Decoded pixels (B, F, 3, H, W) in [-1, 1] -> [0, 1] as that tensor ("pt"), an array (B, F, H, W, 3)
    ("np"), or per video a list of PIL images ("pil")."""
    video = (video * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return video
    video = rearrange(video, "b f c h w -> b f h w c").cpu().numpy()
    if output_type == "np":
        return video
    return [[PIL.Image.fromarray(frame) for frame in (v * 255).round().astype(np.uint8)] for v in video]
