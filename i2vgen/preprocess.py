"""Turning the conditioning image into the two tensors the pipeline needs.

I2VGen-XL reads the input image twice (paper section 3.1):
- the *CLIP branch* (global semantics): a square centre crop, resized to the image encoder's input size
  and normalised with the CLIP mean and std;
- the *VAE branch* (low-level detail): a centre crop to the video's (width, height), scaled to [-1, 1],
  to be encoded into the first frame's latents.

Both crops use "center crop wide" from the original code: shrink by an integer-divided scale with a BOX
filter so the image just covers the target, then cut out the centre. Every step goes through 8-bit PIL
images, as the reference does, so the pixels match it exactly.

Before that, every input becomes an upright 8-bit RGB image the way a user expects (`normalize_image`): the
EXIF orientation is applied (as diffusers' `load_image` does), 16-bit and float images are scaled to 8 bits
(PIL's own conversion clips them, turning a 16-bit photo white), and alpha is dropped, as diffusers does.

At the other end, `postprocess_video` turns the decoded pixels into the pipeline's output types.
"""

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from einops import rearrange

OUTPUT_TYPES = ("pil", "np", "pt", "latent")  # "latent": the pipeline returns the latents, undecoded

# A resize that would make an image this many times larger than both the input and the target is done on the
# cropped region only (see center_crop_wide): a 1 x 400000 strip must not become a 64 x 25600000 image.
MAX_RESIZE_GROWTH = 4


def to_pil_images(image) -> list[PIL.Image.Image]:
    """Any accepted image input -> a list of RGB PIL images.

    Accepted: a PIL image; a float tensor (C, H, W) or (N, C, H, W) in [0, 1]; a float array (H, W, C) or
    (N, H, W, C) in [0, 1]; or a list of any of these; C is 1 (gray), 3 (RGB) or 4 (RGBA). PIL images go through
    `normalize_image`.
    """
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError("`image` is an empty list")
    images = []
    for item in items:
        if isinstance(item, PIL.Image.Image):
            images.append(normalize_image(item))
        elif isinstance(item, torch.Tensor):
            array = _check_image_array(item.detach().cpu().float().numpy(), channels_first=True)
            images += _array_to_pil(array, channels_first=True)
        elif isinstance(item, np.ndarray):
            images += _array_to_pil(_check_image_array(item.astype(np.float32), channels_first=False),
                                    channels_first=False)
        else:
            raise TypeError(
                "`image` must be a PIL image, a torch.Tensor, a numpy array, or a list of these; "
                f"got {type(item).__name__}"
            )
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


def normalize_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """An upright 8-bit RGB copy: EXIF orientation applied; 16-bit integer modes scaled by 255/65535; float
    mode "F" scaled by 255 when it holds values in [0, 1] (else taken as 0..255, clipped); alpha dropped."""
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit PNG/TIFF (PIL opens some as 32-bit "I")
        pixels = np.asarray(image, dtype=np.float64) * (255 / 65535)
        image = PIL.Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), mode="L")
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise ValueError("the image holds NaN or infinite values")
        pixels = pixels * 255 if pixels.min() >= 0 and pixels.max() <= 1 else pixels
        image = PIL.Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_image_array(array: np.ndarray, channels_first: bool) -> np.ndarray:
    """A float image array of (N,) C, H, W (tensors) or (N,) H, W, C (arrays), C in 1, 3, 4, values in [0, 1]."""
    layout = "(C, H, W) or (N, C, H, W)" if channels_first else "(H, W, C) or (N, H, W, C)"
    kind = "a tensor" if channels_first else "an array"
    if array.ndim not in (3, 4):
        raise ValueError(f"an image given as {kind} must be {layout}, got shape {tuple(array.shape)}")
    channels = array.shape[-3] if channels_first else array.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"an image given as {kind} must be {layout} with C = 1, 3 or 4, got shape "
                         f"{tuple(array.shape)}" + (" (channels last? pass a numpy array, or permute)" if
                                                     channels_first else " (channels first? pass a torch tensor)"))
    if not np.isfinite(array).all():
        raise ValueError("the image tensor or array holds NaN or infinite values")
    if array.min() < 0 or array.max() > 1:
        raise ValueError("image tensors and arrays must hold values in [0, 1]")
    return array


def _array_to_pil(array: np.ndarray, channels_first: bool) -> list[PIL.Image.Image]:
    """Float [0, 1] -> 8-bit PIL images, rounding like the reference (x * 255, round half to even)."""
    if array.ndim == 3:
        array = array[None]
    if channels_first:
        array = array.transpose(0, 2, 3, 1)
    array = (array * 255).round().astype(np.uint8)[..., :3]  # alpha dropped, as for PIL images
    if array.shape[-1] == 1:
        return [PIL.Image.fromarray(a[..., 0], mode="L") for a in array]
    return [PIL.Image.fromarray(a) for a in array]


def center_crop_wide(image: PIL.Image.Image, resolution: tuple[int, int]) -> PIL.Image.Image:
    """Resize so the image just covers `resolution` = (width, height), then crop its centre.

    The new size is each side floor-divided by the float scale (the original code's integer division),
    resized with a BOX filter. When that size would be more than MAX_RESIZE_GROWTH times larger than both the
    input and the target (a long thin strip), only the cropped region is resized; its pixels can then differ
    from the reference's where a box edge falls exactly on a pixel edge (float rounding of the box).
    """
    width, height = resolution
    scale = min(image.width / width, image.height / height)
    new_width, new_height = round(image.width // scale), round(image.height // scale)
    left, top = (new_width - width) // 2, (new_height - height) // 2  # -1 when the floor division lost a pixel
    if new_width * new_height <= MAX_RESIZE_GROWTH * max(image.width * image.height, width * height):
        image = image.resize((new_width, new_height), resample=PIL.Image.BOX)
        return image.crop((left, top, left + width, top + height))
    # The crop box within the resized image, clipped to it, mapped back to input pixels; outside it: black.
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, new_width), min(top + height, new_height)
    sx, sy = image.width / new_width, image.height / new_height
    part = image.resize((x1 - x0, y1 - y0), resample=PIL.Image.BOX, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    out = PIL.Image.new(image.mode, (width, height))
    out.paste(part, (x0 - left, y0 - top))
    return out


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
    """Decoded pixels (B, 3, F, H, W) in [-1, 1] (decode_latents' layout) -> [0, 1] as a tensor (B, F, 3, H, W)
    ("pt"), an array (B, F, H, W, 3) ("np"), or per video a list of PIL images ("pil")."""
    video = rearrange((video * 0.5 + 0.5).clamp(0, 1), "b c f h w -> b f c h w")
    if output_type == "pt":
        return video
    video = rearrange(video, "b f c h w -> b f h w c").cpu().numpy()
    if output_type == "np":
        return video
    return [[PIL.Image.fromarray(frame) for frame in (v * 255).round().astype(np.uint8)] for v in video]
