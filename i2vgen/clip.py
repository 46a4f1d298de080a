"""The pipeline's CLIP components, from transformers: loading them on any supported transformers version,
and the text path (clip_skip) shared by the pipeline and training.

The models know nothing of transformers; everything that depends on its version is here.
"""

from pathlib import Path

import torch
import transformers
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

try:  # transformers >= 5: the PIL-backed class, which needs no torchvision
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers renamed `torch_dtype` to `dtype` in 4.56."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def load_clip_components(folder: Path, dtypes: dict, variants: dict) -> dict:
    """text_encoder, tokenizer, image_encoder and feature_extractor from their subfolders; models in eval().
    `dtypes` and `variants` give each encoder's dtype and weights variant by component name."""
    def weights(name: str) -> dict:
        return dict(variant=variants[name], **_dtype_kwarg(dtypes[name]))

    return dict(
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", **weights("text_encoder")).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder",
                                                                    **weights("image_encoder")).eval(),
        feature_extractor=CLIPImageProcessor.from_pretrained(folder / "feature_extractor"),
    )


def encode_text(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
    """CLIP text tokens (N, S, D) from token ids (N, S). clip_skip=None: the last layer's output; clip_skip=k:
    the hidden state k layers before the last, through the final LayerNorm as the last layer's output is."""
    if clip_skip is None:
        return text_encoder(input_ids)[0]
    hidden = text_encoder(input_ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    # transformers 4.x nests the layers under .text_model; 5.x puts them on the model itself.
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
