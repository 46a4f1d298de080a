"""Training settings: one dataclass whose fields are the keys of the JSON file `i2vgen train --config` reads."""

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from i2vgen.checks import check_device, check_int, check_real
from i2vgen.loading import _tuplify, check_config_types, read_json
from i2vgen.training.buckets import parse_buckets
from i2vgen.training.data import MOTIONS

# The values each number may take, checked after its type: key -> (low, high), inclusive, None: no bound.
RANGES = {
    "num_clips": (1, None), "num_frames": (1, None), "resolution": (8, None), "fps": (1, 1000),
    "num_workers": (0, None), "noise_offset": (0.0, None), "high_noise_fraction": (0.0, 1.0),
    "high_noise_min_timestep": (0, None), "uncond_prob": (0.0, 1.0), "max_steps": (1, None),
    "batch_size": (1, None), "gradient_accumulation_steps": (1, None), "learning_rate": (0.0, None),
    "lr_warmup_steps": (0, None), "weight_decay": (0.0, None), "max_grad_norm": (0.0, None),
    "ema_decay": (0.0, 1.0), "validate_every": (0, None), "checkpoint_every": (1, None),
    "keep_checkpoints": (1, None), "num_threads": (1, None),
}
CHOICES = {"lr_schedule": ("constant", "cosine"), "mixed_precision": ("no", "bf16"),
           "gradient_checkpointing": (False, True, "layer")}
LORA_FIELDS = {"rank", "alpha", "dropout", "target_modules"}  # lora.LoraSettings (which needs peft to import)


@dataclass
class TrainConfig:
    # What to train: a pipeline folder in the diffusers layout. Its unet is the starting point and is
    # trained; vae, text_encoder, image_encoder (and tokenizer, feature_extractor, scheduler) stay frozen.
    model: str
    output_dir: str

    # Data: synthetic motion clips (i2vgen/training/data.py), encoded once by the frozen VAE and CLIP.
    num_clips: int = 2048  # size of the pre-encoded clip pool
    num_frames: int = 8
    resolution: int = 64
    fps: int = 16  # the fps micro-condition (the pipeline's target_fps default)
    start_anywhere: bool = False  # start positions independent of the direction (data.sample_spec)
    directions: tuple[str, ...] = ("left", "right", "up", "down")  # motions drawn (data.MOTIONS: + diagonals)

    # Data: your own clips (docs/training.md, "Fine-tune on your own clips"). With data_dir, a folder of clips
    # and captions (i2vgen/training/video_folder.py) replaces the synthetic clips; num_clips, start_anywhere
    # and directions are then unused.
    data_dir: str | None = None
    # [[height, width, frames], ...]: each clip trains at the bucket nearest its aspect ratio (buckets.py);
    # default one bucket [resolution, resolution, num_frames].
    buckets: tuple[tuple[int, int, int], ...] | None = None
    # Target frame rates, one drawn per sample: frames are read with stride round(clip fps / target) and the fps
    # condition is the rate of the frames read (windows.py). Default: (fps,).
    sample_fps: tuple[int, ...] | None = None
    cache_dir: str | None = None  # the encoder cache (cache.py); default <output_dir>/cache
    num_workers: int = 2  # DataLoader workers reading the cache

    # LoRA (i2vgen/lora.py, needs peft): train only a low-rank adapter, the UNet stays frozen. The fields of
    # lora.LoraSettings, e.g. {"rank": 8, "alpha": 8, "dropout": 0.0, "target_modules": ["to_q", "to_k"]};
    # None trains the whole UNet.
    lora: dict | None = None

    # A research change to the UNet, "package.module:function" marked with @i2vgen.model_hooks.model_hook:
    # applied after loading `model`, recorded in the saved UNet's config.json and applied again whenever it is
    # loaded (i2vgen/model_hooks.py). Not with `lora` yet: an adapter file cannot record it.
    model_hook: str | None = None

    # Objective (REFERENCE.md; VGen configs/i2vgen_xl_train.yaml): v-prediction on the scheduler's
    # zero-terminal-SNR cosine schedule, offset noise of strength 0.1.
    noise_offset: float = 0.1
    # Timesteps are uniform over 0..T-1 (VGen). With high_noise_fraction > 0, that share of each batch is
    # drawn instead from high_noise_min_timestep..T-1, where the sample is nearly pure noise: only there must
    # the model take the motion from the caption (later steps already see it in x_t), and uniform sampling
    # spends ~10% of a small run on it. A departure from VGen, off by default; docs/training.md.
    high_noise_fraction: float = 0.0
    high_noise_min_timestep: int = 900
    # Classifier-free guidance: with this probability both conditions are replaced by the pipeline's
    # unconditional ones (empty-prompt text embedding, zero CLIP image embedding); the image latents stay.
    uncond_prob: float = 0.1

    # Optimisation.
    max_steps: int = 2000  # optimiser steps
    batch_size: int = 8  # clips per micro-batch (per rank under torchrun)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 100
    lr_schedule: str = "cosine"  # "constant" or "cosine" (to 10% of learning_rate) after warmup
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999  # with warmup: min(ema_decay, (1 + step) / (10 + step))
    mixed_precision: str = "no"  # "no" or "bf16" (autocast; weights and optimiser state stay float32)
    # Recompute activations in backward (docs/training.md): true, per UNet block; "layer", per layer (far less
    # memory at large sizes: models/checkpointing.py); false, none.
    gradient_checkpointing: bool | str = False

    # Validation (validation.py): every validate_every steps (0: never) and at the end, videos from the
    # `validation` section's fixed inputs and held-out clips with the EMA weights, a held-out loss and PSNRs,
    # e.g. {"data_dir": "heldout_clips", "samples": [{"image": "cat.png", "prompt": "a cat", "seed": 0}]}.
    validate_every: int = 0
    validation: dict | None = None
    tensorboard: bool = False  # also log to <output_dir>/tensorboard (board.py)

    # Bookkeeping.
    seed: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    device: str = "cpu"  # under torchrun "cuda" means cuda:LOCAL_RANK
    # Under torchrun (parallel.py): "ddp" (gradients all-reduced) or "fsdp" (FSDP2: parameters, gradients and
    # optimiser state sharded). batch_size is per rank: the global batch is world_size x batch_size.
    parallel: str = "ddp"
    num_threads: int = 1  # CPU threads; on a shared machine one thread avoids OpenMP oversubscription

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        """A training config file. Unreadable JSON, unknown keys and values of the wrong type are one error
        naming the file (and the key)."""
        data = read_json(Path(path))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {unknown}; known keys: {sorted(known)}")
        for key in ("adam_betas", "directions", "buckets", "sample_fps"):
            if key in data:
                data[key] = _tuplify(data[key])
        check_config_types(cls, data, str(path))
        if data.get("buckets") is not None:
            parse_buckets(data["buckets"], f"{path}: buckets")
        if any(fps <= 0 for fps in data.get("sample_fps") or ()):
            raise ValueError(f"{path}: sample_fps must be positive frame rates, got {list(data['sample_fps'])}")
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.default is MISSING)
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        config = cls(**data)
        try:
            check_values(config)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None
        return config

    def to_dict(self) -> dict:
        return asdict(self)


def check_values(cfg: TrainConfig) -> None:
    """The values the types allow but training cannot use: one error naming the key and what is allowed."""
    for key, (low, high) in RANGES.items():
        check = check_int if isinstance(low, int) else check_real
        check(key, getattr(cfg, key), low, *([] if high is None else [high]))
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{key} must be one of {list(allowed)}, got {getattr(cfg, key)!r}")
    if not all(0 <= beta < 1 for beta in cfg.adam_betas) or len(cfg.adam_betas) != 2:
        raise ValueError(f"adam_betas must be two numbers in [0, 1), got {list(cfg.adam_betas)}")
    unknown = sorted(set(cfg.directions) - set(MOTIONS))
    if unknown or not cfg.directions:
        raise ValueError(f"directions must be some of {sorted(MOTIONS)}, got {list(cfg.directions)}")
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ValueError(f"output_dir {cfg.output_dir} is a file; give a folder")
    check_device(cfg.device)
    if cfg.lora is not None:
        check_lora(cfg.lora)


def check_lora(section) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"lora must be an object of LoRA fields {sorted(LORA_FIELDS)} or null, got {section!r}")
    unknown = sorted(set(section) - LORA_FIELDS)
    if unknown:
        raise ValueError(f"lora has no field {unknown[0]!r}; its fields are {sorted(LORA_FIELDS)}")
    check_int("lora.rank", section.get("rank", 8), 1)
    if section.get("alpha") is not None:
        check_real("lora.alpha", section["alpha"], 0.0)
    check_real("lora.dropout", section.get("dropout", 0.0), 0.0, 1.0)
    targets = section.get("target_modules", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"lora.target_modules must be a list of module-name suffixes, got {targets!r}")
