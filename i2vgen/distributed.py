"""Scale-out on torch.distributed: one process per device, started by torchrun (docs/distributed.md).

N processes can buy two things:
- throughput, by job sharding: each process renders its own share of a list of videos;
- latency, by CFG-parallel: the two halves of classifier-free guidance (Ho & Salimans 2022), unconditional
  and conditional, run on a pair of processes that swap their predictions once per denoising step
  (one all_gather). 2k processes form the pairs (0, 1), (2, 3), ..., and the pairs share the jobs.

Either way a video is computed as one process computes it: each process seeds the job's RNG itself, and
both processes of a pair mix the same two predictions and take the same step, so the frames depend only on
the job, never on the rank, the world size or the order of jobs.

This module is all the torch.distributed there is: the process group, rank -> device, who renders what,
and the per-step exchange. The pipeline sees only the exchange (`I2VGenXLPipeline.enable_cfg_parallel`).
"""

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How long a process waits in a collective. The final gather waits for the slowest share, which on a long
# job list can be far beyond torch's 30-minute default; a process that dies is noticed sooner (gloo: its
# sockets close; torchrun: the agent stops the other processes).
WAIT_TIMEOUT = datetime.timedelta(hours=12)
# How long a process waits for the others to join: torchrun starts them together, so a process still alone
# after this was started without them (WORLD_SIZE left in the environment of a single process).
JOIN_TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Launch:
    """This process's place in the run: `rank` of `world_size` processes (torchrun's RANK, WORLD_SIZE),
    `local_rank` on its machine, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, values: list) -> list:
        """Rank 0 gets every rank's list concatenated in rank order; the others get []."""
        if self.world_size == 1:
            return list(values)
        lists = [None] * self.world_size if self.is_main else None
        dist.gather_object(values, lists, dst=0)
        return [value for part in lists for value in part] if self.is_main else []


def device_of(local_rank: int, device: str | None = None) -> torch.device:
    """cuda:LOCAL_RANK where CUDA is available, else the CPU; `device` overrides ("cuda" gets the index)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


@contextlib.contextmanager
def process_group(device: str | None = None):
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), yield this process's `Launch`, and leave the group at the end. NCCL when the
    device is a GPU, gloo on the CPU: the same code path on both. Without torchrun it is one process alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    launch = Launch(int(os.environ.get("RANK", "0")), world_size, local_rank, device_of(local_rank, device))
    if launch.device.type == "cuda":
        torch.cuda.set_device(launch.device)  # NCCL's object collectives use the current device
    if world_size == 1 or dist.is_initialized():
        yield launch
        return
    backend = "nccl" if launch.device.type == "cuda" else "gloo"
    _join(backend, launch)
    try:
        yield launch
    finally:
        dist.destroy_process_group()


def _join(backend: str, launch: Launch) -> None:
    """init_process_group, waiting at most JOIN_TIMEOUT for the other processes to join (the store's timeout
    bounds the rendezvous; the group's own, WAIT_TIMEOUT, bounds the collectives after it)."""
    try:
        store, rank, world_size = next(dist.rendezvous("env://", timeout=JOIN_TIMEOUT))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=WAIT_TIMEOUT)
    except (RuntimeError, dist.DistError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RuntimeError(f"WORLD_SIZE is {launch.world_size}, but the other processes did not join within "
                           f"{JOIN_TIMEOUT.total_seconds():g} s ({first[:200]}); start the run with torchrun, or "
                           f"unset WORLD_SIZE for a single process") from None


def shard(items: list, shares: int, index: int) -> list:
    """Share `index` of `shares`: every shares-th item from the index-th (round robin, so neighbouring jobs,
    often alike in cost, spread over the shares)."""
    return items[index::shares]


class CFGParallel:
    """The per-step exchange of CFG-parallel for one pair of processes (a group of two ranks).

    This process runs the UNet on guidance half `half` (its rank in the pair: 0 unconditional, 1 conditional);
    `gather` swaps that prediction with the partner's in one all_gather and returns both stacked
    [unconditional, conditional] along the batch, as one process would have computed them."""

    def __init__(self, group=None):
        if dist.get_world_size(group) != 2:
            raise ValueError(f"CFG-parallel needs a group of 2 processes, got {dist.get_world_size(group)}")
        self.group = group
        self.half = dist.get_rank(group)

    def gather(self, pred: torch.Tensor) -> torch.Tensor:
        halves = [torch.empty_like(pred) for _ in range(2)]
        dist.all_gather(halves, pred.contiguous(), group=self.group)
        return torch.cat(halves)


def cfg_pairs(launch: Launch) -> CFGParallel:
    """Pair the ranks (0, 1), (2, 3), ... and return this process's pair. Every rank must call it (creating
    a group is a collective), and the world size must be even."""
    if launch.world_size % 2:
        raise ValueError(f"CFG-parallel pairs processes: it needs an even number of them, got {launch.world_size}")
    groups = [dist.new_group([first, first + 1]) for first in range(0, launch.world_size, 2)]
    return CFGParallel(groups[launch.rank // 2])
