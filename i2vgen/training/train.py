"""Train the I2VGen-XL UNet on image-to-video clips, the way VGen trains it.

    i2vgen train --config FILE.json        (or: python -m i2vgen.training.train --config FILE.json)

One optimiser step, following ali-vilab/VGen (tools/train/train_t2v_enterance.py, the loss in
tools/modules/diffusions/diffusion_ddim.py, settings in configs/i2vgen_xl_train.yaml):
1. Frozen encoders: video frames -> VAE latents x0 (B, 4, F, h, w) times scaling_factor; caption -> CLIP text
   tokens; first frame -> CLIP image embedding and the image latents that condition the UNet. Here they are
   computed once, under no_grad: for the synthetic clips into a pool (`encode_clips`), for your own clips
   (`data_dir`) into the on-disk encoder cache (cache.py) that dataset.py streams from.
2. Classifier-free-guidance dropout: some rows get the pipeline's unconditional inputs instead.
3. Offset noise eps = n + 0.1 * n_offset, n_offset constant over each frame (VGen's `sample_loss`).
4. x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at a uniform t, on the zero-terminal-SNR cosine schedule.
5. Loss: MSE between the UNet's output and the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0.
6. AdamW over accumulated gradients, clipped; then the EMA copy moves towards the weights.

Checkpoints (checkpoint.py) are torch.distributed.checkpoint folders, one file per rank, holding the weights,
EMA, optimiser and generator, so an interrupted run resumes where it stopped (on any number of processes) and
continues bit for bit; the finished run is written as a complete pipeline folder (`<output_dir>/pipeline`, EMA
weights) that `I2VGenXLPipeline.from_pretrained` loads. With a `lora` section only a LoRA adapter is trained
(i2vgen/lora.py): checkpoints hold the adapter and its EMA alone, and the result is
`<output_dir>/lora/pytorch_lora_weights.safetensors`, for `pipe.load_lora_weights`.
"""

import argparse
import copy
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import PIL.Image
import torch
from einops import rearrange
from tqdm.auto import tqdm

from i2vgen import model_hooks
from i2vgen.distributed import Launch, process_group
from i2vgen.loading import atomic_folder
from i2vgen.models.unet import I2VGenXLUNet, image_latents_from
from i2vgen.pipelines import ImageToVideoPipeline as I2VGenXLPipeline
from i2vgen.training import board, parallel
from i2vgen.training import checkpoint as checkpoints
from i2vgen.training.cache import encoder_fingerprint
from i2vgen.training.config import TrainConfig
from i2vgen.training.data import SyntheticMotion
from i2vgen.training.dataset import folder_batches, folder_dataset
from i2vgen.training.objective import offset_noise, sample_timesteps, v_prediction_loss, velocity_loss  # noqa: F401
from i2vgen.training.sampler import EpochSampler
from i2vgen.training.validation import ValidationSettings, Validator, grid
from i2vgen.training.video_folder import DataError
from i2vgen.video import _atomic_path


# ---- frozen encoders ----

def load_pipeline(cfg: TrainConfig) -> I2VGenXLPipeline:
    """The pipeline whose UNet is trained (with cfg.model_hook applied); every other model is frozen."""
    pipe = I2VGenXLPipeline.from_pretrained(cfg.model).to(cfg.device)
    if cfg.model_hook is not None:
        if cfg.lora is not None:
            raise ValueError("model_hook with lora is not supported yet: the adapter file cannot record the hook")
        model_hooks.warn_new(cfg.model_hook, model_hooks.apply(pipe.unet, cfg.model_hook))
    for frozen in (pipe.vae, pipe.text_encoder, pipe.image_encoder):
        frozen.requires_grad_(False).eval()
    return pipe


def place_encoders(pipe: I2VGenXLPipeline, device) -> None:
    """Move the frozen VAE, text and image encoders to `device`. The steps read encoded clips (the pool or the
    encoder cache) and never call them, so between encoding and validation they wait in host memory: 3.98 GiB
    of float32 weights per GPU at the released sizes (docs/training.md). A no-op when training on the CPU."""
    for frozen in (pipe.vae, pipe.text_encoder, pipe.image_encoder):
        frozen.to(device)


@torch.no_grad()
def encode_clips(pipe: I2VGenXLPipeline, cfg: TrainConfig, chunk: int = 32) -> dict:
    """Encode `cfg.num_clips` training clips once with the frozen VAE and CLIP encoders.

    Returns latent posterior mean/std (N, 4, F, h, w), CLIP image embeddings (N, 1, D), caption index (N,),
    one text embedding per distinct caption (K, S, D), and the empty prompt's embedding (S, D) that the
    pipeline uses as the unconditional text."""
    clips = iter(SyntheticMotion(cfg.seed, "train", cfg.num_frames, cfg.resolution, cfg.start_anywhere, cfg.directions))
    means, stds, image_embeds, captions = [], [], [], []
    for start in tqdm(range(0, cfg.num_clips, chunk), desc="encoding clips", leave=False):
        batch = [next(clips) for _ in range(min(chunk, cfg.num_clips - start))]
        videos = torch.stack([video for video, _, _ in batch]).to(pipe.device)  # (b, 3, F, H, W)
        posterior = pipe.vae.encode(rearrange(videos, "b c f h w -> (b f) c h w")).latent_dist
        means.append(rearrange(posterior.mean, "(b f) c h w -> b c f h w", b=len(batch)).cpu())
        stds.append(rearrange(posterior.std, "(b f) c h w -> b c f h w", b=len(batch)).cpu())
        first_frames = [PIL.Image.fromarray(first) for _, _, first in batch]
        image_embeds.append(pipe.encode_image(first_frames, cfg.resolution).cpu())
        captions += [caption for _, caption, _ in batch]
    distinct = sorted(set(captions))
    text, null_text = pipe._encode_prompts(distinct, None, None, None, guided=True, clip_skip=1)
    return {
        "latent_mean": torch.cat(means), "latent_std": torch.cat(stds), "image_embeds": torch.cat(image_embeds),
        "caption_index": torch.tensor([distinct.index(c) for c in captions]), "captions": distinct,
        "text_embeds": text.cpu(), "null_text_embeds": null_text[0].cpu(),
    }


def sample_batch(pool: dict, cfg: TrainConfig, scaling_factor: float, generator: torch.Generator,
                 rows: torch.Tensor) -> tuple:
    """x0 latents (B, 4, F, h, w) and the UNet's condition kwargs for the pool's clips `rows` (B,), with
    classifier-free-guidance dropout applied."""
    batch_size = len(rows)
    mean, std = pool["latent_mean"][rows], pool["latent_std"][rows]
    x0 = (mean + std * torch.randn(mean.shape, generator=generator)) * scaling_factor
    text = pool["text_embeds"][pool["caption_index"][rows]]
    image = pool["image_embeds"][rows]
    drop = torch.rand(batch_size, generator=generator) < cfg.uncond_prob
    text = torch.where(drop[:, None, None], pool["null_text_embeds"], text)
    image = torch.where(drop[:, None, None], torch.zeros_like(image), image)
    conditions = dict(fps=torch.full((batch_size,), cfg.fps), image_latents=image_latents_from(x0[:, :, 0], x0.shape[2]),
                      image_embeddings=image, encoder_hidden_states=text)
    return x0, conditions


class EMA:
    """Exponential moving average of a model's trainable weights, decay warmed up as
    min(decay, (1 + n) / (10 + n)). The copy shares the frozen weights (a LoRA's base UNet) with the model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.model = copy.deepcopy(model, memo=frozen).eval().requires_grad_(False)
        self.decay = decay

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int):
        """ema <- d * ema + (1 - d) * weights."""
        d = self.decay_at(step)
        for ema_param, param in zip(self.model.parameters(), model.parameters()):
            if param.requires_grad:
                ema_param.lerp_(param.detach(), 1 - d)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then constant or cosine decay to 10% of the learning rate."""
    if step < cfg.lr_warmup_steps:
        return (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = (step - cfg.lr_warmup_steps) / max(1, cfg.max_steps - cfg.lr_warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---- the trained weights ----

def save_trained(unet, folder: Path, is_lora: bool):
    """What training changes: the UNet as a diffusers folder, or with LoRA the adapter alone."""
    if is_lora:
        from i2vgen import lora
        lora.save_lora_weights(folder, unet)
    else:
        unet.save_pretrained(folder)


def save_state(state, path) -> None:
    """torch.save, whose failed writes (a full disk) are RuntimeErrors, with one OSError naming the file."""
    try:
        torch.save(state, path)
    except RuntimeError as error:
        raise OSError(f"cannot write {path}: {str(error).strip().splitlines()[0]}") from None


def export_pipeline(model_folder, unet: I2VGenXLUNet, out) -> None:
    """A complete pipeline folder: every file of `model_folder` except the UNet, which is `unet`'s weights."""
    with atomic_folder(out) as folder:  # a full disk leaves the previous export, or none
        shutil.copytree(model_folder, folder, dirs_exist_ok=True,
                        ignore=lambda parent, names: ["unet"] if Path(parent) == Path(model_folder) else [])
        unet.save_pretrained(folder / "unet")


# ---- the loop ----

def clip_pool(pipe: I2VGenXLPipeline, cfg: TrainConfig, path: Path) -> dict:
    """The encoded training clips (encode_clips), cached at `path` so that a resumed run reuses them. The file
    records what produced it (the data settings and the encoders' fingerprint, cache.encoder_fingerprint); a
    pool made otherwise is encoded again, never reused."""
    produced_by = json.dumps({"seed": cfg.seed, "num_clips": cfg.num_clips, "num_frames": cfg.num_frames,
                              "resolution": cfg.resolution, "start_anywhere": cfg.start_anywhere,
                              "directions": list(cfg.directions), "encoders": encoder_fingerprint(cfg.model)})
    if path.exists():
        try:
            pool = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache is made again, never trusted
            pool = {}
        if isinstance(pool, dict) and pool.get("produced_by") == produced_by:
            return pool
        print(f"{path} was made with other settings or encoders, or is damaged: encoding the clips again",
              file=sys.stderr)
    pool = encode_clips(pipe, cfg) | {"produced_by": produced_by}
    with _atomic_path(path) as tmp:
        save_state(pool, tmp)
    return pool


def synthetic_batches(pool: dict, cfg: TrainConfig, scaling_factor: float, num_train_timesteps: int,
                      generator: torch.Generator, launch: Launch, step: int):
    """Per optimiser step from `step` on, its micro-batches: the pool's clips in epoch order (sampler.py), their
    latents, noise and timesteps drawn with the run's generator. Every rank draws the global batch
    (world_size x batch_size) and keeps its rows (parallel.rank_rows)."""
    rows = parallel.rank_rows(launch, cfg.batch_size)
    sampler = EpochSampler([cfg.num_clips], cfg.batch_size * launch.world_size, cfg.seed)
    for step in itertools.count(step):
        micro_batches = []
        for i in range(cfg.gradient_accumulation_steps):
            clips = sampler.micro_batch(step * cfg.gradient_accumulation_steps + i)[1]
            x0, conditions = sample_batch(pool, cfg, scaling_factor, generator, clips)
            noise = offset_noise(x0.shape, cfg.noise_offset, generator)
            t = sample_timesteps(x0.shape[0], num_train_timesteps, generator, cfg.high_noise_fraction,
                                 cfg.high_noise_min_timestep)
            micro_batches.append({"x0": x0[rows], "noise": noise[rows], "t": t[rows],
                                  "conditions": {key: value[rows] for key, value in conditions.items()}})
        yield micro_batches


def accumulate_gradients(unet, scheduler, micro_batches: list, autocast) -> float:
    """Backpropagate the step's micro-batches (each loss divided by their number); returns the mean loss.
    Under DDP the gradients are all-reduced once, in the last micro-batch's backward."""
    total = 0.0
    for i, batch in enumerate(micro_batches):
        with autocast, parallel.no_sync(unet, last=i == len(micro_batches) - 1):
            loss = velocity_loss(unet, scheduler, batch["x0"], batch["noise"], batch["t"], batch["conditions"])
        (loss / len(micro_batches)).backward()
        total += loss.item() / len(micro_batches)
    return total


def enable_checkpointing(unet, cfg: TrainConfig) -> None:
    """The config's gradient checkpointing: true, per block; "layer", per layer; false, none."""
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing(granularity="layer" if cfg.gradient_checkpointing == "layer" else "block")


def setup_optimization(unet, cfg: TrainConfig, launch: Launch):
    """What trains (a LoRA adapter, the UNet frozen, or the whole UNet), its EMA, the module the loop calls (the
    UNet, or under torchrun its DDP wrapper or its FSDP2-sharded self: parallel.wrap), AdamW and the warmup
    schedule. Returns those, and under FSDP2 on rank 0 an unsharded twin of the UNet that validation and the
    final weights are gathered into."""
    if cfg.lora is not None:
        from i2vgen import lora  # peft: an optional extra
        lora.add_adapter(unet, lora.LoraSettings(**cfg.lora))  # freezes the UNet, adds a trainable adapter
    else:
        unet.requires_grad_(True)
    ema = EMA(unet, cfg.ema_decay)
    sharded = cfg.parallel == "fsdp" and launch.world_size > 1
    twin = copy.deepcopy(unet).cpu() if sharded and launch.is_main else None
    model = parallel.wrap(unet, ema.model, cfg, launch)  # before the optimiser: FSDP2 replaces the parameters
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))
    return model, trainable, ema, optimizer, lr_scheduler, twin


def log_step(log, bar, step: int, loss: float, smoothed: float, lr: float, seconds: float, writer=None) -> None:
    """One line of log.jsonl per optimizer step, the progress bar's smoothed loss, and TensorBoard's scalars."""
    bar.update(1)
    bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{lr:.2e}")
    log.write(json.dumps({"step": step, "loss": loss, "lr": lr, "seconds": round(seconds, 2)}) + "\n")
    log.flush()
    if writer is not None:
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", lr, step)


def validator_for(pipe, cfg: TrainConfig, output_dir: Path) -> Validator | None:
    if not cfg.validate_every:
        return None
    height, width, frames = (cfg.buckets or [(cfg.resolution, cfg.resolution, cfg.num_frames)])[0]
    settings = ValidationSettings.from_config(cfg.validation or {})
    return Validator(pipe, settings, output_dir, frames, width, height, cfg.seed)


def validate(validator: Validator, pipe, ema_unet, step: int, output_dir: Path, writer) -> None:
    """Validate the EMA weights, with the encoders back on the UNet's device meanwhile; metrics to
    validation.jsonl (and TensorBoard)."""
    place_encoders(pipe, pipe.device)
    try:
        metrics, names, videos = validator.run(pipe, ema_unet, step)
    finally:
        place_encoders(pipe, "cpu")
    with open(output_dir / "validation.jsonl", "a") as log:
        log.write(json.dumps({"step": step, **metrics}) + "\n")
    if writer is not None:
        board.log_validation(writer, step, metrics, names, videos, grid(videos))


def training_batches(pipe, cfg: TrainConfig, dataset, step: int, generator: torch.Generator, launch: Launch):
    """Each step's micro-batches (this rank's share) from `step` on: from the clip folder's dataset, or the
    synthetic pool (encoded and written by rank 0; the others read it)."""
    if dataset is not None:
        return folder_batches(dataset, step, cfg.num_workers, launch.rank)
    path = Path(cfg.output_dir) / "clip_pool.pt"
    pool = clip_pool(pipe, cfg, path) if launch.is_main else None
    parallel.barrier(launch)
    pool = pool or torch.load(path, weights_only=True)
    return synthetic_batches(pool, cfg, pipe.vae.config.scaling_factor, pipe.scheduler.config.num_train_timesteps,
                             generator, launch, step)


def train(cfg: TrainConfig, until: int | None = None) -> Path | None:
    """Run (or resume) training; returns the exported pipeline folder. With `until`, stop after that step
    with a checkpoint (the schedule still spans cfg.max_steps) and return None: run again to continue.
    Under torchrun every process runs it (parallel.py)."""
    with process_group(cfg.device) as launch:
        output_dir = Path(cfg.output_dir)
        if launch.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            held = parallel.lock(output_dir, launch)
        try:
            return _train(cfg, until, launch, output_dir)
        finally:
            if launch.is_main:
                held.unlink(missing_ok=True)


def prepare_data(pipe, cfg: TrainConfig, output_dir: Path, launch: Launch):
    """The clip folder's dataset (rank 0 brings the encoder cache up to date first; the others then find it
    complete), or None for the synthetic clips; checks the parallel setup against it."""
    dataset = None
    if cfg.data_dir:
        if launch.is_main:
            dataset = folder_dataset(pipe, cfg, output_dir, launch.world_size)
        parallel.barrier(launch)
        dataset = dataset or folder_dataset(pipe, cfg, output_dir, launch.world_size, report=False)
    parallel.check_setup(cfg, launch, len({key for clips in dataset.by_bucket for key, *_ in clips})
                         if dataset else cfg.num_clips)
    return dataset


def _train(cfg: TrainConfig, until: int | None, launch: Launch, output_dir: Path) -> Path | None:
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    if launch.is_main:
        with _atomic_path(output_dir / "config.json") as tmp:  # never a 0-byte file on a full disk
            Path(tmp).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        for partial in output_dir.glob(".partial-*"):  # a checkpoint a stopped run did not finish
            shutil.rmtree(partial)
    cfg = dataclasses.replace(cfg, device=str(launch.device))  # "cuda" -> cuda:LOCAL_RANK
    parallel.barrier(launch)  # the output folder exists

    pipe = load_pipeline(cfg)
    dataset = prepare_data(pipe, cfg, output_dir, launch)
    validator = validator_for(pipe, cfg, output_dir) if launch.is_main else None
    writer = board.open_writer(output_dir / "tensorboard") if cfg.tensorboard and launch.is_main else None
    unet, scheduler = pipe.unet, pipe.scheduler
    is_lora = cfg.lora is not None
    # What a checkpoint records of the run: what trains, and the global batch that the clip order is cut into.
    run = {"trains": "lora" if is_lora else "unet",
           "global_batch": launch.world_size * cfg.batch_size * cfg.gradient_accumulation_steps}
    checkpoint = checkpoints.latest(output_dir)
    state = checkpoints.read_state(checkpoint, run["trains"]) if checkpoint else None  # before the models are built
    model, trainable, ema, optimizer, lr_scheduler, twin = setup_optimization(unet, cfg, launch)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if state is not None:
        step = checkpoints.load(checkpoint, state, run, unet, ema.model, optimizer, lr_scheduler, generator, launch)

    unet.train()
    enable_checkpointing(unet, cfg)
    autocast = torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16,
                              enabled=cfg.mixed_precision == "bf16")
    batches = training_batches(pipe, cfg, dataset, step, generator, launch)
    place_encoders(pipe, "cpu")  # every clip is encoded now; validation brings them back for its runs
    smoothed = None
    start_time = time.time()
    with open(output_dir / "log.jsonl" if launch.is_main else os.devnull, "a") as log, \
            tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not launch.is_main) as bar:
        while step < min(cfg.max_steps, until or cfg.max_steps):
            parallel.seed_dropout(cfg.seed, step, launch.rank)
            total = parallel.mean_over_ranks(accumulate_gradients(model, scheduler, next(batches), autocast), launch)
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(unet, step)
            step += 1

            smoothed = total if smoothed is None else 0.98 * smoothed + 0.02 * total
            log_step(log, bar, step, total, smoothed, lr_scheduler.get_last_lr()[0], time.time() - start_time, writer)
            if step % cfg.checkpoint_every == 0 or step in (cfg.max_steps, until):
                checkpoints.save(output_dir, step, unet, ema.model, optimizer, lr_scheduler, generator, run,
                                 cfg.keep_checkpoints, launch)
            if cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.max_steps):
                if (ema_unet := parallel.plain(ema.model, twin, launch)) is not None:
                    validate(validator, pipe, ema_unet, step, output_dir, writer)

    result = None if step < cfg.max_steps else output_dir / ("lora" if is_lora else "pipeline")
    final = parallel.plain(ema.model, twin, launch) if result is not None else None
    if final is not None:
        if is_lora:
            save_trained(final, result, is_lora=True)
        else:
            export_pipeline(cfg.model, final, result)
    parallel.barrier(launch)  # every rank returns once the files are there
    return result


def positive_step(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a step number, at least 1, got {text!r}")
    return int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="i2vgen train", description="Train the I2VGen-XL UNet (see docs/training.md).")
    parser.add_argument("--config", required=True, help="JSON file with TrainConfig fields")
    parser.add_argument("--until", type=positive_step, help="stop after this step (with a checkpoint); rerun to continue")
    parser.add_argument("--encode-only", action="store_true",
                        help="with data_dir: bring the encoder cache up to date, then stop")
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig.from_json(args.config)
    except (OSError, ValueError) as error:  # the config file: one line naming it, not a traceback
        print(f"i2vgen train: error: {error}", file=sys.stderr)
        return 2
    try:
        if args.encode_only:
            if not cfg.data_dir:
                raise DataError(f"{args.config}: --encode-only needs a data_dir in the config")
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            folder_dataset(load_pipeline(cfg), cfg, Path(cfg.output_dir))
            return 0
        out = train(cfg, until=args.until)
    except DataError as error:  # the data: one line naming the file
        print(f"i2vgen train: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:  # the model folder, a checkpoint, a LoRA target, a full disk
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"i2vgen train: error: {first}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: once
        print(f"trained weights written to {out}" if out else f"stopped at step {args.until}; rerun to resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
