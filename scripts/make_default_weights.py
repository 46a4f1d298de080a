"""Write the embedded default model: a tiny, RANDOMLY INITIALISED I2VGen-XL pipeline in the diffusers layout.

    python scripts/make_default_weights.py [--out weights/tiny-random]

It has the released model's architecture and scheduler at toy widths (UNet channels 16/32, 4-level VAE
with the released 8x downsampling and scaling factor, 2-layer CLIP towers of width 16, a byte-level
tokenizer written here). Its videos are noise-like: it exists so the CLI and demo run anywhere in seconds.
The files load with transformers 4.x and 5.x. Deterministic: the same files every run.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from i2vgen.models.unet import I2VGenXLUNet
from i2vgen.models.vae import AutoencoderKL
from i2vgen.pipeline import CLIPImageProcessor, I2VGenXLPipeline
from i2vgen.schedulers.ddim import DDIMScheduler

WIDTH = 16  # CLIP hidden size = UNet cross_attention_dim
MAX_TOKENS = 77
IMAGE_SIZE = 32  # CLIP vision input
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

RELEASED_SCHEDULER = dict(
    num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
    prediction_type="v_prediction", set_alpha_to_one=True, clip_sample=False, steps_offset=1,
    timestep_spacing="leading",
)


def byte_alphabet() -> list[str]:
    """CLIP's byte-level BPE alphabet: one printable character per byte value (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
    return [table[b] for b in range(256)]


def write_tokenizer(folder: Path) -> int:
    """A CLIP tokenizer with no merges (one token per byte), in the files both transformers 4.x and 5.x read.
    Returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = byte_alphabet()
    vocab = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS,
              "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return len(vocab)


def text_encoder_in_4x_layout(folder: Path):
    """transformers 5 saves CLIPTextModel without the `text_model.` key prefix, which 4.x needs; 5.x reads
    both, so write the 4.x names (those of the released checkpoint)."""
    path = folder / "model.safetensors"
    state = load_file(path)
    if not any(key.startswith("text_model.") for key in state):
        save_file({f"text_model.{key}": value for key, value in state.items()}, path, metadata={"format": "pt"})


def build(vocab_size: int, tokenizer_folder: Path) -> I2VGenXLPipeline:
    torch.manual_seed(0)
    clip = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2, num_attention_heads=2,
                projection_dim=WIDTH, hidden_act="gelu")
    text_config = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS,
                                 bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                                 pad_token_id=vocab_size - 1, **clip)
    vision_config = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=8, **clip)
    from transformers import CLIPTokenizer

    return I2VGenXLPipeline(
        vae=AutoencoderKL(
            block_out_channels=(16, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8,
            sample_size=64, scaling_factor=0.18125,
        ),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder),
        image_encoder=CLIPVisionModelWithProjection(vision_config),
        feature_extractor=CLIPImageProcessor(crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                             size={"shortest_edge": IMAGE_SIZE}),
        unet=I2VGenXLUNet(
            sample_size=8,  # latent size: the CLI's default frame size is 8 * 8 = 64 pixels
            block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, norm_num_groups=8,
            cross_attention_dim=WIDTH, attention_head_dim=8,
        ),
        scheduler=DDIMScheduler(**RELEASED_SCHEDULER),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "weights" / "tiny-random")
    args = parser.parse_args()

    if args.out.exists():
        shutil.rmtree(args.out)
    scratch = args.out / "tokenizer"
    pipe = build(write_tokenizer(scratch), scratch)
    pipe.save_pretrained(args.out)
    shutil.rmtree(args.out / "tokenizer")  # transformers 5 writes only tokenizer.json, which 4.x cannot read
    write_tokenizer(args.out / "tokenizer")
    text_encoder_in_4x_layout(args.out / "text_encoder")
    index_path = args.out / "model_index.json"  # the CLI reads this mark and says so ("_" keys are ignored)
    index = json.loads(index_path.read_text()) | {"_randomly_initialised": True}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB, randomly initialised)")


if __name__ == "__main__":
    main()
