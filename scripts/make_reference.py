"""Record reference fixtures from diffusers' I2VGen-XL for the parity tests.

This is the only file in the project that imports diffusers. It builds tiny reference models
(I2VGenXLUNet, AutoencoderKL, DDIMScheduler and, for the pipeline, a whole I2VGenXLPipeline with tiny
CLIP encoders and a locally written tokenizer), re-draws every weight from a seeded normal so no branch
is trivially zero, runs them on fixed inputs and writes inputs, outputs and the reference's own
`save_pretrained` folders under tests/fixtures/ (layout: tests/fixtures/README.md).

The reference needs its own environment (it breaks on transformers 5):

    python3 -m venv .venv-ref && .venv-ref/bin/pip install torch==2.13.0 \
        && .venv-ref/bin/pip install -r scripts/reference-requirements.txt
    .venv-ref/bin/python scripts/make_reference.py

Options:
    --out DIR      where to write (default tests/fixtures)
    --alt          other configs, seeds and inputs under the same case names and keys; point the
                   tests at them with I2VGEN_FIXTURES=DIR
    --only LIST    comma-separated subset of unet,vae,ddim,pipeline

Everything runs on CPU in float32 with fixed seeds and deterministic algorithms, so a rerun writes the
same numbers.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import diffusers
from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("unet", "vae", "ddim", "pipeline")

# The released checkpoint's scheduler (ali-vilab/i2vgen-xl scheduler/scheduler_config.json).
RELEASED_DDIM = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="squaredcos_cap_v2",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=1,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="leading",
)


# ----------------------------------------------------------------------------------------------
# helpers


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def redraw_weights_(model: nn.Module, seed: int) -> None:
    """Replace every parameter with a seeded random draw of a sensible scale.

    Linear/conv weights ~ N(0, 1/fan_in) keep activations O(1); biases ~ N(0, 0.05^2); norm weights
    ~ 1 + N(0, 0.1^2). This undoes the reference's zero initialisation (TemporalConvLayer's last conv),
    so every branch contributes to the recorded outputs.
    """
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            for p_name, p in mod.named_parameters(recurse=False):
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if isinstance(mod, (nn.GroupNorm, nn.LayerNorm)):
                    new = 1.0 + randn(gen, *p.shape, scale=0.1) if p_name == "weight" else randn(gen, *p.shape, scale=0.05)
                elif isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    if p_name == "weight":
                        fan_in = p[0].numel()
                        new = randn(gen, *p.shape, scale=fan_in**-0.5)
                    else:
                        new = randn(gen, *p.shape, scale=0.05)
                else:
                    raise RuntimeError(f"no re-draw rule for parameter {full} of {type(mod).__name__}")
                p.copy_(new)
                seen.add(full)
    missing = {n for n, _ in model.named_parameters()} - seen
    assert not missing, missing


def save_tensors(path: Path, tensors: dict) -> None:
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().clone().contiguous()
        if v.is_floating_point():
            v = v.float()
        out[k] = v
    save_file(out, str(path))


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def stats(name: str, t: torch.Tensor) -> None:
    print(f"    {name:24s} {tuple(t.shape)!s:24s} std {t.float().std().item():.3f} absmax {t.abs().max().item():.3f}")


# ----------------------------------------------------------------------------------------------
# UNet


def unet_cases(alt: bool) -> dict:
    """Case name -> (constructor config, input sizes, conditioning values)."""
    if not alt:
        return {
            "unet_2level": dict(
                config=dict(
                    block_out_channels=(16, 32),
                    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                    layers_per_block=1,
                    norm_num_groups=8,
                    cross_attention_dim=16,
                    attention_head_dim=8,
                ),
                batch=1, frames=2, height=8, width=12, seq=5,
                timestep=[637], timestep_int=411, fps=[16], seed=1,
            ),
            "unet_3level": dict(
                config=dict(
                    block_out_channels=(8, 16, 16),
                    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                    layers_per_block=2,
                    norm_num_groups=4,
                    cross_attention_dim=24,
                    attention_head_dim=4,
                ),
                batch=2, frames=3, height=7, width=9, seq=6,
                timestep=[999, 250], timestep_int=1, fps=[16, 8], seed=2,
            ),
        }
    return {
        "unet_2level": dict(
            config=dict(
                block_out_channels=(8, 16),
                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                layers_per_block=2,
                norm_num_groups=4,
                cross_attention_dim=12,
                attention_head_dim=4,
            ),
            batch=2, frames=3, height=6, width=10, seq=3,
            timestep=[5, 720], timestep_int=999, fps=[24, 4], seed=101,
        ),
        "unet_3level": dict(
            config=dict(
                block_out_channels=(16, 16, 32),
                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnDownBlock3D"),
                up_block_types=("CrossAttnUpBlock3D", "UpBlock3D", "CrossAttnUpBlock3D"),
                layers_per_block=1,
                norm_num_groups=8,
                cross_attention_dim=20,
                attention_head_dim=8,
            ),
            batch=1, frames=4, height=5, width=11, seq=7,
            timestep=[333], timestep_int=0, fps=[12], seed=102,
        ),
    }


def make_unet(out: Path, alt: bool) -> None:
    for name, case in unet_cases(alt).items():
        print(f"  {name}")
        torch.manual_seed(case["seed"])
        unet = I2VGenXLUNet(**case["config"]).eval()
        redraw_weights_(unet, case["seed"])
        folder = fresh_dir(out / name)
        unet.save_pretrained(folder, safe_serialization=True)

        gen = torch.Generator().manual_seed(case["seed"] + 1000)
        b, f, h, w = case["batch"], case["frames"], case["height"], case["width"]
        cad = case["config"]["cross_attention_dim"]
        io = dict(
            sample=randn(gen, b, 4, f, h, w),
            image_latents=randn(gen, b, 4, f, h, w),
            image_embeddings=randn(gen, b, cad),
            encoder_hidden_states=randn(gen, b, case["seq"], cad),
            timestep=torch.tensor(case["timestep"], dtype=torch.int64),
            fps=torch.tensor(case["fps"], dtype=torch.int64),
        )
        with torch.no_grad():
            kwargs = dict(
                fps=io["fps"],
                image_latents=io["image_latents"],
                image_embeddings=io["image_embeddings"],
                encoder_hidden_states=io["encoder_hidden_states"],
            )
            io["out"] = unet(io["sample"], io["timestep"], **kwargs).sample
            io["out_int"] = unet(io["sample"], case["timestep_int"], **kwargs).sample
        for k in ("sample", "out", "out_int"):
            stats(k, io[k])
        save_tensors(folder / "io.safetensors", io)
        write_json(
            folder / "case.json",
            dict(
                timestep_int=case["timestep_int"],
                seed=case["seed"],
                batch=b, frames=f, height=h, width=w, seq=case["seq"],
                note="io keys: sample, image_latents, image_embeddings, encoder_hidden_states, timestep, fps, "
                "out (tensor timestep), out_int (python int timestep_int). Model in eval() mode.",
            ),
        )


def make_unet_default_keys(out: Path) -> None:
    """Key names and shapes of the released UNet config, built without allocating weights."""
    with torch.device("meta"):
        unet = I2VGenXLUNet()
    state = unet.state_dict()
    keys = {k: list(v.shape) for k, v in state.items()}
    write_json(out / "unet_default_keys.json", keys)
    summary = dict(
        num_tensors=len(state),
        num_parameters=sum(v.numel() for v in state.values()),
        config={k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
    )
    write_json(out / "unet_default_summary.json", summary)
    print(f"  default unet: {summary['num_tensors']} tensors, {summary['num_parameters']:,} parameters")


# ----------------------------------------------------------------------------------------------
# VAE


def vae_cases(alt: bool) -> dict:
    if not alt:
        return {
            "vae_2level": dict(
                config=dict(
                    block_out_channels=(16, 32),
                    down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2,
                    layers_per_block=1,
                    norm_num_groups=8,
                    latent_channels=4,
                    sample_size=32,
                ),
                x=(2, 3, 24, 40), z=(2, 4, 9, 7), seed=11, tiling=False,
            ),
            "vae_3level": dict(
                config=dict(
                    block_out_channels=(8, 16, 16),
                    down_block_types=("DownEncoderBlock2D",) * 3,
                    up_block_types=("UpDecoderBlock2D",) * 3,
                    layers_per_block=2,
                    norm_num_groups=4,
                    latent_channels=4,
                    sample_size=16,
                    scaling_factor=0.18125,
                ),
                x=(2, 3, 32, 44), z=(2, 4, 6, 10), seed=12, tiling=True,
            ),
        }
    return {
        "vae_2level": dict(
            config=dict(
                block_out_channels=(16, 48),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=2,
                norm_num_groups=4,
                latent_channels=4,
                sample_size=64,
                scaling_factor=0.5,
            ),
            x=(2, 3, 20, 14), z=(1, 4, 5, 8), seed=111, tiling=False,
        ),
        "vae_3level": dict(
            config=dict(
                block_out_channels=(16, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                layers_per_block=1,
                norm_num_groups=8,
                latent_channels=4,
                sample_size=24,
                scaling_factor=0.18125,
            ),
            x=(2, 3, 40, 36), z=(2, 4, 10, 8), seed=112, tiling=True,
        ),
    }


def make_vae(out: Path, alt: bool) -> None:
    for name, case in vae_cases(alt).items():
        print(f"  {name}")
        torch.manual_seed(case["seed"])
        vae = AutoencoderKL(in_channels=3, out_channels=3, **case["config"]).eval()
        redraw_weights_(vae, case["seed"])
        folder = fresh_dir(out / name)
        vae.save_pretrained(folder, safe_serialization=True)

        gen = torch.Generator().manual_seed(case["seed"] + 1000)
        sample_seed = case["seed"] + 7
        io = dict(x=randn(gen, *case["x"]).clamp(-1.5, 1.5), z=randn(gen, *case["z"]))
        with torch.no_grad():
            dist = vae.encode(io["x"]).latent_dist
            io["posterior_mean"] = dist.mean
            io["posterior_std"] = dist.std
            io["posterior_logvar"] = dist.logvar
            io["posterior_mode"] = dist.mode()
            io["posterior_sample"] = dist.sample(generator=torch.Generator().manual_seed(sample_seed))
            io["decoded"] = vae.decode(io["z"]).sample
            meta = dict(sample_seed=sample_seed, scaling_factor=vae.config.scaling_factor)
            if case["tiling"]:
                vae.enable_tiling()
                io["z_tiled"] = io["z"].clone()
                io["tiled_decoded"] = vae.decode(io["z_tiled"]).sample
                io["tiled_posterior_mean"] = vae.encode(io["x"]).latent_dist.mean
                meta["tiling"] = dict(
                    tile_sample_min_size=vae.tile_sample_min_size,
                    tile_latent_min_size=vae.tile_latent_min_size,
                    tile_overlap_factor=vae.tile_overlap_factor,
                    note="from config sample_size: tile_sample_min_size = sample_size, tile_latent_min_size = "
                    "int(sample_size / 2 ** (len(block_out_channels) - 1)); tiled_posterior_mean = "
                    "encode(x) with tiling on (x larger than tile_sample_min_size)",
                )
        for k, v in io.items():
            stats(k, v)
        save_tensors(folder / "io.safetensors", io)
        meta["note"] = (
            "posterior_sample = encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(sample_seed)); "
            "decoded = decode(z).sample. Model in eval() mode."
        )
        write_json(folder / "case.json", meta)


# ----------------------------------------------------------------------------------------------
# DDIM


def ddim_cases(alt: bool) -> dict:
    """Case name -> scheduler kwargs and run settings. Unlisted keys take the reference's defaults
    (note: the reference's default clip_sample is True)."""
    rel = dict(RELEASED_DDIM)
    cases = {
        "released": dict(config=rel, steps=10),
        "linear": dict(config=dict(), steps=10),
        "scaled_linear": dict(
            config=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1),
            steps=7,
        ),
        "cosine": dict(
            config=dict(beta_schedule="squaredcos_cap_v2", clip_sample=False, timestep_spacing="trailing"),
            steps=8,
        ),
        "zero_snr_trailing": dict(
            config=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        rescale_betas_zero_snr=True, prediction_type="v_prediction",
                        timestep_spacing="trailing", clip_sample=False),
            steps=5,
        ),
        "linspace": dict(
            config=dict(timestep_spacing="linspace", clip_sample=True, clip_sample_range=2.0),
            steps=6,
        ),
        "trailing_offset": dict(
            config=dict(num_train_timesteps=500, timestep_spacing="trailing", steps_offset=1,
                        clip_sample=False, prediction_type="v_prediction"),
            steps=9,
        ),
        "no_alpha_one": dict(
            config=dict(set_alpha_to_one=False, clip_sample=False, beta_schedule="scaled_linear"),
            steps=4,
        ),
        "epsilon_clip": dict(config=dict(clip_sample=True, clip_sample_range=0.5), steps=6),
        "sample_pred": dict(config=dict(prediction_type="sample", clip_sample=False, steps_offset=1), steps=5),
        "v_eta": dict(config=rel, steps=6, eta=0.7, generator_seed=1234),
        "eps_eta_clipped_output": dict(
            config=dict(clip_sample=True, clip_sample_range=1.0, beta_schedule="squaredcos_cap_v2"),
            steps=5, eta=1.0, generator_seed=4321, use_clipped_model_output=True,
        ),
        "thresholding": dict(
            config=dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
            steps=6,
        ),
    }
    if alt:
        # Same names, other settings: different step counts, ranges, betas, eta and seeds.
        cases["released"]["steps"] = 13
        cases["linear"] = dict(config=dict(beta_start=0.0002, beta_end=0.03, steps_offset=1), steps=11)
        cases["scaled_linear"]["steps"] = 9
        cases["scaled_linear"]["config"]["timestep_spacing"] = "linspace"
        cases["cosine"] = dict(config=dict(beta_schedule="squaredcos_cap_v2", clip_sample=False,
                                           prediction_type="v_prediction"), steps=3)
        cases["zero_snr_trailing"]["steps"] = 12
        cases["zero_snr_trailing"]["config"]["beta_schedule"] = "linear"
        cases["linspace"] = dict(config=dict(timestep_spacing="linspace", clip_sample=True,
                                             clip_sample_range=1.5, num_train_timesteps=300), steps=7)
        cases["trailing_offset"]["steps"] = 4
        cases["trailing_offset"]["config"]["num_train_timesteps"] = 700
        cases["no_alpha_one"]["steps"] = 8
        cases["epsilon_clip"] = dict(config=dict(clip_sample=True, clip_sample_range=0.8, steps_offset=1), steps=5)
        cases["sample_pred"] = dict(config=dict(prediction_type="sample", clip_sample=True,
                                                clip_sample_range=3.0, timestep_spacing="trailing"), steps=6)
        cases["v_eta"].update(steps=8, eta=0.3, generator_seed=99)
        cases["eps_eta_clipped_output"].update(steps=4, eta=0.5, generator_seed=7)
        cases["thresholding"] = dict(
            config=dict(thresholding=True, dynamic_thresholding_ratio=0.8, sample_max_value=3.0,
                        prediction_type="v_prediction", beta_schedule="scaled_linear"),
            steps=5, eta=0.4, generator_seed=3,
        )
    return cases


def make_ddim(out: Path, alt: bool) -> None:
    folder = fresh_dir(out / "ddim")
    tensors, meta = {}, {}
    shape = (1, 3, 4, 6) if alt else (2, 4, 3, 5)
    for idx, (name, case) in enumerate(ddim_cases(alt).items()):
        sched = DDIMScheduler(**case["config"])
        sched.save_pretrained(folder / name)
        n = case["steps"]
        eta = case.get("eta", 0.0)
        seed = case.get("generator_seed")
        clipped = case.get("use_clipped_model_output", False)
        sched.set_timesteps(n)
        tensors[f"{name}/timesteps"] = sched.timesteps.clone()
        tensors[f"{name}/alphas_cumprod"] = sched.alphas_cumprod.clone()

        data_gen = torch.Generator().manual_seed(500 + idx + (1000 if alt else 0))
        sample = randn(data_gen, *shape)
        tensors[f"{name}/sample"] = sample
        step_gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for i, t in enumerate(sched.timesteps):
            model_output = randn(data_gen, *shape)
            res = sched.step(model_output, t, sample, eta=eta, use_clipped_model_output=clipped, generator=step_gen)
            tensors[f"{name}/model_output/{i}"] = model_output
            tensors[f"{name}/prev_sample/{i}"] = res.prev_sample
            tensors[f"{name}/pred_original_sample/{i}"] = res.pred_original_sample
            sample = res.prev_sample

        num_train = sched.config.num_train_timesteps
        original, noise = randn(data_gen, *shape), randn(data_gen, *shape)
        timesteps = torch.randint(0, num_train, (shape[0],), generator=data_gen)
        timesteps[-1] = num_train - 1  # the terminal step (zero SNR when rescaled)
        tensors[f"{name}/add_noise/original"] = original
        tensors[f"{name}/add_noise/noise"] = noise
        tensors[f"{name}/add_noise/timesteps"] = timesteps
        tensors[f"{name}/add_noise/out"] = sched.add_noise(original, noise, timesteps)
        tensors[f"{name}/velocity/out"] = sched.get_velocity(original, noise, timesteps)

        meta[name] = dict(
            config=case["config"],
            num_inference_steps=n,
            eta=eta,
            generator_seed=seed,
            use_clipped_model_output=clipped,
        )
        print(f"  {name:24s} timesteps {sched.timesteps.tolist()}")
    save_tensors(folder / "ddim.safetensors", tensors)
    write_json(folder / "cases.json", meta)


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    parser.add_argument("--alt", action="store_true", help="other configs/seeds/inputs, same case names")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        sys.exit(f"--only: unknown part(s) {sorted(unknown)}; choose from {','.join(PARTS)}")

    assert diffusers.__version__ == "0.35.2", diffusers.__version__
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.time()
    for part in parts:
        t0 = time.time()
        print(f"[{part}] -> {args.out}{' (alt)' if args.alt else ''}")
        if part == "unet":
            make_unet(args.out, args.alt)
            make_unet_default_keys(args.out)
        elif part == "vae":
            make_vae(args.out, args.alt)
        elif part == "ddim":
            make_ddim(args.out, args.alt)
        elif part == "pipeline":
            make_pipeline(args.out, args.alt)
        print(f"[{part}] {time.time() - t0:.1f}s")
    print(f"done in {time.time() - start:.1f}s")


def make_pipeline(out: Path, alt: bool) -> None:
    raise NotImplementedError("pipeline fixtures: phase 2")


if __name__ == "__main__":
    main()
