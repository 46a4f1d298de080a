"""Training on 2 processes (i2vgen/training/parallel.py; CPU, gloo): 2 ranks with batch b train as 1 process
with batch 2b, under DDP and FSDP2; checkpoints (torch.distributed.checkpoint, one file per rank) resume on
another world size, 2 -> 1 and 1 -> 2, in both modes; a dead rank loses only the steps since the last checkpoint.

The ranks are forked as tests/test_distributed.py forks them (torchrun's environment, one thread each). The
runs use SGD in place of AdamW (`sgd`): Adam divides each gradient element by its own magnitude, so an element
whose true gradient is zero (a bias before a GroupNorm) moves by +-lr on the sign of float32 rounding noise;
measured with AdamW, 1 vs 2 processes: the losses agree to 2e-4 but 14% of the weights differ by more than 1e-4
(up to 5.8e-3, more than the 3.1e-3 they moved). With SGD the weights differ only by the noise of summing the
batch in another order (figures at the asserts).
"""

import contextlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.checkpoint.filesystem import FileSystem

from conftest import micro_pipeline
from test_distributed import fork

from i2vgen.distributed import Launch
from i2vgen.models.unet import I2VGenXLUNet
from i2vgen.pipeline import I2VGenXLPipeline
from i2vgen.training import parallel
from i2vgen.training.checkpoint import SafeReader
from i2vgen.training.config import TrainConfig
from i2vgen.training.train import train
from i2vgen.training.video_folder import DataError

STEPS = 3


def sgd(params, lr, betas, weight_decay):  # AdamW's call in train.setup_optimization
    return torch.optim.SGD(params, lr=lr, momentum=0.5, weight_decay=weight_decay)  # momentum: state to resume


@contextlib.contextmanager
def with_sgd():
    """SGD for AdamW, and no dropout (the masks are drawn per rank for its rows, parallel.seed_dropout: with the
    temporal convs' dropout 0.1 the weights after one step measured 6.7e-3 apart). Forked ranks inherit both."""
    with mock.patch.object(torch.optim, "AdamW", sgd), mock.patch.object(torch.nn.Dropout, "forward", lambda self, x: x):
        yield


def config(base: Path, out: Path, batch_size: int, **changes) -> TrainConfig:
    """6 clips in micro-batches of 2, 2 per step: an epoch is 1.5 steps, so step 2's checkpoint is mid-epoch."""
    return TrainConfig(**(dict(model=str(base), output_dir=str(out), num_clips=6, batch_size=batch_size,
                               gradient_accumulation_steps=2, max_steps=STEPS, checkpoint_every=1, keep_checkpoints=1,
                               lr_warmup_steps=1, learning_rate=0.5, ema_decay=0.5) | changes))


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    return I2VGenXLUNet.from_pretrained(folder).state_dict()


def gap(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _train(launch, cfg, until=None):
    """train() on a forked rank, listing each file that DCP opens for writing in <output_dir>/../writes-rank<r>."""
    create_stream = FileSystem.create_stream

    def recording(self, path, mode):
        if "w" in mode:
            with open(Path(cfg.output_dir).parent / f"writes-rank{launch.rank}", "a") as log:
                log.write(f"{Path(path).relative_to(cfg.output_dir)}\n")
        return create_stream(self, path, mode)

    with mock.patch.object(FileSystem, "create_stream", recording):
        train(cfg, until=until)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """The reference: 1 process, batch 2 (x 2 micro-batches), SGD."""
    tmp = tmp_path_factory.mktemp("single")
    base = micro_pipeline(tmp)
    with with_sgd():
        train(config(base, tmp / "out", 2))
    return tmp


def test_two_ranks_train_as_one_process_with_the_global_batch(single, tmp_path, mode="ddp"):
    """DDP here; FSDP2 is checked against the same curve in the next test, by steps 1-2 or step 3 (FSDP2 on gloo
    costs ~8 s for its first step on this machine)."""
    with with_sgd():
        fork(2, tmp_path, _train, config(single / "base", tmp_path / "out", 1, parallel=mode, checkpoint_every=STEPS))
    one, two = losses(single / "out"), losses(tmp_path / "out")
    # float32 sums in another order (the batch split over ranks, gloo's all_reduce): measured 6.7e-8 for the losses
    # (about 0.8) and 1.2e-7 for the weights, which moved by 0.1; 1e-5 is ~100x that, far below any real error
    # (a wrong shard or an unaveraged gradient moves the loss by 1e-2 and more).
    assert len(two) == STEPS and max(abs(a - b) for a, b in zip(one, two)) < 1e-5, (one, two)
    moved = gap(weights(single / "out/pipeline/unet"), weights(single / "base/unet"))
    apart = gap(weights(single / "out/pipeline/unet"), weights(tmp_path / "out/pipeline/unet"))
    print(f"MEASURED {mode}: losses {max(abs(a - b) for a, b in zip(one, two)):.2e} apart, weights {apart:.2e} "
          f"apart after moving {moved:.2e}")
    assert moved > 1e-2 and apart < 1e-5, (moved, apart)
    assert (tmp_path / "rank1.log").read_text().count("train") == 0  # rank 1 writes nothing, shows no bar
    assert not list(tmp_path.glob("out/.partial-*")) and not (tmp_path / "out/train.lock").exists()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("saved_on", [2, 1])
def test_a_checkpoint_resumes_on_another_world_size(single, tmp_path, mode, saved_on):
    """Saved by 2 ranks (batch 1 each) at step 2 and resumed by 1 process (batch 2), or the other way round: the
    reference's curve (steps 1-2 from the first run, step 3 from the resumed one) and weights. The 2 ranks write
    one file each, of their own shards (FSDP2) or of half the replicated tensors (DDP)."""
    out = tmp_path / "out"
    two = config(single / "base", out, 1, parallel=mode)
    with with_sgd():
        if saved_on == 2:
            fork(2, tmp_path, _train, two, 2)
            assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-000002"]
            shards = check_own_files(tmp_path, out / "checkpoint-000002", mode)
            train(config(single / "base", out, 2))
        else:
            train(config(single / "base", out, 2), until=2)
            fork(2, tmp_path, _train, two)
            shards = check_own_files(tmp_path, out / "checkpoint-000003", mode)
    one, resumed = losses(single / "out"), losses(out)
    apart = gap(weights(single / "out/pipeline/unet"), weights(out / "pipeline/unet"))
    print(f"MEASURED {mode} saved on {saved_on}, resumed on {3 - saved_on}: losses "
          f"{max(abs(a - b) for a, b in zip(one, resumed)):.2e} apart, weights {apart:.2e}; bytes per rank {shards}")
    assert len(resumed) == STEPS and max(abs(a - b) for a, b in zip(one, resumed)) < 1e-5, (one, resumed)
    assert apart < 1e-5  # as in the test above
    # The export is a plain diffusers folder.
    pipe = I2VGenXLPipeline.from_pretrained(out / "pipeline")
    assert sorted(p.name for p in (out / "pipeline/unet").iterdir()) == ["config.json",
                                                                       "diffusion_pytorch_model.safetensors"]
    assert not any(hasattr(p, "device_mesh") for p in pipe.unet.parameters())


def check_own_files(logs: Path, checkpoint: Path, mode: str) -> list[int]:
    """No file written by two ranks; rank r wrote __r_0.distcp (and rank 0 the index); under FSDP2 each rank's
    file holds its own shard of each tensor (dim 0 split in two: rank 0 the piece at offset 0). Returns each
    rank's file size."""
    writes = [set((logs / f"writes-rank{rank}").read_text().split()) for rank in (0, 1)]
    assert not writes[0] & writes[1]
    assert {Path(p).name for p in writes[0]} == {"__0_0.distcp", ".metadata.tmp"}  # DCP renames it to .metadata
    assert {Path(p).name for p in writes[1]} == {"__1_0.distcp"}
    assert sorted(p.name for p in checkpoint.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                                          "training_state.json"]
    metadata = SafeReader(checkpoint).read_metadata()
    files = {}
    for index, stored in metadata.storage_data.items():
        if index.fqn.startswith(("model.", "ema.")):
            files.setdefault(index.fqn, {})[tuple(index.offset)] = stored.relative_path
    assert files and all(fqn in files for fqn in metadata.state_dict_metadata if fqn.startswith(("model.", "ema.")))
    for fqn, item in metadata.state_dict_metadata.items():
        if fqn not in files:
            continue
        if mode == "ddp":  # replicated: written once, by one rank
            assert len(files[fqn]) == 1
        elif item.size[0] > 1:
            assert {offset[0] == 0: name for offset, name in files[fqn].items()} == \
                {True: "__0_0.distcp", False: "__1_0.distcp"}, (fqn, files[fqn])
    sizes = [(checkpoint / f"__{rank}_0.distcp").stat().st_size for rank in (0, 1)]
    assert min(sizes) > 0.3 * sum(sizes)  # DDP's replicated tensors spread over both ranks too
    return sizes


def _dies_in_step_three(launch, cfg):
    if launch.rank == 1:
        step = torch.optim.SGD.step

        def dying_step(self, *args, **kwargs):
            if self.state_dict()["state"] and dying_step.calls == 2:
                os._exit(9)
            dying_step.calls += 1
            return step(self, *args, **kwargs)

        dying_step.calls = 0
        torch.optim.SGD.step = dying_step
    train(cfg)


def test_a_rank_that_dies_loses_only_the_steps_since_the_checkpoint(single, tmp_path):
    out = tmp_path / "out"
    with with_sgd():
        with pytest.raises(mp.ProcessExitedException):
            fork(2, tmp_path, _dies_in_step_three, config(single / "base", out, 1))
        # Only complete checkpoints have their name (rank 0 may have been writing step 3's into a .partial-*
        # folder when torch stopped it; it is never read and the rerun removes it).
        assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-000002"]
        assert sorted(p.name for p in (out / "checkpoint-000002").iterdir()) == [
            ".metadata", "__0_0.distcp", "__1_0.distcp", "training_state.json"]
        assert not (out / "pipeline").exists()
        fork(2, tmp_path, _train, config(single / "base", out, 1))  # the rerun takes over the dead run's lock
    assert "resumed from" in (tmp_path / "rank0.log").read_text() and not list(out.glob(".partial-*"))
    one, rerun = losses(single / "out"), losses(out)
    assert len(rerun) in (STEPS, STEPS + 1)  # step 3 logged twice if rank 0 finished it before it was stopped
    assert abs(rerun[-1] - one[-1]) < 1e-5 and max(abs(a - b) for a, b in zip(one, rerun)) < 1e-5
    assert gap(weights(single / "out/pipeline/unet"), weights(out / "pipeline/unet")) < 1e-5


# ---- bad setups: one line each ----

def test_bad_setups_are_one_line(single, tmp_path, monkeypatch):
    two = Launch(0, 2, 0, torch.device("cpu"))
    cfg = config(single / "base", tmp_path, 1, num_clips=1)
    with pytest.raises(DataError, match=r"^2 ranks but only 1 clips: .* use at most 1 processes$"):
        parallel.check_setup(cfg, two, cfg.num_clips)
    with pytest.raises(DataError, match="parallel must be one of"):
        parallel.check_setup(config(single / "base", tmp_path, 1, parallel="zero3"), two, 4)
    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", types.ModuleType("torch.distributed.fsdp"))
    with pytest.raises(DataError, match=r"parallel 'fsdp' needs torch.distributed.fsdp.fully_shard .* use 'ddp'$"):
        parallel.check_setup(config(single / "base", tmp_path, 1, parallel="fsdp"), two, 4)


def test_an_output_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path):
    one = Launch(0, 1, 0, torch.device("cpu"))
    held = parallel.lock(tmp_path, one)  # this process holds it
    with pytest.raises(DataError, match=r"is in use by another training run .*pid \d+"):
        parallel.lock(tmp_path, one)
    gone = subprocess.Popen(["true"])
    gone.wait()
    held.write_text(f"{held.read_text().split()[0]} {gone.pid}\n")  # its process has exited
    assert parallel.lock(tmp_path, one) == held and held.read_text().split()[1] == str(os.getpid())


def test_a_checkpoint_of_another_kind_of_run_is_one_line(single, tmp_path):
    with with_sgd():
        train(config(single / "base", tmp_path / "out", 2), until=1)
        with pytest.raises(DataError, match=r"checkpoint-000001 was written by a run that trains 'unet', this config "
                                            r"trains 'lora': use another output_dir$"):
            train(config(single / "base", tmp_path / "out", 2, lora={"rank": 2}))
    assert not (tmp_path / "out/train.lock").exists()
