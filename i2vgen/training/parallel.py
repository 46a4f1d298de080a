"""Training on many processes (torchrun, docs/distributed.md): data parallel, one shard of each global batch
per rank, with DDP or FSDP2.

    torchrun --nproc-per-node N -m i2vgen train --config FILE.json     (batch_size is per rank)

A step's global batch is N x batch_size samples; rank r trains on its places r*b .. (r+1)*b - 1. Every sample's
randomness depends on the seed, the step and its place in the global batch only (dataset.py; the synthetic
pool draws the whole global batch on every rank and keeps its rows), so N processes with batch b train on the
samples one process with batch N*b trains on, and their mean gradient is that process's gradient up to the
order of the float32 sums.
- DDP ("parallel": "ddp"): every rank holds the model and the optimiser; the gradients are averaged by an
  all_reduce in backward (NCCL on GPUs, gloo on the CPU; i2vgen/distributed.py joins the group).
- FSDP2 ("parallel": "fsdp"): torch.distributed.fsdp.fully_shard on each down, mid and up block and on the
  UNet, so parameters, gradients and AdamW state are sharded over the ranks and gathered block by block.
Rank 0 alone writes logs, validation and the final weights; every rank writes its own file of each checkpoint
(checkpoint.py).
"""

import contextlib
import os
import socket

import numpy as np
import torch
import torch.distributed as dist

from i2vgen.distributed import Launch
from i2vgen.training.video_folder import DataError

PARALLEL_MODES = ("ddp", "fsdp")


def fully_shard_function():
    """torch.distributed.fsdp.fully_shard, or one error line on a torch without it (FSDP2 is torch >= 2.6)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise DataError(f"config parallel 'fsdp' needs torch.distributed.fsdp.fully_shard (FSDP2, torch >= 2.6); "
                        f"this torch is {torch.__version__}: use 'ddp'") from None
    return fully_shard


def check_setup(cfg, launch: Launch, num_samples: int | None) -> None:
    """One line for a setup that cannot run: an unknown mode, FSDP2 missing, more ranks than clips."""
    if cfg.parallel not in PARALLEL_MODES:
        raise DataError(f"config parallel must be one of {list(PARALLEL_MODES)}, got {cfg.parallel!r}")
    if cfg.parallel == "fsdp":
        fully_shard_function()
    if num_samples is not None and launch.world_size > num_samples:
        raise DataError(f"{launch.world_size} ranks but only {num_samples} clips: every rank needs at least one "
                        f"clip; use at most {num_samples} processes")


def wrap(unet, ema_model, cfg, launch: Launch):
    """The module the loop calls: the UNet itself on one process, else its DDP wrapper, or the UNet sharded by
    FSDP2 in place (and its EMA copy sharded alike, so each rank averages its own shard)."""
    if launch.world_size == 1:
        return unet
    if cfg.parallel == "ddp":
        device_ids = [launch.device] if launch.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(unet, device_ids=device_ids)
    shard_blocks(unet)
    shard_blocks(ema_model)
    return unet


def is_sharded(module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(module, FSDPModule)


def shard_blocks(unet) -> None:
    """FSDP2 units: each down, mid and up block, then the UNet (embeddings, conv_in/out)."""
    fully_shard = fully_shard_function()
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        fully_shard(block)
    fully_shard(unet)


def no_sync(model, last: bool):
    """Under DDP, no gradient all_reduce in the backward of a micro-batch that is not the step's last."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not last:
        return model.no_sync()
    return contextlib.nullcontext()


def seed_dropout(seed: int, step: int, rank: int) -> None:
    """Seed torch's global RNG, which the UNet's dropout draws from, by (seed, step, rank) at the start of each
    step: each rank draws its own masks, and a run resumed on any world size draws the masks it would have.
    (Masks are drawn per rank for its rows, so they are the only randomness that depends on the world size.)"""
    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))


def rank_rows(launch: Launch, batch_size: int) -> slice:
    """This rank's rows of a global batch of world_size * batch_size."""
    return slice(launch.rank * batch_size, (launch.rank + 1) * batch_size)


def mean_over_ranks(value: float, launch: Launch) -> float:
    """The mean of a per-rank number (each rank's loss over its shard -> the global batch's loss)."""
    if launch.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=launch.device)
    dist.all_reduce(total)
    return total.item() / launch.world_size


def barrier(launch: Launch) -> None:
    if launch.world_size > 1:
        dist.barrier()


# ---- the full weights on rank 0 (validation, the final export) ----

def plain(module, twin, launch: Launch):
    """Rank 0: a plain module holding `module`'s full weights (`module` itself unless FSDP2 shards it, else
    `twin`, an unsharded copy kept on rank 0, loaded with the gathered weights); None on the other ranks.
    Every rank calls it (the gather is a collective)."""
    if not is_sharded(module):
        return module if launch.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not launch.is_main:
        return None
    twin.load_state_dict(state)
    return twin


# ---- one run per output folder ----

def lock(output_dir, launch: Launch):
    """Rank 0 takes <output_dir>/train.lock (its host and pid). A lock held by a live process of this host, or
    by another host, is one error line; a lock whose process is gone (a crash) is taken over."""
    path = output_dir / "train.lock"
    if path.exists():
        host, _, pid = path.read_text().strip().partition(" ")
        if host != socket.gethostname() or _alive(int(pid or 0)):
            raise DataError(f"{output_dir} is in use by another training run ({path}: host {host}, pid {pid}); "
                            f"use another output_dir, or delete {path} if that run is gone")
        path.unlink()  # stale: its process is gone
    try:  # O_EXCL: of two runs starting at once, one gets it
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise DataError(f"{output_dir} is in use by another training run ({path}); use another output_dir") from None
    os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    os.close(fd)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
