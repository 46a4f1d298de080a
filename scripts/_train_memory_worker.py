"""One configuration of scripts/train_memory_plan.py: the memory of one training step of the released UNet as
rank 0 of N GPUs, on shapes only.

    python scripts/_train_memory_worker.py --result out.json --mode full --precision bf16 --checkpointing \
        --world-size 4 --parallel fsdp --width 448 --height 256 --num-frames 16

(`--checkpointing layer`: per-layer checkpointing; `--forward-chunking`: the UNet's forward chunking on top.)

The UNet is built inside FakeTensorMode (real shapes and dtypes, no data) in float32, as the trainer keeps it,
and set up by the trainer's own `setup_optimization` (LoRA adapter, EMA copy, FSDP2 sharding, AdamW). With
N > 1 the process joins a fake process group of N ranks as rank 0 (torch's FakeProcessGroup: its collectives
return at once, moving no data), so FSDP2 really shards the parameters, gradients and AdamW state and really
gathers each block in forward and backward. One optimiser step of the trainer's loop (the velocity loss under
its autocast, backward, gradient clipping, AdamW, the EMA update) then runs under MemTracker
(_memory_worker.PeakTracker), which counts every live tensor and keeps the peak, split by kind (weights,
optimiser state, activations, and the temporaries of backward, gradients among them). AdamW's moments are made
by one step before the measured one, so the figure is a steady-state step's, not the first's (whose optimiser
state does not exist yet).

DDP is not run here: its C++ reducer checks and buckets real parameter data, which fake tensors do not have.
Every DDP rank runs the one-process step and holds, besides, gradient buckets as large as the trainable
parameters (float32, gradient_as_bucket_view off, the trainer's default); train_memory_plan.py adds them and
checks that size against the reducer's own bucket sizes on a real UNet.

GPU autocast keeps GroupNorm and LayerNorm in float32 (their outputs stay float32 until the next linear or
convolution); the CPU's autocast, which runs here, does not. `gpu_norm_policy` gives the norms CUDA's rule
while the step is measured, so bf16 activations are counted at the sizes a GPU keeps.
"""

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from _memory_worker import PeakTracker, model_sizes  # noqa: E402

from i2vgen.distributed import Launch  # noqa: E402
from i2vgen.models.unet import I2VGenXLUNet, image_latents_from  # noqa: E402
from i2vgen.schedulers import DDIMScheduler  # noqa: E402
from i2vgen.training import parallel, train  # noqa: E402
from i2vgen.training.config import TrainConfig  # noqa: E402

TEXT_TOKENS = 77  # CLIP's context length: the prompt embedding is (B, 77, cross_attention_dim)


@contextlib.contextmanager
def gpu_norm_policy():
    """GroupNorm and LayerNorm under bf16 autocast as CUDA's autocast runs them: inputs cast to float32,
    float32 output."""
    group_norm, layer_norm = F.group_norm, F.layer_norm

    def up(norm):
        def run(x, *args, **kwargs):
            if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float32:
                with torch.autocast(x.device.type, enabled=False):
                    return norm(x.float(), *args, **kwargs)
            return norm(x, *args, **kwargs)
        return run

    with mock.patch.object(F, "group_norm", up(group_norm)), mock.patch.object(F, "layer_norm", up(layer_norm)):
        yield


def process_group(world_size: int) -> Launch:
    """Rank 0 of a fake process group of `world_size` ranks (none for one rank)."""
    if world_size > 1:
        import torch.distributed as dist
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    return Launch(rank=0, world_size=world_size, local_rank=0, device=torch.device("cpu"))


def train_config(args) -> TrainConfig:
    lora = dict(rank=args.lora_rank) if args.mode == "lora" else None  # the default targets: every attention
    return TrainConfig(model="-", output_dir="-", batch_size=args.batch_size, lora=lora, parallel=args.parallel,
                       mixed_precision=args.precision, gradient_checkpointing=args.checkpointing, device="cpu")


def batch(cfg: TrainConfig, unet_cfg: dict, args) -> dict:
    """One micro-batch as the trainer's loader hands it over: x0, noise, t and the UNet's conditions."""
    b, h, w = args.batch_size, args.height // 8, args.width // 8
    x0 = torch.randn(b, 4, args.num_frames, h, w)
    conditions = dict(fps=torch.full((b,), cfg.fps), image_latents=image_latents_from(x0[:, :, 0], args.num_frames),
                      image_embeddings=torch.randn(b, 1, unet_cfg["cross_attention_dim"]),
                      encoder_hidden_states=torch.randn(b, TEXT_TOKENS, unet_cfg["cross_attention_dim"]))
    return dict(x0=x0, noise=torch.randn_like(x0), t=torch.full((b,), 500), conditions=conditions)


def warm_optimizer(trainable: list, optimizer) -> None:
    """One AdamW step on zero gradients: creates the moments a steady-state step holds."""
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def training_step(model, unet, trainable, ema, optimizer, lr_scheduler, scheduler, micro_batches, autocast, cfg):
    """The body of the trainer's loop (train._train), one optimiser step. The loss it logs (`.item()`) has no
    value on fake tensors: it reads as 0."""
    with mock.patch.object(torch.Tensor, "item", lambda self: 0.0):
        train.accumulate_gradients(model, scheduler, micro_batches, autocast)
    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(unet, 0)


def measure(args) -> dict:
    """Peak bytes of one training step as rank 0 of `args.world_size`, split by kind; on fake tensors unless
    `args.real` (real tensors: for checking the fake figure on a small UNet)."""
    launch = process_group(args.world_size)
    cfg = train_config(args)
    sizes = model_sizes(args.config)
    fake = contextlib.nullcontext() if args.real else FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        unet = I2VGenXLUNet(**sizes["unet"])
    # Outside the mode, so that what needs real values runs on real ones (the device mesh of FSDP2, peft's
    # placement of an adapter); operations on the fake parameters stay fake. Under FSDP2 rank 0 keeps an
    # unsharded twin of the UNet in host memory, made by `.cpu()`, which cannot move fake tensors: here it
    # stays where it is (it is never on the GPU, and not counted).
    with mock.patch.object(torch.nn.Module, "cpu", lambda module: module):
        model, trainable, ema, optimizer, lr_scheduler, _ = train.setup_optimization(unet, cfg, launch)
    with fake:
        warm_optimizer(trainable, optimizer)
        unet.train()
        train.enable_checkpointing(unet, cfg)
        if args.forward_chunking:
            unet.enable_forward_chunking(1)
        autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")
        micro = batch(cfg, sizes["unet"], args)
        tracker = PeakTracker()
        tracker.track_external(unet, ema.model, optimizer, micro["x0"], micro["noise"], micro["t"],
                               *micro["conditions"].values())
        start = time.perf_counter()
        with tracker, gpu_norm_policy():
            training_step(model, unet, trainable, ema, optimizer, lr_scheduler, DDIMScheduler(**sizes["scheduler"]),
                          [micro], autocast, cfg)
        peak = tracker.get_tracker_snapshot("peak")
    by_kind = max(peak.values(), key=lambda snap: snap["Total"])
    return dict(step=step_of(args), peak=by_kind["Total"],
                by_kind={getattr(k, "value", k): v for k, v in by_kind.items() if k != "Total"},
                trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),  # unsharded sizes
                seconds=time.perf_counter() - start)


def check_ddp(args) -> dict:
    """On real tensors: the trainer's DDP wrapper (parallel.wrap) as rank 0 of a fake group, and the bytes of
    its reducer's gradient buckets beside the trainable parameters' (what the plan adds for DDP)."""
    launch = process_group(args.world_size)
    cfg = dataclasses.replace(train_config(args), parallel="ddp")
    model = train.setup_optimization(I2VGenXLUNet(**model_sizes(args.config)["unet"]), cfg, launch)[0]
    buckets = model._get_ddp_logging_data()["bucket_sizes"]  # the reducer's bucket sizes in bytes, "a, b, ..."
    return dict(bucket_bytes=sum(int(size) for size in str(buckets).split(",")),
                trainable_bytes=sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
                gradient_as_bucket_view=bool(model._get_ddp_logging_data()["gradient_as_bucket_view"]))


def add_step_arguments(p: argparse.ArgumentParser):
    p.add_argument("--config", choices=["gpu", "cpu", "tiny"], default="gpu",
                   help="UNet size: gpu = the released UNet, cpu = the reduced bench config, tiny = width 32")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=448)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1, help="clips per GPU")
    p.add_argument("--mode", choices=["full", "lora"], default="full")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--precision", choices=["no", "bf16"], default="bf16", help="the trainer's mixed_precision")
    p.add_argument("--checkpointing", nargs="?", const=True, default=False, choices=[True, "layer"],
                   help="gradient checkpointing per block; --checkpointing layer: per layer")
    p.add_argument("--forward-chunking", action="store_true",
                   help="the UNet's forward chunking (one frame at a time in the per-frame layers)")
    p.add_argument("--world-size", type=int, default=1, help="GPUs; this process measures rank 0")
    p.add_argument("--parallel", choices=["fsdp"], default="fsdp",
                   help="with --world-size > 1; DDP is not run here (its reducer needs real tensors): the plan "
                        "adds DDP's gradient buckets to the one-process step")


def step_of(args) -> dict:
    keys = ("config", "height", "width", "num_frames", "batch_size", "mode", "lora_rank", "precision",
            "checkpointing", "world_size", "parallel")
    step = {k: getattr(args, k) for k in keys}
    return step | ({"forward_chunking": True} if args.forward_chunking else {})  # the key only when on


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--result", required=True)
    p.add_argument("--real", action="store_true", help="real tensors (a small --config only)")
    p.add_argument("--check-ddp", action="store_true", help="DDP's bucket bytes on a real UNet (check_ddp)")
    add_step_arguments(p)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = check_ddp(args) if args.check_ddp else measure(args)
    if args.result != "-":
        Path(args.result).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
