"""The tiny demo model: an I2VGen-XL pipeline at toy size, trained on synthetic motion clips on a CPU.

    python -m i2vgen.training.demo base --out runs/tiny-demo/base     # tokenizer, CLIP, trained VAE, random UNet
    i2vgen train --config scripts/train_demo_stage1.json --until 2000   # the UNet (i2vgen/training/train.py),
                                                                        # then stages 2 and 3: scripts/train_demo.sh
    python -m i2vgen.training.demo export --run runs/tiny-demo/unet --out weights/tiny-demo

`scripts/train_demo.sh` runs all three. Every part has the released model's architecture and scheduler:
- tokenizer: CLIP byte-level BPE with one token per caption word (i2vgen/training/tokenizer.py);
- text and image encoders: 2-layer CLIP towers of width 32, randomly initialised and frozen; random
  projections still give every caption its own embedding, which is all the UNet needs to tell them apart;
- VAE: 4 levels (8x downsampling, as released: 64x64 frames -> 8x8 latents), trained here on single frames
  for reconstruction with a tiny KL weight, scaling_factor set to 1 / std of the latents as SD did;
- UNet: 2 levels of 32/64 channels with cross-attention on the first, trained by train.py.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from i2vgen.pipelines.clip import CLIPImageProcessor, encode_text
from i2vgen.loading import save_components
from i2vgen.models.unet import I2VGenXLUNet
from i2vgen.models.vae import AutoencoderKL
from i2vgen.schedulers.base import RELEASED_SCHEDULER_CONFIG
from i2vgen.schedulers.ddim import DDIMScheduler
from i2vgen.training.checkpoint import load_ema
from i2vgen.training.data import BASE_COLORS, DIRECTIONS, SHAPES, render_frame, sample_spec, to_tensor
from i2vgen.training.tokenizer import write_clip_tokenizer
from i2vgen.training.train import export_pipeline

WORDS = ["a", *BASE_COLORS, *SHAPES, "moving", *DIRECTIONS]
CLIP_WIDTH = 32  # CLIP hidden size = projection size = the UNet's cross_attention_dim
MAX_TOKENS = 16  # captions are 7 tokens with BOS and EOS
CLIP_IMAGE_SIZE = 32
FRAME_SIZE = 64

VAE_CONFIG = dict(
    block_out_channels=(16, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8, sample_size=FRAME_SIZE,
)
UNET_CONFIG = dict(
    sample_size=FRAME_SIZE // 8, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, norm_num_groups=8,
    cross_attention_dim=CLIP_WIDTH, attention_head_dim=8,
)


def clip_encoders(vocab_size: int) -> tuple[CLIPTextModel, CLIPVisionModelWithProjection]:
    tower = dict(hidden_size=CLIP_WIDTH, intermediate_size=2 * CLIP_WIDTH, num_hidden_layers=2,
                 num_attention_heads=2, projection_dim=CLIP_WIDTH, hidden_act="gelu")
    text = CLIPTextConfig(vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS, bos_token_id=vocab_size - 2,
                          eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, **tower)
    vision = CLIPVisionConfig(image_size=CLIP_IMAGE_SIZE, patch_size=8, **tower)
    return CLIPTextModel(text).eval(), CLIPVisionModelWithProjection(vision).eval()


def pretrain_text_encoder(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, steps: int = 300) -> list[float]:
    """Give the random text tower a little of what a real CLIP has: every token after the caption carries
    its meaning. A linear probe on each end-of-text/padding token's embedding is trained, with the tower, to
    name the caption's colour, shape and direction; the probe is then thrown away.

    With random weights, only the token of each word differs between captions ("left" vs "right" at one
    position out of the UNet's 84 context tokens), a signal too diluted for the tiny UNet to pick up in
    a CPU-sized run; after this step ten padding tokens carry it too."""
    vocabularies = [list(BASE_COLORS), list(SHAPES), list(DIRECTIONS)]
    captions = [(c, s, d) for c in vocabularies[0] for s in vocabularies[1] for d in vocabularies[2]]
    ids = tokenizer([f"a {c} {s} moving {d}" for c, s, d in captions], padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    labels = [torch.tensor([v.index(caption[i]) for caption in captions]) for i, v in enumerate(vocabularies)]
    tail = slice(6, None)  # after BOS and the 5 words: EOS and padding
    probes = torch.nn.ModuleList(torch.nn.Linear(CLIP_WIDTH, len(v)) for v in vocabularies)
    optimizer = torch.optim.Adam([*text_encoder.parameters(), *probes.parameters()], lr=3e-3)
    text_encoder.train()
    losses = []
    for _ in range(steps):
        tokens = encode_text(text_encoder, ids, clip_skip=1)[:, tail]  # (32, T, D), as the pipeline's
        loss = sum(torch.nn.functional.cross_entropy(probe(tokens).flatten(0, 1), label.repeat_interleave(tokens.shape[1]))
                   for probe, label in zip(probes, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    text_encoder.eval().requires_grad_(True)
    return losses


def new_autoencoder() -> AutoencoderKL:
    """A 4-level VAE whose posterior starts almost deterministic: the log-variance half of quant_conv is
    biased to -10 (std ~0.007). With the KL weight tiny, a unit-variance start would bury the small early
    latents in sampling noise and slow reconstruction down for hundreds of steps."""
    vae = AutoencoderKL(**VAE_CONFIG)
    latent = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[latent:] *= 0.01
        vae.quant_conv.bias[latent:] = -10.0
    return vae


def train_autoencoder(vae: AutoencoderKL, steps: int, batch_size: int = 16, lr: float = 2e-3,
                      kl_weight: float = 1e-6, object_weight: float = 10.0, seed: int = 0) -> list[float]:
    """Reconstruction training on single frames of training clips: weighted L1 + MSE + kl_weight * KL.

    Pixels of the object count `object_weight` times: it covers ~5% of the frame, and without the weight
    the autoencoder spends its first hundreds of steps on the background alone."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * (1 - 0.9 * s / steps))
    vae.train()
    mses = []
    for _ in (bar := tqdm(range(steps), desc="vae")):
        specs = [sample_spec(rng) for _ in range(batch_size)]
        x = to_tensor(np.stack([render_frame(spec, int(rng.integers(8))) for spec in specs]))
        background = to_tensor(np.array([[[[spec.background] * 3]] for spec in specs], dtype=np.uint8))
        weight = 1 + (object_weight - 1) * ((x - background).abs().amax(1, keepdim=True) > 0).float()
        posterior = vae.encode(x).latent_dist
        error = vae.decode(posterior.sample()).sample - x
        loss = (weight * (error.abs() + error**2)).mean() + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        mses.append(error.pow(2).mean().item())
        bar.set_postfix(psnr=f"{10 * np.log10(4 / np.mean(mses[-20:])):.1f}dB")  # [-1, 1]: peak-to-peak 2
    vae.eval()
    return mses


@torch.no_grad()
def fit_scaling_factor(vae: AutoencoderKL, num_frames: int = 256, seed: int = 1) -> float:
    """1 / std of the latent means over training frames, so the UNet sees unit-scale latents (as SD's 0.18215)."""
    rng = np.random.default_rng(seed)
    frames = np.stack([render_frame(sample_spec(rng), int(rng.integers(8))) for _ in range(num_frames)])
    return float(1.0 / vae.encode(to_tensor(frames)).latent_dist.mean.std())


def _text_encoder_in_4x_layout(folder: Path):
    """transformers 5 saves CLIPTextModel keys without the `text_model.` prefix that 4.x needs; 5.x reads
    both, so write the 4.x names (those of the released checkpoint)."""
    path = folder / "model.safetensors"
    state = load_file(path)
    if not any(key.startswith("text_model.") for key in state):
        save_file({f"text_model.{key}": value for key, value in state.items()}, path, metadata={"format": "pt"})


def build_base(out, vae_steps: int, seed: int = 0, vae_from=None) -> None:
    """Write the starting pipeline to `out`: frozen parts ready, VAE trained, UNet randomly initialised.

    `vae_from`: a base folder written earlier with the same seed and vae_steps, whose VAE is reused. The VAE
    stage is seeded on its own (torch seed + 1, data seed), so it would come out the same: this only saves
    its ten minutes when another part changes."""
    out = Path(out)
    scratch = out.parent / (out.name + "-tokenizer")
    vocab_size = write_clip_tokenizer(scratch, WORDS, MAX_TOKENS)

    torch.manual_seed(seed)
    text_encoder, image_encoder = clip_encoders(vocab_size)
    text_losses = pretrain_text_encoder(text_encoder, CLIPTokenizer.from_pretrained(scratch))
    torch.manual_seed(seed + 1)
    if vae_from is None:
        vae = new_autoencoder()
        mses = train_autoencoder(vae, vae_steps, seed=seed)
        vae.config.scaling_factor = fit_scaling_factor(vae)
    else:
        vae = AutoencoderKL.from_pretrained(vae_from, subfolder="vae")
        mses = json.loads((Path(vae_from) / "vae_training.json").read_text())["mse"]
    torch.manual_seed(seed + 2)
    components = dict(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(scratch),
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
                                             size={"shortest_edge": CLIP_IMAGE_SIZE}),
        unet=I2VGenXLUNet(**UNET_CONFIG), scheduler=DDIMScheduler(**RELEASED_SCHEDULER_CONFIG),
    )
    shutil.rmtree(out, ignore_errors=True)
    save_components(out, components)
    shutil.rmtree(out / "tokenizer")  # transformers 5 writes only tokenizer.json, which 4.x cannot read
    shutil.move(scratch, out / "tokenizer")
    _text_encoder_in_4x_layout(out / "text_encoder")
    (out / "vae_training.json").write_text(json.dumps({"steps": vae_steps, "mse": mses}) + "\n")
    (out / "text_encoder_training.json").write_text(json.dumps({"loss": text_losses}) + "\n")


TRAINING_NOTES = ("vae_training.json", "text_encoder_training.json")  # loss logs of the base stage, not shipped


def export(run, out, checkpoint=None):
    """Copy the trained pipeline of a training run (`<run>/pipeline`) to `out`, e.g. weights/tiny-demo;
    with `checkpoint` (a checkpoint folder of the run), that checkpoint's EMA UNet instead."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    if checkpoint is None:
        shutil.copytree(Path(run) / "pipeline", out, ignore=shutil.ignore_patterns(*TRAINING_NOTES))
    else:
        base = json.loads((Path(run) / "config.json").read_text())["model"]
        export_pipeline(base, load_ema(Path(checkpoint), I2VGenXLUNet.from_pretrained(Path(base) / "unet")), out)
        for notes in TRAINING_NOTES:
            (out / notes).unlink(missing_ok=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build or export the tiny demo pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("base", help="tokenizer, CLIP encoders, trained VAE and a random UNet")
    base.add_argument("--out", required=True)
    base.add_argument("--vae-steps", type=int, default=1500)
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--threads", type=int, default=1)
    base.add_argument("--vae-from", help="reuse the VAE of a base folder built with the same seed and steps")
    exp = sub.add_parser("export", help="copy a finished training run's pipeline")
    exp.add_argument("--run", required=True)
    exp.add_argument("--out", required=True)
    exp.add_argument("--checkpoint", help="export this checkpoint folder's EMA UNet instead of the final one")
    args = parser.parse_args(argv)
    if args.command == "base":
        torch.set_num_threads(args.threads)
        build_base(args.out, args.vae_steps, args.seed, args.vae_from)
        print(f"wrote {args.out}")
    else:
        export(args.run, args.out, args.checkpoint)


if __name__ == "__main__":
    main()
