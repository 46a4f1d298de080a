"""An on-disk cache of what the frozen encoders make of each clip, so training never runs them.

    <cache_dir>/manifest.json                   key -> entry (shard, frames, fps, bucket, caption, source file)
    <cache_dir>/shard-<id>.safetensors          per clip: <key>.latent_mean, <key>.latent_std (N, 4, h, w): the VAE
                                                posterior of every frame; <key>.image_embeds (N, D): CLIP image
                                                embedding of every frame (any one can start a window);
                                                <key>.text (S, D): the caption's CLIP tokens
    <cache_dir>/null_text-<fingerprint>.safetensors   the empty prompt's tokens (the unconditional text)

An entry's key hashes everything that produced it: the clip file's resolved path, size and modification time,
its caption and time range, the bucket list, and the fingerprint of the encoders (the bytes of the VAE, both
CLIP towers, the tokenizer and feature-extractor files). A changed clip, config or model gives a new key, so it
is encoded again; an old entry is never served for it. Shards and the manifest are written through a temporary
file and renamed, the manifest after each shard, so an interrupted encoding keeps everything finished before it
and never leaves a half-written file. One process writes a cache (under torchrun: rank 0, the others wait).
"""

import hashlib
import json
import sys
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from i2vgen.preprocess import center_crop_wide, vae_pixel_values
from i2vgen.training.buckets import Bucket, nearest_bucket
from i2vgen.training.video_folder import Clip, ClipError, read_frames
from i2vgen.video import _atomic_path

ENCODER_PARTS = ("vae", "text_encoder", "image_encoder", "tokenizer", "feature_extractor")
CLIP_SKIP = 1  # the text layer the pipeline conditions on (REFERENCE.md)


def encoder_fingerprint(model_folder) -> str:
    """sha256 over the files of the frozen encoders of a pipeline folder (names and bytes)."""
    digest = hashlib.sha256()
    for part in ENCODER_PARTS:
        for path in sorted(Path(model_folder, part).rglob("*")):
            if path.is_file():
                digest.update(f"{part}/{path.relative_to(Path(model_folder, part))}\0".encode())
                with open(path, "rb") as f:
                    digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def entry_key(clip: Clip, buckets: tuple[Bucket, ...], fingerprint: str) -> str:
    """What produced an entry, hashed: the file (path, size, mtime; every frame file for a folder of frames),
    caption, overrides, buckets and encoders."""
    files = sorted(clip.path.rglob("*")) if clip.path.is_dir() else [clip.path]
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    what = dict(files=stats, caption=clip.caption, fps=clip.fps, start=clip.start, end=clip.end,
                buckets=[[b.height, b.width, b.frames] for b in buckets], encoders=fingerprint, clip_skip=CLIP_SKIP)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def read_manifest(cache_dir: Path) -> dict:
    path = cache_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_atomic(path: Path, write) -> None:
    with _atomic_path(path) as tmp:
        write(tmp)


@torch.no_grad()
def encode_clip(pipe, clip: Clip, buckets: tuple[Bucket, ...], chunk: int = 16) -> tuple[dict, dict]:
    """Decode one clip into its bucket's size and run the frozen encoders; returns (tensors, entry)."""
    chosen = []

    def to_bucket(image):  # every frame of a clip has the first one's size
        chosen.append(chosen[0] if chosen else nearest_bucket(buckets, *image.size))
        bucket = buckets[chosen[0]]
        return center_crop_wide(image, (bucket.width, bucket.height))

    frames, fps = read_frames(clip, to_bucket)
    bucket = buckets[chosen[0]]
    means, stds, embeds = [], [], []
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        pixels = vae_pixel_values(part, bucket.width, bucket.height).to(pipe.device, pipe.vae.dtype)
        posterior = pipe.vae.encode(pixels).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        embeds.append(pipe.encode_image(part, bucket.width)[:, 0].float().cpu())  # (n, D)
    text = pipe._encode_prompts([clip.caption], None, None, None, guided=False, clip_skip=CLIP_SKIP)[0][0]
    tensors = {"latent_mean": torch.cat(means), "latent_std": torch.cat(stds), "image_embeds": torch.cat(embeds),
               "text": text.float().cpu()}
    entry = {"frames": len(frames), "fps": fps, "bucket": chosen[0], "caption": clip.caption, "file": str(clip.path)}
    return tensors, entry


def _null_text(pipe, cache_dir: Path, fingerprint: str) -> Path:
    path = cache_dir / f"null_text-{fingerprint[:16]}.safetensors"
    if not path.exists():
        text = pipe._encode_prompts([""], None, None, None, guided=False, clip_skip=CLIP_SKIP)[0][0]
        _write_atomic(path, lambda tmp: save_file({"text": text.float().cpu().contiguous()}, tmp))
    return path


def _flush(cache_dir: Path, manifest: dict, pending: list) -> None:
    """Write the pending clips as one shard, then the manifest that names them."""
    shard = f"shard-{uuid.uuid4().hex[:16]}.safetensors"
    tensors = {f"{key}.{name}": value.contiguous() for key, encoded, _ in pending for name, value in encoded.items()}
    _write_atomic(cache_dir / shard, lambda tmp: save_file(tensors, tmp))
    for key, _, entry in pending:
        manifest[key] = entry | {"shard": shard}
    _write_atomic(cache_dir / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    pending.clear()


def update_cache(pipe, model_folder, clips: list[Clip], buckets: tuple[Bucket, ...], cache_dir,
                 clips_per_shard: int = 32) -> tuple[dict, Path, list[str]]:
    """Encode the clips the cache lacks. Returns ({key: entry} for the usable clips, the null-text file, one
    message per clip that could not be read)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = encoder_fingerprint(model_folder)
    manifest = read_manifest(cache_dir)
    keys = {entry_key(clip, buckets, fingerprint): clip for clip in clips}
    missing = [(key, clip) for key, clip in keys.items() if key not in manifest]
    problems, pending = [], []
    if missing:
        print(f"encoding {len(missing)} of {len(keys)} clips into {cache_dir}", file=sys.stderr)
    for key, clip in tqdm(missing, desc="encoding clips", leave=False, disable=not missing):
        try:
            pending.append((key, *encode_clip(pipe, clip, buckets)))
        except ClipError as error:
            problems.append(str(error))
        if len(pending) >= clips_per_shard:
            _flush(cache_dir, manifest, pending)
    if pending:
        _flush(cache_dir, manifest, pending)
    return {key: manifest[key] for key in keys if key in manifest}, _null_text(pipe, cache_dir, fingerprint), problems


def load_null_text(path: Path) -> torch.Tensor:
    return load_file(path)["text"]

