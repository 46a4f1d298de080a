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


def _from_pretrained(cls, folder: Path, **kwargs):
    """`cls.from_pretrained(folder)` without transformers' progress bars, its errors as one line naming the
    folder. A pickle (.bin) weights file loads only as tensors (torch.load weights_only=True, transformers'
    default with torch >= 2.6): one that holds anything else is refused, as it could run code."""
    from transformers.utils import logging

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return cls.from_pretrained(folder, **kwargs)
    except Exception as error:
        if "weights_only" in str(error) or "Unpickl" in type(error).__name__:
            raise ValueError(f"{folder}: refused a pickle weights file that holds more than tensors (it could run "
                             "code); use safetensors weights") from None
        lines = str(error).strip().splitlines()
        raise ValueError(f"{folder}: cannot load {cls.__name__}: {lines[0] if lines else type(error).__name__}"
                         ) from None
    finally:
        if bars:
            logging.enable_progress_bar()


def load_clip_components(folder: Path, dtypes: dict, variants: dict) -> dict:
    """text_encoder, tokenizer, image_encoder and feature_extractor from their subfolders; models in eval().
    `dtypes` and `variants` give each encoder's dtype and weights variant by component name."""
    def weights(name: str) -> dict:
        return dict(variant=variants[name], **_dtype_kwarg(dtypes[name]))

    return dict(
        text_encoder=_from_pretrained(CLIPTextModel, folder / "text_encoder", **weights("text_encoder")).eval(),
        tokenizer=_from_pretrained(CLIPTokenizer, folder / "tokenizer"),
        image_encoder=_from_pretrained(CLIPVisionModelWithProjection, folder / "image_encoder",
                                       **weights("image_encoder")).eval(),
        feature_extractor=_from_pretrained(CLIPImageProcessor, folder / "feature_extractor"),
    )


def encode_text(text_encoder: CLIPTextModel, input_ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
    """CLIP text tokens (N, S, D) from token ids (N, S). clip_skip=None: the last layer's output; clip_skip=k:
    the hidden state k layers before the last, through the final LayerNorm as the last layer's output is."""
    if clip_skip is None:
        return text_encoder(input_ids)[0]
    hidden = text_encoder(input_ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    # transformers 4.x nests the layers under .text_model; 5.x puts them on the model itself.
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
