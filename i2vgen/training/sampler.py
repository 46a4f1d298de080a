"""Which clip each training sample reads: every clip once per epoch, in an order drawn anew each epoch from
(seed, epoch) - torch's DistributedSampler with set_epoch, but ordered over the global batch, so that the order
is the same whatever the number of processes the global batch is split over.

The run reads one stream of samples in global micro-batches of M = world_size x batch_size: micro-batch k
(k = step x gradient_accumulation_steps + i) holds the places k*M .. k*M + M - 1 of the stream, and rank r
trains on its batch_size of them (r*b .. (r+1)*b - 1). Nothing but (seed, epoch) enters an epoch's order, so a
resumed run, or the same global batch split over any number of processes, reads the same clips in the same
order.

Buckets (buckets.py): a micro-batch must stack, so it holds clips of one bucket. An epoch permutes each
bucket's clips (torch.randperm), cuts them into micro-batches of M, fills the bucket's last one up with its
first clips of the epoch (as DistributedSampler pads its last shard), and interleaves the buckets'
micro-batches in an order also drawn from (seed, epoch). With one bucket of a multiple of M clips (the
synthetic clip pool, usually), an epoch is exactly one permutation of the clips.
"""

import math

import numpy as np
import torch


ORDER = 1  # the spawn key of the order's draws: never the draws of a sample (dataset.py) with equal integers


def seeded_generators(*seed: int, purpose: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """A numpy and a torch generator drawn from the integers `seed` and `purpose` alone (numpy's SeedSequence
    mixes them; the spawn key keeps (1, 2, 3) for one purpose apart from (1, 2, 3) for another)."""
    sequence = np.random.SeedSequence(list(seed), spawn_key=(purpose,) if purpose else ())
    torch_seed = int(sequence.generate_state(2, np.uint64)[0] >> np.uint64(1))
    return np.random.default_rng(sequence), torch.Generator().manual_seed(torch_seed)


class EpochSampler:
    """The clips of each global micro-batch: `micro_batch(k)` -> (bucket, M clip indices within that bucket)."""

    def __init__(self, bucket_sizes: list[int], global_batch: int, seed: int):
        self.sizes, self.global_batch, self.seed = list(bucket_sizes), global_batch, seed
        self.chunks = [math.ceil(n / global_batch) for n in self.sizes]  # micro-batches per epoch, per bucket
        self.epoch_length = sum(self.chunks)  # micro-batches per epoch
        self._cached = (None, None)  # (epoch, its order): consecutive micro-batches share an epoch

    def micro_batch(self, k: int) -> tuple[int, torch.Tensor]:
        epoch, position = divmod(k, self.epoch_length)
        if self._cached[0] != epoch:
            self._cached = (epoch, self.order(epoch))
        return self._cached[1][position]

    def order(self, epoch: int) -> list[tuple[int, torch.Tensor]]:
        """An epoch's micro-batches in order: (bucket, clip indices (M,))."""
        rows = {bucket: self.bucket_order(epoch, bucket) for bucket, n in enumerate(self.sizes) if n}
        labels = torch.cat([torch.full((c,), bucket) for bucket, c in enumerate(self.chunks)])
        interleaved = labels[torch.randperm(len(labels), generator=self.generator(epoch, 0))]
        taken = [0] * len(self.sizes)
        batches = []
        for bucket in interleaved.tolist():
            batches.append((bucket, rows[bucket][taken[bucket]]))
            taken[bucket] += 1
        return batches

    def generator(self, epoch: int, draw: int) -> torch.Generator:
        """The generator of an epoch's interleaving (draw 0) or of bucket b's permutation (draw b + 1)."""
        return seeded_generators(self.seed, epoch, draw, purpose=ORDER)[1]

    def bucket_order(self, epoch: int, bucket: int) -> torch.Tensor:
        """A bucket's clips permuted by (seed, epoch, bucket), padded with its first ones to whole micro-batches:
        (chunks, M)."""
        permutation = torch.randperm(self.sizes[bucket], generator=self.generator(epoch, bucket + 1))
        padded = permutation.repeat(math.ceil(self.chunks[bucket] * self.global_batch / len(permutation)))
        return padded[: self.chunks[bucket] * self.global_batch].view(self.chunks[bucket], self.global_batch)
