"""Validation while training: videos from fixed inputs with the EMA weights, a held-out loss, and metrics.

Every `validate_every` steps (and at the last step) the EMA UNet makes
- one video per entry of `samples` ({"image": path, "prompt": text, "seed": n}), and
- one per held-out clip of `data_dir` (a clip folder as for training: its first frame and caption in, its
  first `num_frames` frames at `fps` as the reference),
saved under <output_dir>/validation/step-<step>/ as GIFs plus grid.png (one row per video, one column per
frame). Measured on the held-out clips (i2vgen/evaluation/fidelity.py): first-frame PSNR against the input
image, per-frame PSNR against the clip, and the v-prediction loss on fixed noise and fixed timesteps (the same
draws at every validation, so the figures are comparable between steps). They go to
<output_dir>/validation.jsonl and, with `tensorboard`, to TensorBoard.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from einops import rearrange

from i2vgen.evaluation.fidelity import first_frame_psnr, per_frame_psnr
from i2vgen.models.unet import image_latents_from
from i2vgen.preprocess import center_crop_wide
from i2vgen.training.objective import offset_noise, velocity_loss
from i2vgen.training.video_folder import read_frames, scan_folder
from i2vgen.training.windows import window
from i2vgen.video import _atomic_path, export_to_gif

LOSS_TIMESTEPS = (99, 299, 499, 699, 899, 999)  # the held-out loss: each clip at each of these


@dataclass
class ValidationSettings:
    """The `validation` section of a training config."""

    samples: list = field(default_factory=list)  # [{"image": path, "prompt": text, "seed": n}, ...]
    data_dir: str | None = None  # held-out clips
    max_clips: int = 8  # of data_dir, in its order
    num_inference_steps: int = 25
    guidance_scale: float = 6.0
    fps: int = 16  # the fps condition and the rate at which held-out clips are read

    @classmethod
    def from_config(cls, section: dict) -> "ValidationSettings":
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(section) - known):
            raise ValueError(f"unknown validation keys {unknown}; known keys: {sorted(known)}")
        for sample in section.get("samples", []):
            if not isinstance(sample, dict) or not {"image", "prompt"} <= set(sample):
                raise ValueError(f"validation samples are {{\"image\", \"prompt\", \"seed\"}} objects, got {sample!r}")
        return cls(**section)


@dataclass
class HeldOut:
    """One held-out clip, ready to validate on."""

    caption: str
    image: PIL.Image.Image
    frames: np.ndarray  # (F, H, W, 3) in [0, 1]
    fps: int


def held_out_clips(settings: ValidationSettings, num_frames: int, width: int, height: int) -> list[HeldOut]:
    """The first `max_clips` usable clips of settings.data_dir, each its first window at settings.fps."""
    if settings.data_dir is None:
        return []
    clips, _ = scan_folder(settings.data_dir)
    held = []
    for clip in clips[: settings.max_clips]:
        frames, fps = read_frames(clip, lambda image: center_crop_wide(image, (width, height)))
        if len(frames) < num_frames:
            continue
        span = window(len(frames), fps, settings.fps, num_frames, 0.0)
        chosen = [frames[i] for i in span.indices(num_frames)]
        held.append(HeldOut(clip.caption, chosen[0], np.stack([np.asarray(f) for f in chosen]) / 255.0, span.fps))
    return held


class Validator:
    """Runs the validation of one training run; see the module docstring."""

    def __init__(self, pipe, settings: ValidationSettings, output_dir: Path, num_frames: int, width: int,
                 height: int, seed: int):
        self.settings, self.output_dir = settings, Path(output_dir)
        self.num_frames, self.width, self.height = num_frames, width, height
        self.held_out = held_out_clips(settings, num_frames, width, height)
        self.loss_inputs = self._loss_inputs(pipe, seed) if self.held_out else None

    @torch.no_grad()
    def _loss_inputs(self, pipe, seed: int) -> dict:
        """Latents (posterior means), conditions, and the fixed noise and timesteps of the held-out loss."""
        clips, n_t = self.held_out, len(LOSS_TIMESTEPS)
        frames = torch.from_numpy(np.stack([c.frames for c in clips])).float() * 2 - 1  # (N, F, H, W, 3)
        pixels = rearrange(frames, "n f h w c -> (n f) c h w").to(pipe.device, pipe.vae.dtype)
        mean = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        x0 = rearrange(mean, "(n f) c h w -> n c f h w", n=len(clips)).float().cpu()
        text = pipe._encode_prompts([c.caption for c in clips], None, None, None, guided=False, clip_skip=1)[0].cpu()
        image = pipe.encode_image([c.image for c in clips], self.width).cpu()
        repeat = lambda x: x.repeat_interleave(n_t, dim=0)  # noqa: E731  (every clip at every timestep)
        x0 = repeat(x0)
        conditions = dict(fps=repeat(torch.tensor([c.fps for c in clips])), encoder_hidden_states=repeat(text),
                          image_embeddings=repeat(image), image_latents=image_latents_from(x0[:, :, 0], x0.shape[2]))
        noise = offset_noise(x0.shape, 0.1, torch.Generator().manual_seed(seed))
        return {"x0": x0, "noise": noise, "t": torch.tensor(LOSS_TIMESTEPS * len(clips)), "conditions": conditions}

    def _videos(self, pipe) -> tuple[list[str], list[np.ndarray]]:
        """(names, videos (F, H, W, 3) in [0, 1]) for the samples, then the held-out clips."""
        s, names, videos = self.settings, [], []
        inputs = [(PIL.Image.open(x["image"]).convert("RGB"), x["prompt"], x.get("seed", 0), s.fps) for x in s.samples]
        inputs += [(c.image, c.caption, i, c.fps) for i, c in enumerate(self.held_out)]
        for i, (image, prompt, seed, fps) in enumerate(inputs):
            torch.manual_seed(seed)  # the pipeline's first-frame posterior sample draws from the global RNG
            video = pipe(prompt, image, height=self.height, width=self.width, num_frames=self.num_frames,
                         target_fps=fps, num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                         generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
            names.append(f"sample-{i:02d}" if i < len(s.samples) else f"heldout-{i - len(s.samples):02d}")
            videos.append(np.asarray(video))
        return names, videos

    def run(self, pipe, ema_unet, step: int) -> tuple[dict, list[str], list[np.ndarray]]:
        """Validate the EMA weights; returns (metrics, video names, videos). Torch's global RNG is left as it was."""
        trained_unet, pipe.unet = pipe.unet, ema_unet
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                names, videos = self._videos(pipe)
                metrics = self._metrics(ema_unet, pipe.scheduler, videos[len(videos) - len(self.held_out):])
        finally:
            pipe.unet = trained_unet
        self._save(step, names, videos)
        return metrics, names, videos

    def _metrics(self, unet, scheduler, held_videos: list[np.ndarray]) -> dict:
        if not self.held_out:
            return {}
        inputs = self.loss_inputs
        loss = velocity_loss(unet, scheduler, inputs["x0"], inputs["noise"], inputs["t"], inputs["conditions"])
        return {"heldout_loss": loss.item(),
                "first_frame_psnr": float(np.mean([first_frame_psnr(v, np.asarray(c.image) / 255.0)
                                                   for v, c in zip(held_videos, self.held_out)])),
                "per_frame_psnr": float(np.mean([np.mean(per_frame_psnr(v, c.frames))
                                                 for v, c in zip(held_videos, self.held_out)]))}

    def _save(self, step: int, names: list[str], videos: list[np.ndarray]) -> None:
        folder = self.output_dir / "validation" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, video in zip(names, videos):
            export_to_gif(list(video), str(folder / f"{name}.gif"), fps=8)
        with _atomic_path(folder / "grid.png") as tmp:
            PIL.Image.fromarray(grid(videos)).save(tmp, format="PNG")


def grid(videos: list[np.ndarray]) -> np.ndarray:
    """One row per video, one column per frame: uint8 (N H, F W, 3)."""
    return (rearrange(np.stack(videos), "n f h w c -> (n h) (f w) c") * 255).round().astype(np.uint8)
