"""Does a trained UNet read the caption, and how much could it gain by reading it? (docs/training.md)

    .venv/bin/python scripts/caption_diagnostics.py gap --model weights/tiny-demo [--pool runs/tiny-demo/stage1/clip_pool.pt]
    .venv/bin/python scripts/caption_diagnostics.py oracle --model weights/tiny-demo

gap: the v-prediction loss on training clips at fixed timesteps, with each clip's own caption and with the
opposite direction's ("left" <-> "right", "up" <-> "down"), same noise. A ratio near 1 means the caption is
ignored. Without --pool, 48 training clips are encoded here.

oracle: the best possible loss at t = 999 (where v = -x0), with and without the caption, for the synthetic
data: for a first frame, every direction and speed that its start position allows is rendered and encoded;
the loss without the caption is the spread around the mean over all of them, with the caption the spread
around each direction's own mean.
"""

import argparse
import dataclasses
import sys

import numpy as np
import torch

from i2vgen import I2VGenXLPipeline
from i2vgen.models.unet import image_latents_from
from i2vgen.training.config import TrainConfig
from i2vgen.training.data import DIRECTIONS, SPEED_RANGE, render_clip, sample_spec, to_tensor
from i2vgen.training.train import encode_clips

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def caption_gap(pipe: I2VGenXLPipeline, pool: dict, timesteps: list[int], clips: int = 48, seed: int = 0):
    """Rows (t, loss with the right caption, loss with the opposite direction's caption)."""
    rows = torch.arange(min(clips, len(pool["latent_mean"])))
    x0 = pool["latent_mean"][rows] * pipe.vae.config.scaling_factor
    own = [pool["captions"][i] for i in pool["caption_index"][rows]]
    swapped = [" ".join(c.split()[:-1] + [OPPOSITE[c.split()[-1]]]) for c in own]
    text = {name: pipe._encode_prompts(c, None, None, None, guided=False, clip_skip=1)[0]  # as in training
            for name, c in (("own", own), ("opposite", swapped))}
    conditions = dict(fps=torch.full((len(rows),), 16), image_embeddings=pool["image_embeds"][rows],
                      image_latents=image_latents_from(x0[:, :, 0], x0.shape[2]))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    results = []
    for step in timesteps:
        t = torch.full((len(rows),), step)
        x_t, v = pipe.scheduler.add_noise(x0, noise, t), pipe.scheduler.get_velocity(x0, noise, t)
        losses = [(pipe.unet(x_t, t, encoder_hidden_states=text[name], **conditions).sample - v).pow(2).mean().item()
                  for name in ("own", "opposite")]
        results.append((step, *losses))
    return results


def oracle_losses(pipe: I2VGenXLPipeline, first_frames: int = 16, seed: int = 5, num_frames: int = 8, size: int = 64):
    """Mean over first frames of (best loss at t = 999 without the caption, with it), per latent value."""
    rng = np.random.default_rng(seed)
    without, with_caption = [], []
    for _ in range(first_frames):
        spec = sample_spec(rng, num_frames=num_frames, size=size)
        latents = {}
        for direction, (dx, dy) in DIRECTIONS.items():
            for speed in range(SPEED_RANGE[0], SPEED_RANGE[1] + 1):
                end = np.add(spec.start, np.multiply((dx, dy), speed * (num_frames - 1)))
                if (spec.radius <= end).all() and (end <= size - 1 - spec.radius).all():  # the data allows it
                    clip = render_clip(dataclasses.replace(spec, direction=direction, speed=speed), num_frames, size)
                    latents[direction, speed] = pipe.vae.encode(to_tensor(clip)).latent_dist.mean * pipe.vae.config.scaling_factor
        mean = torch.stack(list(latents.values())).mean(0)
        by_direction = {d: torch.stack([x for (dd, _), x in latents.items() if dd == d]).mean(0) for d, _ in latents}
        without.append(np.mean([(x - mean).pow(2).mean().item() for x in latents.values()]))
        with_caption.append(np.mean([(x - by_direction[d]).pow(2).mean().item() for (d, _), x in latents.items()]))
    return float(np.mean(without)), float(np.mean(with_caption))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["gap", "oracle"])
    parser.add_argument("--model", default="weights/tiny-demo", help="pipeline folder")
    parser.add_argument("--unet", help="a UNet folder to use instead of the pipeline's (e.g. the unet/ of a "
                        "checkpoint exported by `python -m i2vgen.training.demo export --checkpoint`)")
    parser.add_argument("--pool", help="clip_pool.pt of a training run (gap); default: encode 48 clips here")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[999, 961, 900, 750, 500, 250])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = I2VGenXLPipeline.from_pretrained(args.model)
    if args.unet:
        pipe.unet = type(pipe.unet).from_pretrained(args.unet)
    with torch.no_grad():
        if args.command == "gap":
            if args.pool:
                pool = torch.load(args.pool, weights_only=True)
            else:
                pool = encode_clips(pipe, TrainConfig(model=args.model, output_dir="", num_clips=48))
            print("t      loss, own caption   loss, opposite direction   ratio")
            for step, own, opposite in caption_gap(pipe, pool, args.timesteps):
                print(f"{step:<6d} {own:<19.4f} {opposite:<26.4f} {opposite / own:.3f}")
        else:
            without, with_caption = oracle_losses(pipe)
            print(f"best loss at t = 999 without the caption {without:.3f}, with it {with_caption:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
