"""The epoch order of training clips (i2vgen/training/sampler.py): every clip once per epoch, reshuffled each
epoch, the same whatever the number of processes, continued by a resumed run."""

from collections import Counter

import torch

from i2vgen.distributed import Launch
from i2vgen.training.config import TrainConfig
from i2vgen.training.sampler import EpochSampler
from i2vgen.training.train import synthetic_batches


def epoch(sampler: EpochSampler, e: int) -> list[tuple[int, list[int]]]:
    return [(bucket, clips.tolist()) for bucket, clips in
            (sampler.micro_batch(k) for k in range(e * sampler.epoch_length, (e + 1) * sampler.epoch_length))]


def test_every_clip_once_per_epoch_reshuffled_each_epoch():
    sampler = EpochSampler([12], global_batch=4, seed=0)
    orders = [[clip for _, clips in epoch(sampler, e) for clip in clips] for e in range(3)]
    assert all(sorted(order) == list(range(12)) for order in orders)  # a permutation: each clip exactly once
    assert len({tuple(order) for order in orders}) == 3  # a new one each epoch (equal by chance: 3 / 12! ~ 6e-9)
    assert orders[0] != list(range(12))
    assert orders == [[clip for _, clips in epoch(EpochSampler([12], 4, seed=0), e) for clip in clips]
                      for e in range(3)]  # drawn from (seed, epoch) alone: a fresh sampler, any epoch first
    assert orders[0] != [clip for _, clips in epoch(EpochSampler([12], 4, seed=1), 0) for clip in clips]


def test_buckets_stack_and_pad_as_distributed_sampler_does():
    sampler = EpochSampler([5, 0, 8], global_batch=4, seed=3)
    batches = epoch(sampler, 0)
    assert sampler.epoch_length == len(batches) == 2 + 0 + 2  # ceil(5 / 4) + ceil(8 / 4)
    per_bucket = {b: [c for bucket, clips in batches if bucket == b for c in clips] for b in (0, 2)}
    assert sorted(per_bucket[2]) == list(range(8))  # a multiple of 4: exactly once
    # 5 clips fill 2 micro-batches: each once, then the epoch's first 3 again (DistributedSampler's padding).
    assert sorted(set(per_bucket[0])) == list(range(5)) and per_bucket[0][5:] == per_bucket[0][:3]
    assert Counter(b for b, _ in batches) == {0: 2, 2: 2}
    assert len({tuple(b for b, _ in epoch(sampler, e)) for e in range(10)}) > 1  # interleaved anew each epoch


def pool(num_clips: int) -> dict:
    """A clip pool whose latents are the clip's index (std 0), so x0 names the clip."""
    index = torch.arange(num_clips, dtype=torch.float32)
    return {"latent_mean": index.view(-1, 1, 1, 1, 1).expand(-1, 4, 2, 2, 2).clone(),
            "latent_std": torch.zeros(num_clips, 4, 2, 2, 2), "image_embeds": torch.zeros(num_clips, 1, 8),
            "caption_index": torch.zeros(num_clips, dtype=torch.long), "text_embeds": torch.zeros(1, 3, 8),
            "null_text_embeds": torch.zeros(3, 8)}


def clips_read(world_size: int, batch_size: int, steps: range) -> list[list[int]]:
    """Per step, the clips each rank of `world_size` reads from the synthetic pool, ranks concatenated."""
    cfg = TrainConfig(model="unused", output_dir="unused", num_clips=8, batch_size=batch_size, uncond_prob=0.0)
    streams = [synthetic_batches(pool(8), cfg, 1.0, 1000, torch.Generator().manual_seed(0),
                                 Launch(rank, world_size, rank, torch.device("cpu")), steps.start)
               for rank in range(world_size)]
    read = []
    for _ in steps:
        per_rank = [next(stream) for stream in streams]
        read.append([int(x0) for micro in zip(*per_rank) for batch in micro for x0 in batch["x0"][:, 0, 0, 0, 0]])
    return read


def test_the_order_is_the_same_on_any_world_size_and_a_resume_continues_it():
    one = clips_read(1, 4, range(6))  # 8 clips, 4 a step: an epoch is 2 steps
    assert one == clips_read(2, 2, range(6)) == clips_read(4, 1, range(6))
    epochs = [one[e] + one[e + 1] for e in range(0, 6, 2)]
    assert all(sorted(clips) == list(range(8)) for clips in epochs) and len(set(map(tuple, epochs))) == 3
    assert clips_read(2, 2, range(3, 6)) == one[3:]  # resumed at step 3, in the middle of the second epoch
