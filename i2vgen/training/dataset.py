"""Training samples streamed from the encoder cache (cache.py): a map-style dataset of every sample of a run.

Item i is sample `slot` = i % per_step of optimiser step `step` = i // per_step (per_step = world_size x
batch_size x gradient_accumulation_steps, the global batch; rank r reads the slots r*b .. (r+1)*b - 1 of each
micro-batch of world_size x b, `rank_batches`). Its clip (and so its bucket) is its place in the epoch order of
sampler.py: every clip once per epoch, reshuffled each epoch by (seed, epoch). Everything random about the
sample itself is drawn from a generator seeded by (seed, step, slot) alone: its target frame rate and window,
the posterior sample of its latents, its noise and timestep and its classifier-free-guidance dropout. No
process or worker state enters, so a resumed run, any number of DataLoader workers, or any number of processes
sharing each global batch all train on the same samples.

Only the manifest's small per-clip index is held in memory; each item opens its shard (memory-mapped by
safetensors) and reads just the frames of its window.
"""

import sys
from pathlib import Path

import torch
from einops import rearrange
from safetensors import safe_open

from i2vgen.models.unet import image_latents_from
from i2vgen.training.buckets import Bucket, parse_buckets
from i2vgen.training.cache import load_null_text, update_cache
from i2vgen.training.video_folder import DataError, scan_folder
from i2vgen.training.objective import offset_noise, sample_timesteps
from i2vgen.training.sampler import EpochSampler, seeded_generators
from i2vgen.training.windows import stride_for, window


def usable_entries(entries: dict, buckets: tuple[Bucket, ...], target_fps: tuple[int, ...]) -> tuple[list, list, list]:
    """(the cache entries long enough for their bucket's window, one message per clip too short for it, one
    per clip too short for the stride of some target frame rate, which is then read at a higher rate)."""
    usable, short, faster = [], [], []
    for key, entry in entries.items():
        frames = buckets[entry["bucket"]].frames
        strides = {fps: stride_for(entry["frames"], entry["fps"], fps, frames) for fps in target_fps}
        if None in strides.values():
            short.append(f"{entry['file']}: skipped: {entry['frames']} frames, shorter than a window of {frames}")
            continue
        lowered = [fps for fps in target_fps if strides[fps] < max(1, round(entry["fps"] / fps))]
        if lowered:
            faster.append(f"{entry['file']}: {entry['frames']} frames at {entry['fps']:g} fps, too short for the "
                          f"stride of target fps {lowered}: read at a higher frame rate")
        usable.append((key, entry))
    return usable, short, faster


class ClipDataset(torch.utils.data.Dataset):
    """Samples of a run from the encoder cache; see the module docstring. An item is a dict of tensors: x0
    (4, F, h, w) latents times scaling_factor, noise and t for the objective, and the UNet's conditions."""

    def __init__(self, cache_dir, entries: list, null_text: torch.Tensor, buckets: tuple[Bucket, ...], cfg,
                 scaling_factor: float, num_train_timesteps: int, world_size: int = 1):
        self.cache_dir, self.null_text, self.buckets, self.cfg = str(cache_dir), null_text, buckets, cfg
        self.scaling_factor, self.num_train_timesteps = scaling_factor, num_train_timesteps
        self.world_size = world_size
        self.per_step = world_size * cfg.batch_size * cfg.gradient_accumulation_steps
        self.target_fps = tuple(cfg.sample_fps or (cfg.fps,))
        # The small index: (key, shard, frames, fps) of each clip, grouped by bucket; sampling weights by size.
        self.by_bucket = [[(k, e["shard"], e["frames"], e["fps"]) for k, e in entries if e["bucket"] == b]
                          for b in range(len(buckets))]
        self.sampler = EpochSampler([len(clips) for clips in self.by_bucket], world_size * cfg.batch_size, cfg.seed)

    def __len__(self) -> int:
        return self.cfg.max_steps * self.per_step

    def read(self, shard: str, key: str, frames: range) -> dict:
        with safe_open(f"{self.cache_dir}/{shard}", "pt") as f:
            window = {name: f.get_slice(f"{key}.{name}")[frames.start : frames.stop] for name in
                      ("latent_mean", "latent_std")}
            first_embed = f.get_slice(f"{key}.image_embeds")[frames.start : frames.start + 1]
            text = f.get_tensor(f"{key}.text")
        step = frames.step
        return {"mean": window["latent_mean"][::step], "std": window["latent_std"][::step],
                "image": first_embed, "text": text}

    def __getitem__(self, index: int) -> dict:
        cfg = self.cfg
        step, slot = divmod(index, self.per_step)
        micro, place = divmod(slot, self.sampler.global_batch)
        bucket, clips = self.sampler.micro_batch(step * cfg.gradient_accumulation_steps + micro)
        key, shard, frames, fps = self.by_bucket[bucket][clips[place]]
        rng, generator = seeded_generators(cfg.seed, step, slot)
        num_frames = self.buckets[bucket].frames
        span = window(frames, fps, self.target_fps[rng.integers(len(self.target_fps))], num_frames, rng.random())
        data = self.read(shard, key, span.indices(num_frames))
        mean, std = rearrange(data["mean"], "f c h w -> c f h w"), rearrange(data["std"], "f c h w -> c f h w")
        x0 = (mean + std * torch.randn(mean.shape, generator=generator)) * self.scaling_factor
        drop = bool(rng.random() < cfg.uncond_prob)
        noise = offset_noise((1, *x0.shape), cfg.noise_offset, generator)[0]
        t = sample_timesteps(1, self.num_train_timesteps, generator, cfg.high_noise_fraction,
                             cfg.high_noise_min_timestep)[0]
        return {"x0": x0, "noise": noise, "t": t, "fps": torch.tensor(span.fps),
                "encoder_hidden_states": self.null_text if drop else data["text"],
                "image_embeddings": torch.zeros_like(data["image"]) if drop else data["image"]}


def folder_dataset(pipe, cfg, output_dir: Path, world_size: int = 1, report: bool = True) -> ClipDataset:
    """Scan cfg.data_dir, bring the encoder cache up to date, and (with `report`) list every clip left out (and
    why) in <output_dir>/skipped_clips.txt. A folder with no usable clip is a DataError."""
    buckets = parse_buckets(cfg.buckets or [(cfg.resolution, cfg.resolution, cfg.num_frames)], "buckets")
    clips, problems = scan_folder(cfg.data_dir)
    cache_dir = Path(cfg.cache_dir or output_dir / "cache")
    entries, null_text, unreadable = update_cache(pipe, cfg.model, clips, buckets, cache_dir)
    target_fps = tuple(cfg.sample_fps or (cfg.fps,))
    usable, short, faster = usable_entries(entries, buckets, target_fps)
    skipped = problems + unreadable + short
    if report:
        (output_dir / "skipped_clips.txt").write_text("".join(f"{line}\n" for line in skipped + faster))
        print(f"data_dir {cfg.data_dir}: {len(usable)} clips used, {len(skipped)} skipped, {len(faster)} read at a "
              f"higher frame rate than asked" + (f" (see {output_dir / 'skipped_clips.txt'})" if skipped or faster else ""),
              file=sys.stderr)
    if not usable:
        raise DataError(f"data_dir {cfg.data_dir!r}: no usable clip ({len(skipped)} skipped: "
                         f"{skipped[0] if skipped else 'none'})")
    return ClipDataset(cache_dir, usable, load_null_text(null_text), buckets, cfg, pipe.vae.config.scaling_factor,
                       pipe.scheduler.config.num_train_timesteps, world_size)


def to_micro_batch(batch: dict) -> dict:
    """A collated batch of items -> x0, noise, t and the UNet's condition kwargs."""
    x0 = batch["x0"]
    conditions = dict(fps=batch["fps"], image_latents=image_latents_from(x0[:, :, 0], x0.shape[2]),
                      image_embeddings=batch["image_embeddings"], encoder_hidden_states=batch["encoder_hidden_states"])
    return {"x0": x0, "noise": batch["noise"], "t": batch["t"], "conditions": conditions}


def rank_batches(dataset: ClipDataset, start_step: int, rank: int):
    """This rank's item indices of each micro-batch from `start_step` on: its batch_size slots of each
    micro-batch of world_size x batch_size."""
    b = dataset.cfg.batch_size
    for first in range(start_step * dataset.per_step, len(dataset), dataset.world_size * b):
        yield list(range(first + rank * b, first + (rank + 1) * b))


def folder_batches(dataset: ClipDataset, start_step: int, num_workers: int, rank: int = 0):
    """Per optimiser step from `start_step` on, the list of its micro-batches (this rank's share), read by
    DataLoader workers."""
    cfg = dataset.cfg
    # Its own generator: the workers' base seed (unused: items seed themselves) is not taken from torch's global
    # RNG, which a resumed run restores and the UNet's dropout draws from.
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=list(rank_batches(dataset, start_step, rank)),
                                         num_workers=num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    micro = iter(loader)
    while True:
        yield [to_micro_batch(next(micro)) for _ in range(cfg.gradient_accumulation_steps)]
