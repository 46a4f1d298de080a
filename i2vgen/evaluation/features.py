"""Features from pretrained networks for the model-based metrics: CLIP (image and text), DINO (ViT or DINOv2)
and VideoMAE (for FVD), all transformers models read from a local folder only (`local_files_only`: never
downloaded). A missing or unreadable folder is one line naming it and the model it should hold.

Frames are (F, H, W, C) arrays in [0, 1]; features come back as float64 numpy arrays (N, D).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINO's and VideoMAE's

EXPECTED = {  # what each loader wants, for the message when a folder does not hold it
    "clip": "a transformers CLIPModel with its tokenizer, e.g. a local copy of openai/clip-vit-base-patch16",
    "dino": "a transformers ViT or DINOv2 model, e.g. a local copy of facebook/dino-vitb16 or facebook/dinov2-base",
    "videomae": "a transformers VideoMAEModel, e.g. a local copy of MCG-NJU/videomae-base",
}


def load_model(kind: str, path):
    """(model, tokenizer or None) of `kind` ("clip", "dino" or "videomae") from the local folder `path`, in
    eval mode; raises FileNotFoundError in one line when the folder does not hold one."""
    from transformers import AutoModel, AutoTokenizer, CLIPModel, VideoMAEModel

    loader = {"clip": CLIPModel, "dino": AutoModel, "videomae": VideoMAEModel}[kind]
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"--{kind} {path}: no model there (config.json missing); expected {EXPECTED[kind]}")
    try:
        model = loader.from_pretrained(path, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True) if kind == "clip" else None
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"--{kind} {path}: cannot load {EXPECTED[kind]}: {first}") from None
    return model, tokenizer


def pixel_values(frames, size: int, mean, std) -> torch.Tensor:
    """(N, H, W, C) in [0, 1] -> (N, C, size, size): shorter side resized to `size` (bicubic, antialiased),
    centre crop, normalised with `mean` and `std`."""
    x = rearrange(torch.as_tensor(np.asarray(frames), dtype=torch.float32), "n h w c -> n c h w")
    scale = size / min(x.shape[-2:])
    height, width = max(size, round(x.shape[-2] * scale)), max(size, round(x.shape[-1] * scale))
    x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    top, left = (height - size) // 2, (width - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@torch.no_grad()
def clip_image_features(model, frames) -> np.ndarray:
    """CLIP image embeddings (the projection of the vision tower's pooled output), (N, projection_dim)."""
    pixels = pixel_values(frames, model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD)
    features = model.get_image_features(pixel_values=pixels)
    return getattr(features, "pooler_output", features).double().numpy()


@torch.no_grad()
def clip_text_features(model, tokenizer, prompts: list[str]) -> np.ndarray:
    """CLIP text embeddings of `prompts`, truncated to the model's context, (N, projection_dim)."""
    tokens = tokenizer(prompts, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                       return_tensors="pt")
    features = model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    return getattr(features, "pooler_output", features).double().numpy()


@torch.no_grad()
def dino_features(model, frames) -> np.ndarray:
    """DINO features: the class token of the last (normalised) hidden state, (N, hidden_size)."""
    pixels = pixel_values(frames, model.config.image_size, IMAGENET_MEAN, IMAGENET_STD)
    return model(pixel_values=pixels).last_hidden_state[:, 0].double().numpy()


@torch.no_grad()
def videomae_features(model, video) -> np.ndarray:
    """One VideoMAE feature per video: the model's `num_frames` frames picked evenly from the clip, its mean
    token of the last hidden state, (1, hidden_size)."""
    video = np.asarray(video)
    picks = np.linspace(0, len(video) - 1, model.config.num_frames).round().astype(int)
    pixels = pixel_values(video[picks], model.config.image_size, IMAGENET_MEAN, IMAGENET_STD)
    return model(pixel_values=pixels[None]).last_hidden_state.mean(dim=1).double().numpy()
