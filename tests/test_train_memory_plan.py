"""scripts/train_memory_plan.py's worker on a tiny UNet under FSDP2 on 2 ranks: the fake-tensor step against
the same step on real tensors, the training state it counts against its known size, and the DDP buckets the
plan adds against the reducer's own. Each run is a subprocess: it joins a (fake) process group."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP = ["--config", "tiny", "--width", "64", "--height", "64", "--num-frames", "4", "--precision", "bf16",
        "--world-size", "2"]


def workers(*argvs: tuple[str, ...]) -> list[dict]:
    """Run the worker once per argument list, all at the same time (each is one thread of mostly per-operation
    overhead, ~30 s), and return their results in order."""
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "_train_memory_worker.py"), "--result", "-",
                               *STEP, *argv], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argvs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_fake_step_equals_real_step_and_state_has_its_known_size():
    # The plan measures fake tensors; the same step on real tensors (FSDP2's sharding and gathering included)
    # must hold exactly the same bytes at its peak, kind by kind.
    fake, real = workers((), ("--real",))
    assert fake["peak"] == real["peak"] and fake["by_kind"] == real["by_kind"]
    kinds, trainable = fake["by_kind"], fake["trainable_bytes"]
    assert kinds["Activation"] > 0
    # Full fine-tuning keeps the float32 weights and the EMA copy (2 x the parameters) and AdamW's two moments
    # (2 x) plus a float32 step counter per parameter tensor (a few KB); FSDP2 on 2 ranks holds half of each
    # shardable tensor (the tiny UNet's dim-0 sizes are all even: no shard padding).
    assert kinds["Parameter"] == trainable
    assert trainable < kinds["Optstate"] < trainable + 10_000


def test_ddp_buckets_are_the_trainable_bytes():
    # What the plan adds for DDP, against the bucket sizes of the trainer's real DDP wrapper.
    (result,) = workers(("--check-ddp", "--mode", "full"))
    assert result["bucket_bytes"] == result["trainable_bytes"] > 0
    assert not result["gradient_as_bucket_view"]
