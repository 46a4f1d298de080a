"""Training checkpoints as torch.distributed.checkpoint (DCP) folders: every rank writes its own file, and any
number of processes (DDP or FSDP2), or one without a process group, resumes from them.

<output_dir>/checkpoint-000500/
    __0_0.distcp, __1_0.distcp ...  one file per rank: its shards under FSDP2; under DDP, where every rank holds
                                    the whole state, DCP has each tensor written once, by one rank, spread evenly
    .metadata                       DCP's index of the pieces of every tensor (rank 0)
    training_state.json             the step, what trains ("unet" or "lora"), the global batch, the learning-rate
                                    schedule (rank 0)

The tensors (`tensors`): model.* and ema.* - the weights that train (the whole UNet, or the LoRA adapter
alone); optimizer.* - its state by parameter name (torch.distributed.checkpoint.state_dict); generator - the
run's random generator. Nothing else carries over: the clip order is a function of the step (sampler.py) and
torch's global RNG is seeded anew each step (parallel.seed_dropout). DCP reshards each tensor to the layout of
the run that loads it.

All ranks write into .partial-<step>; rank 0 renames it to checkpoint-<step> once DCP has gathered every
rank's result, so a checkpoint folder is always complete. Reading unpickles only DCP's index classes and plain
values (`SafeReader`, `SafePlanner`): weights_only semantics, no arbitrary object.
"""

import contextlib
import json
import logging
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner.load_bytes uses
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from i2vgen.distributed import Launch
from i2vgen.training.video_folder import DataError
from i2vgen.video import _atomic_path

STATE = "training_state.json"


def tensors(unet, ema_model, optimizer, generator: torch.Generator) -> dict:
    """The checkpoint's tensors, as views of this run's (FSDP2: sharded DTensors): what is saved, and what
    DCP loads into, in place."""
    trained = {name for name, p in unet.named_parameters() if p.requires_grad}
    return {"model": {k: v for k, v in get_model_state_dict(unet).items() if k in trained},
            "ema": {k: v for k, v in get_model_state_dict(ema_model).items() if k in trained},
            "optimizer": get_optimizer_state_dict(unet, optimizer), "generator": generator.get_state()}


def save(output_dir: Path, step: int, unet, ema_model, optimizer, lr_scheduler, generator, run: dict,
         keep: int, launch: Launch) -> None:
    """Write <output_dir>/checkpoint-<step>/ (every rank its own file; `run`: what trains and the global batch,
    into training_state.json), then prune to the newest `keep`. Every rank calls it."""
    folder, partial = output_dir / f"checkpoint-{step:06d}", output_dir / f".partial-{step:06d}"
    try:
        with quiet():
            dcp.save(tensors(unet, ema_model, optimizer, generator), storage_writer=FileSystemWriter(partial),
                     no_dist=launch.world_size == 1)
        if launch.is_main:
            with _atomic_path(partial / STATE) as tmp:
                Path(tmp).write_text(json.dumps({"step": step, **run, "lr_scheduler": lr_scheduler.state_dict()}) + "\n")
    except BaseException as error:  # a full disk, Ctrl-C: no half checkpoint left, the previous ones kept
        if launch.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        if not isinstance(error, (OSError, CheckpointException)):
            raise
        raise OSError(f"cannot write {folder} ({first_line(error).replace(str(partial), str(folder))})") from None
    if launch.is_main:
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        for old in sorted(output_dir.glob("checkpoint-*"))[:-keep]:
            shutil.rmtree(old)


def latest(output_dir: Path) -> Path | None:
    found = sorted(output_dir.glob("checkpoint-*"))
    return found[-1] if found else None


def read_state(checkpoint: Path, trains: str) -> dict:
    """A checkpoint's training_state.json. One line for a checkpoint of the earlier format, of another kind of
    run (full vs LoRA), or damaged."""
    if (checkpoint / "training_state.pt").exists():
        raise DataError(f"{checkpoint} is a checkpoint of an earlier i2vgen (training_state.pt, one file by rank 0); "
                        f"this one resumes torch.distributed.checkpoint folders: finish that run with the version "
                        f"that wrote it, or start again in an empty output_dir")
    try:
        state = json.loads((checkpoint / STATE).read_text())
        if not isinstance(state, dict) or not {"step", "lr_scheduler"} <= state.keys():
            raise ValueError(f"{STATE} lacks the step or the learning-rate schedule")
    except (OSError, ValueError) as error:
        raise damaged(checkpoint, error) from None
    if state.get("trains") != trains:
        raise DataError(f"{checkpoint} was written by a run that trains {state.get('trains')!r}, this config trains "
                        f"{trains!r}: use another output_dir")
    return state


def load(checkpoint: Path, state: dict, run: dict, unet, ema_model, optimizer, lr_scheduler, generator,
         launch: Launch) -> int:
    """Restore a checkpoint into this run's (wrapped) UNet, EMA, optimiser, schedule and generator, and say so
    (rank 0); returns its step. A damaged checkpoint is one line naming it."""
    try:
        loaded = tensors(unet, ema_model, optimizer, generator)
        with quiet():
            dcp.load(loaded, storage_reader=SafeReader(checkpoint), planner=SafePlanner(),
                     no_dist=launch.world_size == 1)
        set_model_state_dict(unet, loaded["model"], options=StateDictOptions(strict=False))
        set_model_state_dict(ema_model, loaded["ema"], options=StateDictOptions(strict=False))
        set_optimizer_state_dict(unet, optimizer, loaded["optimizer"])
        generator.set_state(loaded["generator"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    except (Exception, CheckpointException) as error:  # noqa: BLE001 - whatever is damaged, one line naming it
        raise damaged(checkpoint, error) from None
    if launch.is_main:
        print(f"resumed from {checkpoint} at step {state['step']}", file=sys.stderr)
        if state.get("global_batch") != run["global_batch"]:  # the clip order is cut into global batches
            print(f"{checkpoint}'s run had a global batch of {state.get('global_batch')} samples, this one has "
                  f"{run['global_batch']}: the clips follow another order from here (sampler.py)", file=sys.stderr)
    return state["step"]


def load_ema(checkpoint: Path, module: torch.nn.Module) -> torch.nn.Module:
    """A checkpoint's EMA weights into a plain module (the base UNet, or one with the run's adapter), in this
    process alone (no process group)."""
    saved = SafeReader(checkpoint).read_metadata().state_dict_metadata
    weights = {"ema": {k: v for k, v in module.state_dict().items() if f"ema.{k}" in saved}}
    with quiet():
        dcp.load(weights, storage_reader=SafeReader(checkpoint), planner=SafePlanner(), no_dist=True)
    module.load_state_dict(weights["ema"], strict=False)
    return module


def damaged(checkpoint: Path, error: BaseException) -> ValueError:
    return ValueError(f"cannot resume from {checkpoint} ({first_line(error)[:300]}); remove that folder to resume "
                      f"from the one before it, or start again in an empty output_dir")


def first_line(error: BaseException) -> str:
    """The message of an error, or of the first rank's error that a CheckpointException collects."""
    if isinstance(error, CheckpointException) and error.failures:
        rank, (error, _) = next(iter(error.failures.items()))
        return f"rank {rank}: {first_line(error)}"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@contextlib.contextmanager
def quiet():
    """DCP warns on every call in one process ('assuming the intent is to save in a single process': it is),
    and logs each failed read of a damaged checkpoint with its traceback on the root logger (the one line of
    `damaged` says it)."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process")
            yield
    finally:
        logging.disable(before)


# ---- reading without unpickling arbitrary objects ----

# Everything DCP's .metadata pickles (torch 2.6-2.13): its index classes, sizes, dtypes, layouts, its path.
INDEX_CLASSES = {("torch.distributed.checkpoint.metadata", name) for name in (
    "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata", "ChunkStorageMetadata",
    "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath")}


class IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in INDEX_CLASSES and not dtype:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's index")
        return super().find_class(module, name)


class SafeReader(FileSystemReader):
    """FileSystemReader whose .metadata is unpickled by IndexUnpickler."""

    def read_metadata(self, *args, **kwargs):
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as file:
            metadata = IndexUnpickler(file).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor values (the optimiser's param_groups) are read with weights_only."""

    def load_bytes(self, read_item, value) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded
