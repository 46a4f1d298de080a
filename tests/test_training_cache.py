"""The encoder cache and the samples streamed from it: nothing stale is ever served, memory does not grow
with the number of clips, and every sample depends only on (seed, step, slot).

Expected values come from the definitions (what the key hashes, what an item is made of), or compare two
runs of our own code with each other (workers vs none, resumed vs straight)."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from conftest import clip_folder, micro_pipeline, write_metadata, write_mp4

from i2vgen.pipeline import I2VGenXLPipeline
from i2vgen.training import cache as cache_module
from i2vgen.training.buckets import parse_buckets
from i2vgen.training.cache import read_manifest, update_cache
from i2vgen.training.config import TrainConfig
from i2vgen.training.dataset import ClipDataset, folder_dataset, usable_entries
from i2vgen.training.train import train
from i2vgen.training.video_folder import scan_folder

BUCKETS = parse_buckets([[32, 32, 4]])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return micro_pipeline(tmp_path_factory.mktemp("micro"))


@pytest.fixture(scope="module")
def pipe(model):
    return I2VGenXLPipeline.from_pretrained(model)


def _encoded(pipe, model, data, cache_dir, buckets=BUCKETS):
    clips, _ = scan_folder(data)
    return update_cache(pipe, model, clips, buckets, cache_dir)


def test_the_cache_holds_what_the_encoders_make(pipe, model, tmp_path):
    data = clip_folder(tmp_path / "data", 2)
    entries, null_text, problems = _encoded(pipe, model, data, tmp_path / "cache")
    assert problems == [] and len(entries) == 2
    entry = next(e for e in entries.values() if e["file"].endswith("clip001.mp4"))
    assert entry["frames"] == 7 and entry["fps"] == 24 and entry["bucket"] == 0
    key = next(k for k, e in entries.items() if e is entry)
    shard = load_file(tmp_path / "cache" / entry["shard"])
    assert shard[f"{key}.latent_mean"].shape == (7, 4, 4, 4) and shard[f"{key}.image_embeds"].shape == (7, 8)
    expected = pipe._encode_prompts(["a red circle moving left"], None, None, None, guided=False, clip_skip=1)[0][0]
    torch.testing.assert_close(shard[f"{key}.text"], expected, rtol=0, atol=0)  # the same encoder, the same call


def test_a_changed_clip_or_config_or_model_is_never_served_stale(pipe, model, tmp_path):
    data = clip_folder(tmp_path / "data", 3)
    first, _, _ = _encoded(pipe, model, data, tmp_path / "cache")
    calls = []
    real = cache_module.encode_clip
    cache_module.encode_clip = lambda *args: calls.append(args[1].path.name) or real(*args)
    try:
        assert _encoded(pipe, model, data, tmp_path / "cache")[0] == first and calls == []  # all reused
        write_mp4(data / "clip001.mp4", 9, 12)  # a new clip under the old name
        changed, _, _ = _encoded(pipe, model, data, tmp_path / "cache")
        assert calls == ["clip001.mp4"]
        new = next(e for e in changed.values() if e["file"].endswith("clip001.mp4"))
        assert new["frames"] == 9 and new["fps"] == 12
        calls.clear()
        _encoded(pipe, model, data, tmp_path / "cache", parse_buckets([[32, 32, 4], [32, 64, 4]]))  # new buckets
        assert sorted(calls) == ["clip000.mp4", "clip001.mp4", "clip002.mp4"]
        calls.clear()
        vae_file = model / "vae" / "diffusion_pytorch_model.safetensors"
        os.utime(vae_file)  # the same bytes: the fingerprint hashes content, so nothing changes
        _encoded(pipe, model, data, tmp_path / "cache")
        assert calls == []
        other = tmp_path / "other-model"
        I2VGenXLPipeline.from_pretrained(model).save_pretrained(other)
        weights = other / "vae" / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        state["encoder.conv_in.bias"] += 1
        from safetensors.torch import save_file
        save_file(state, weights)
        _encoded(I2VGenXLPipeline.from_pretrained(other), other, data, tmp_path / "cache")
        assert sorted(calls) == ["clip000.mp4", "clip001.mp4", "clip002.mp4"]  # another VAE: all again
    finally:
        cache_module.encode_clip = real


def test_an_interrupted_encoding_keeps_what_was_finished(pipe, model, tmp_path, monkeypatch):
    data = clip_folder(tmp_path / "data", 4)
    clips, _ = scan_folder(data)
    real, done = cache_module.encode_clip, []

    def interrupted(*args):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return real(*args)

    monkeypatch.setattr(cache_module, "encode_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        update_cache(pipe, model, clips, BUCKETS, tmp_path / "cache", clips_per_shard=1)
    manifest = read_manifest(tmp_path / "cache")
    assert len(manifest) == 2  # the two finished shards, named by a complete manifest
    assert sorted(p.name.startswith("shard-") for p in (tmp_path / "cache").iterdir()) == [False, True, True]
    monkeypatch.setattr(cache_module, "encode_clip", real)
    entries, _, _ = update_cache(pipe, model, clips, BUCKETS, tmp_path / "cache")
    assert len(entries) == 4 and all(manifest[k] == entries[k] for k in manifest)


def _dataset(pipe, model, data, cache_dir, **overrides) -> ClipDataset:
    cfg = TrainConfig(model=str(model), output_dir=str(cache_dir.parent), data_dir=str(data), cache_dir=str(cache_dir),
                      buckets=((32, 32, 4), (32, 48, 4)), sample_fps=(8, 24), batch_size=2,
                      gradient_accumulation_steps=2, max_steps=5, **overrides)
    return folder_dataset(pipe, cfg, cache_dir.parent)


def test_samples_depend_only_on_seed_step_and_slot(pipe, model, tmp_path):
    data = clip_folder(tmp_path / "data", 6)
    dataset = _dataset(pipe, model, data, tmp_path / "run" / "cache")
    items = [dataset[i] for i in range(len(dataset))]
    again = [dataset[i] for i in reversed(range(len(dataset)))][::-1]  # any order
    for a, b in zip(items, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)  # worker processes, micro-batches
    for start, batch in zip(range(0, len(dataset), 2), loader):
        torch.testing.assert_close(batch["x0"], torch.stack([items[i]["x0"] for i in range(start, start + 2)]),
                                   rtol=0, atol=0)
    # A DistributedSampler over 2 processes gives each rank its share of the very same items.
    for rank in (0, 1):
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        assert all(torch.equal(dataset[i]["noise"], items[i]["noise"]) for i in sampler)
    # One bucket per micro-batch (sampler.py): its two samples stack; both buckets are used; slots differ.
    shapes = [{tuple(items[first + s]["x0"].shape) for s in range(2)} for first in range(0, len(dataset), 2)]
    assert all(len(shape) == 1 for shape in shapes) and len(set.union(*shapes)) == 2
    assert not torch.equal(items[0]["noise"], items[1]["noise"])
    other_seed = _dataset(pipe, model, data, tmp_path / "run" / "cache", seed=1)
    assert not torch.equal(other_seed[0]["noise"], items[0]["noise"])


def test_clip_fps_reaches_the_condition(pipe, model, tmp_path):
    data = clip_folder(tmp_path / "data", 6, fps=(8, 24))
    dataset = _dataset(pipe, model, data, tmp_path / "run" / "cache")
    # 8 fps clips: stride 1 at either target, fps 8; 24 fps clips (6-10 frames): stride 3 needs 10 frames, else
    # a smaller stride, fps 24 / stride.
    seen = {int(dataset[i]["fps"]) for i in range(len(dataset))}
    assert seen <= {8, 12, 24} and {8, 24} <= seen
    entries = read_manifest(tmp_path / "run" / "cache")
    usable, short, faster = usable_entries(entries, dataset.buckets, (8, 24))
    assert len(usable) == 6 and short == []
    assert len(faster) == sum(e["fps"] == 24 and e["frames"] < 10 for e in entries.values())


def test_skipped_clips_are_counted_and_listed(pipe, model, tmp_path, capsys):
    data = clip_folder(tmp_path / "data", 3)
    write_mp4(data / "short.mp4", 2, 8)
    (data / "broken.mp4").write_bytes(b"\0" * 100)
    rows = [{"file_name": f"clip{i:03d}.mp4", "text": "x"} for i in range(3)] + [
        {"file_name": "short.mp4", "text": "x"}, {"file_name": "broken.mp4", "text": "x"},
        {"file_name": "missing.mp4", "text": "x"}]
    write_metadata(data, rows)
    _dataset(pipe, model, data, tmp_path / "run" / "cache")
    listed = (tmp_path / "run" / "skipped_clips.txt").read_text().splitlines()
    assert any("short.mp4: skipped: 2 frames" in line for line in listed)
    assert any("broken.mp4: cannot decode" in line for line in listed)
    assert any("missing.mp4" in line and "does not exist" in line for line in listed)
    assert "3 clips used, 3 skipped" in capsys.readouterr().err


def test_a_dataset_with_nothing_usable_is_an_error(pipe, model, tmp_path):
    (tmp_path / "data").mkdir()
    write_mp4(tmp_path / "data" / "short.mp4", 2, 8)
    write_metadata(tmp_path / "data", [{"file_name": "short.mp4", "text": "x"}])
    with pytest.raises(ValueError, match="no usable clip .1 skipped: .*short.mp4: skipped"):
        _dataset(pipe, model, tmp_path / "data", tmp_path / "run" / "cache")


def test_memory_does_not_grow_with_the_number_of_clips(pipe, model, tmp_path):
    """What a process (and each DataLoader worker: it gets a pickled copy) holds per clip is the index entry,
    not the clip: compare 3 and 30 clips."""
    sizes = {}
    for n in (3, 30):
        data = clip_folder(tmp_path / f"data{n}", n)
        dataset = _dataset(pipe, model, data, tmp_path / f"run{n}" / "cache")
        on_disk = sum(p.stat().st_size for p in (tmp_path / f"run{n}" / "cache").glob("shard-*"))
        sizes[n] = len(pickle.dumps(dataset)), on_disk
        dataset[0]  # reading an item loads only its window
    held_per_clip = (sizes[30][0] - sizes[3][0]) / 27
    disk_per_clip = (sizes[30][1] - sizes[3][1]) / 27
    assert held_per_clip < 200  # bytes: a key, a shard name, two numbers
    assert disk_per_clip > 20 * held_per_clip  # ~1.6 kB of latents and embeddings per (32x32, 6-10 frame) clip


def test_training_on_a_folder_resumes_bit_for_bit(model, tmp_path):
    data = clip_folder(tmp_path / "data", 4)
    common = dict(model=str(model), data_dir=str(data), buckets=((32, 32, 4),), sample_fps=(8, 24), batch_size=2,
                  max_steps=3, checkpoint_every=1, keep_checkpoints=1, lr_warmup_steps=1, learning_rate=1e-3,
                  num_workers=1)
    straight = train(TrainConfig(output_dir=str(tmp_path / "a"), **common))
    assert train(TrainConfig(output_dir=str(tmp_path / "b"), **common), until=2) is None
    resumed = train(TrainConfig(output_dir=str(tmp_path / "b"), **common))
    from i2vgen.models.unet import I2VGenXLUNet
    a = I2VGenXLUNet.from_pretrained(straight / "unet").state_dict()
    b = I2VGenXLUNet.from_pretrained(resumed / "unet").state_dict()
    start = I2VGenXLUNet.from_pretrained(model / "unet").state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)  # same samples, same ops
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3] and all(np.isfinite(e["loss"]) for e in log)


def test_a_synthetic_clip_pool_made_otherwise_is_encoded_again(model, tmp_path, capsys):
    from i2vgen.training.train import clip_pool, load_pipeline

    cfg = TrainConfig(model=str(model), output_dir=str(tmp_path), num_clips=2, num_frames=2, resolution=32)
    pipe = load_pipeline(cfg)
    first = clip_pool(pipe, cfg, tmp_path / "clip_pool.pt")
    assert clip_pool(pipe, cfg, tmp_path / "clip_pool.pt")["latent_mean"].shape == first["latent_mean"].shape
    assert "encoding the clips again" not in capsys.readouterr().err  # the same settings: reused
    changed = clip_pool(pipe, TrainConfig(**cfg.to_dict() | {"num_clips": 3}), tmp_path / "clip_pool.pt")
    assert len(changed["latent_mean"]) == 3 and "encoding the clips again" in capsys.readouterr().err
