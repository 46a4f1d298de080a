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
    --only LIST    comma-separated subset of unet,vae,ddim,pipeline,samplers,sampler_options,pipeline_api,
                   dropin,lora (samplers, pipeline_api and dropin read the tiny pipeline that the pipeline part
                   saved)
                   (lora needs peft, e.g. pip install --target DIR peft; PYTHONPATH=DIR)

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
PARTS = ("unet", "vae", "ddim", "pipeline", "samplers", "sampler_options", "pipeline_api", "dropin", "lora")

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


def two_thread_diff(fn, reference: torch.Tensor) -> float:
    """Max |fn() - reference| with fn run on two CPU threads instead of one: the reference's own float32 noise
    floor (another summation order), recorded so tests can justify their tolerances."""
    torch.set_num_threads(2)
    try:
        again = fn()
    finally:
        torch.set_num_threads(1)
    return (again.float() - reference.float()).abs().max().item()


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
            floor = two_thread_diff(lambda: unet(io["sample"], io["timestep"], **kwargs).sample, io["out"])
        for k in ("sample", "out", "out_int"):
            stats(k, io[k])
        print(f"    two-thread max abs diff of out: {floor:.2e}")
        save_tensors(folder / "io.safetensors", io)
        write_json(
            folder / "case.json",
            dict(
                timestep_int=case["timestep_int"],
                seed=case["seed"],
                two_thread_max_abs_diff=floor,
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
            meta = dict(
                sample_seed=sample_seed,
                scaling_factor=vae.config.scaling_factor,
                two_thread_max_abs_diff=dict(
                    posterior_mean=two_thread_diff(lambda: vae.encode(io["x"]).latent_dist.mean, io["posterior_mean"]),
                    decoded=two_thread_diff(lambda: vae.decode(io["z"]).sample, io["decoded"]),
                ),
            )
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
    # Record on one thread, as the tests run (tests/conftest.py): like-for-like summation order where the
    # kernels agree; two_thread_diff measures how far another order moves the reference itself.
    torch.set_num_threads(1)
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
        elif part == "samplers":
            make_samplers(args.out, args.alt)
        elif part == "sampler_options":
            make_sampler_options(args.out, args.alt)
        elif part == "pipeline_api":
            make_pipeline_api(args.out, args.alt)
        elif part == "dropin":
            make_dropin(args.out, args.alt)
        elif part == "lora":
            make_lora(args.out, args.alt)
        print(f"[{part}] {time.time() - t0:.1f}s")
    print(f"done in {time.time() - start:.1f}s")


# ----------------------------------------------------------------------------------------------
# Pipeline (issue 3): a complete tiny I2VGenXLPipeline and the frames of several calls


def bytes_to_unicode() -> dict:
    """GPT-2/CLIP byte -> printable unicode character table (the standard BPE byte alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_clip_bpe(folder: Path, corpus: list, num_merges: int) -> None:
    """Write a tiny CLIP BPE vocabulary (vocab.json, merges.txt) learned from `corpus`.

    Layout as CLIP's: the 256 byte symbols, the same with the end-of-word marker "</w>", one entry per
    merge, then <|startoftext|> and <|endoftext|>. The merges are learned greedily (most frequent pair
    first, ties broken by the pair itself) so the tokenizer really merges.
    """
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [c + "</w>" for c in symbols]
    words = {}
    for text in corpus:
        for w in text.lower().split():
            enc = "".join(bytes_to_unicode()[b] for b in w.encode("utf-8"))
            key = tuple(enc[:-1]) + (enc[-1] + "</w>",)
            words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(num_merges):
        pairs = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda pr: pairs[pr])
        merges.append(best)
        vocab.append(best[0] + best[1])
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = c
        words = new_words
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", {tok: i for i, tok in enumerate(vocab)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def redraw_clip_weights_(model: nn.Module, seed: int) -> None:
    """Seeded re-draw for the tiny CLIP encoders: as redraw_weights_, plus embeddings ~ N(0, 0.5^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            for p_name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, nn.LayerNorm):
                    new = 1.0 + randn(gen, *p.shape, scale=0.1) if p_name == "weight" else randn(gen, *p.shape, scale=0.05)
                elif isinstance(mod, (nn.Linear, nn.Conv2d)) and p_name == "weight":
                    new = randn(gen, *p.shape, scale=p[0].numel() ** -0.5)
                elif isinstance(mod, (nn.Linear, nn.Conv2d)):
                    new = randn(gen, *p.shape, scale=0.05)
                else:  # token/position embeddings, class embedding
                    new = randn(gen, *p.shape, scale=0.5)
                p.copy_(new)


def smooth_image(seed: int, width: int, height: int):
    """A deterministic smooth RGB test picture (low-res noise upsampled, plus a gradient)."""
    import numpy as np
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 5, 6, generator=gen)
    img = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)[0]
    img = img + torch.linspace(-0.2, 0.2, width)[None, None, :]
    arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def pipeline_spec(alt: bool) -> dict:
    """Tiny component configs and call list. Both variants use the same call names."""
    if not alt:
        return dict(
            seed=21,
            unet=dict(
                block_out_channels=(8, 16),
                down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
                layers_per_block=1, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=4,
            ),
            vae=dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=32,
                     scaling_factor=0.18125),
            text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4),
            vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=8),
            max_length=16,
            images={"image.png": (61, 47, 31), "image_wide.png": (80, 50, 32)},
            prompts=("a cat runs in the grass", "a red car on the road", "blurry dog"),
            size=(32, 32), wide_size=(40, 56), frames=3, steps=3,
        )
    return dict(
        seed=121,
        unet=dict(
            block_out_channels=(8, 8, 16),
            down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
            layers_per_block=1, norm_num_groups=4, cross_attention_dim=24, attention_head_dim=4,
        ),
        vae=dict(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=4, sample_size=64,
                 scaling_factor=0.25),
        text=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=4, num_attention_heads=3),
        vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                    image_size=24, patch_size=6),
        max_length=12,
        images={"image.png": (50, 66, 131), "image_wide.png": (96, 40, 132)},
        prompts=("an old boat at sea", "green trees move in the wind", "dark noise"),
        size=(24, 40), wide_size=(16, 40), frames=2, steps=4,
    )


def pipeline_calls(spec: dict) -> dict:
    """Call name -> how to call. `kwargs` are JSON-able keyword arguments; `image` names PNG file(s)
    (or "tensor:<key>" for a tensor image stored in frames.safetensors); `generator` is null,
    {"kind": "Generator", "seed": n} (torch.Generator().manual_seed(n)),
    {"kind": "manual_seed", "seed": n} (torch.manual_seed(n), i.e. the global generator), or a list of
    those; `tensor_kwargs` maps keyword -> tensor key in frames.safetensors; `global_seed` is set with
    torch.manual_seed before anything else."""
    h, w = spec["size"]
    wh, ww = spec["wide_size"]
    p0, p1, neg = spec["prompts"]
    f, n = spec["frames"], spec["steps"]
    base = dict(prompt=p0, height=h, width=w, num_frames=f, num_inference_steps=n, output_type="np")
    gen = lambda seed: {"kind": "Generator", "seed": seed}  # noqa: E731

    def call(image="image.png", generator=gen(0), global_seed=100, tensor_kwargs=None, **kw):
        return dict(kwargs={**base, **kw}, image=image, generator=generator, global_seed=global_seed,
                    tensor_kwargs=tensor_kwargs or {})

    return {
        "cfg": call(guidance_scale=9.0),
        "no_cfg": call(guidance_scale=1.0, generator=gen(1), global_seed=101),
        "negative_prompt": call(guidance_scale=5.0, negative_prompt=neg, generator=gen(2), global_seed=102),
        "num_videos_2": call(guidance_scale=3.0, num_videos_per_prompt=2, generator=gen(3), global_seed=103),
        "eta": call(eta=0.8, generator=gen(4), global_seed=104),
        "eta_no_cfg_videos_2": call(eta=0.5, guidance_scale=1.0, num_videos_per_prompt=2, generator=gen(5),
                                    global_seed=105),
        "clip_skip_none": call(clip_skip=None, generator=gen(6), global_seed=106),
        "clip_skip_2": call(clip_skip=2, generator=gen(7), global_seed=107),
        "non_square": call(image="image_wide.png", height=wh, width=ww, num_frames=2, prompt=p1,
                           generator=gen(8), global_seed=108),
        "non_square_tall_crop": call(image="image.png", height=wh, width=ww, generator=gen(9), global_seed=109),
        "latent_output": call(output_type="latent", generator=gen(10), global_seed=110),
        "pt_output": call(output_type="pt", guidance_scale=2.0, generator=gen(11), global_seed=111),
        "pil_output": call(output_type="pil", generator=gen(12), global_seed=112),
        "docs_manual_seed": call(negative_prompt=neg, guidance_scale=9.0, generator={"kind": "manual_seed", "seed": 8888},
                                 global_seed=8888),
        "generator_list": call(num_videos_per_prompt=2, generator=[gen(13), gen(14)], global_seed=113),
        "prompt_list_image_list": call(prompt=[p0, p1], image=["image.png", "image_wide.png"],
                                       generator=gen(15), global_seed=114),
        "one_frame_fps": call(num_frames=1, target_fps=4, generator=gen(16), global_seed=115),
        "decode_chunk_none": call(decode_chunk_size=None, target_fps=8, generator=gen(17), global_seed=116),
        "long_prompt_truncated": call(prompt=" ".join([p0, p1, p0, p1]), generator=gen(18), global_seed=117),
        "given_latents_and_embeds": call(prompt=None, generator=None, global_seed=118,
                                         tensor_kwargs=dict(latents="given_latents_and_embeds/in/latents",
                                                            prompt_embeds="given_latents_and_embeds/in/prompt_embeds",
                                                            negative_prompt_embeds="given_latents_and_embeds/in/negative_prompt_embeds")),
        "tensor_image": call(image="tensor:tensor_image/in/image", generator=gen(19), global_seed=119),
    }


def make_generator(g):
    if g is None:
        return None
    if isinstance(g, list):
        return [make_generator(x) for x in g]
    if g["kind"] == "manual_seed":
        return torch.manual_seed(g["seed"])
    return torch.Generator().manual_seed(g["seed"])


def make_pipeline(out: Path, alt: bool) -> None:
    import numpy as np
    from PIL import Image
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)
    from diffusers import I2VGenXLPipeline

    spec = pipeline_spec(alt)
    seed = spec["seed"]
    folder = fresh_dir(out / "pipeline")
    model_dir = folder / "model"

    # --- components (all in eval mode: TemporalConvLayer has dropout, a fresh diffusers model trains)
    torch.manual_seed(seed)
    unet = I2VGenXLUNet(**spec["unet"]).eval()
    redraw_weights_(unet, seed)
    # A random UNet is far less smooth than a trained denoiser: through the sampling loop (and x9 guidance)
    # it amplifies float32 rounding ~100-fold. Damping its output conv keeps the loop stable (the reference's
    # own two-thread vs multi-thread difference drops from ~2e-4 to ~7e-6) while v stays O(0.3).
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.3)
        unet.conv_out.bias.mul_(0.3)
    levels = len(spec["vae"]["block_out_channels"])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                        latent_channels=4, **spec["vae"]).eval()
    redraw_weights_(vae, seed + 1)
    scheduler = DDIMScheduler(**RELEASED_DDIM)

    tok_src = folder / "_tok"
    corpus = list(spec["prompts"]) * 3 + ["a photo of a dog", "the cat and the car"]
    write_tiny_clip_bpe(tok_src, corpus, num_merges=40)
    tokenizer = CLIPTokenizer(str(tok_src / "vocab.json"), str(tok_src / "merges.txt"), pad_token="!",
                              model_max_length=spec["max_length"])
    shutil.rmtree(tok_src)
    cad = spec["unet"]["cross_attention_dim"]
    assert spec["text"]["hidden_size"] == cad, "text hidden states feed the UNet's cross-attention directly"
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=spec["max_length"], hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        projection_dim=cad, **spec["text"],
    )).eval()
    redraw_clip_weights_(text_encoder, seed + 2)
    vis = spec["vision"]
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_act="gelu", projection_dim=cad, **vis)).eval()
    redraw_clip_weights_(image_encoder, seed + 3)
    feature_extractor = CLIPImageProcessor(
        crop_size={"height": vis["image_size"], "width": vis["image_size"]},
        size={"shortest_edge": vis["image_size"]},
    )
    pipe = I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                            feature_extractor=feature_extractor, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(model_dir, safe_serialization=True)
    print(f"  vae_scale_factor {pipe.vae_scale_factor}, vocab {len(tokenizer)}")

    # --- inputs
    images = {}
    for name, (w, h, s) in spec["images"].items():
        images[name] = smooth_image(s, w, h)
        images[name].save(folder / name)
    images = {name: Image.open(folder / name).convert("RGB") for name in images}  # exactly what the tests read
    calls = pipeline_calls(spec)
    tensors = {}
    g = torch.Generator().manual_seed(seed + 10)
    h, w = spec["size"]
    lat = pipe.vae_scale_factor
    tensors["given_latents_and_embeds/in/latents"] = randn(g, 1, 4, spec["frames"], h // lat, w // lat)
    tensors["given_latents_and_embeds/in/prompt_embeds"] = randn(g, 1, 5, cad)
    tensors["given_latents_and_embeds/in/negative_prompt_embeds"] = randn(g, 1, 5, cad)
    tensors["tensor_image/in/image"] = torch.rand(1, 3, 36, 44, generator=g)

    # --- record the UNet's inputs at the first denoising step of every call (for stage-by-stage debugging)
    captured = {}

    def hook(module, args, kwargs):
        if "first" not in captured:
            captured["first"] = dict(sample=args[0], timestep=args[1], **{
                k: kwargs[k] for k in ("encoder_hidden_states", "fps", "image_latents", "image_embeddings")})

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    token_ids, noise_floor = {}, {}

    def run_call(c):
        kwargs = dict(c["kwargs"])
        for k, key in c["tensor_kwargs"].items():
            kwargs[k] = tensors[key]
        if isinstance(c["image"], list):
            image = [images[i] for i in c["image"]]
        elif c["image"].startswith("tensor:"):
            image = tensors[c["image"][len("tensor:"):]]
        else:
            image = images[c["image"]]
        torch.manual_seed(c["global_seed"])
        generator = make_generator(c["generator"])
        result = pipe(image=image, generator=generator, **kwargs).frames
        if kwargs["output_type"] == "pil":
            result = torch.from_numpy(np.stack([np.stack([np.asarray(im) for im in video]) for video in result]))
        elif kwargs["output_type"] == "np":
            result = torch.from_numpy(result)
        return kwargs, result

    for name, c in calls.items():
        captured.clear()
        kwargs, result = run_call(c)
        tensors[f"{name}/frames"] = result
        noise_floor[name] = two_thread_diff(lambda: run_call(c)[1], result)
        for k, v in captured["first"].items():
            tensors[f"{name}/unet_in/{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        for prompt in [kwargs.get("prompt"), kwargs.get("negative_prompt"), ""]:
            for p in prompt if isinstance(prompt, list) else [prompt]:
                if p is not None and p not in token_ids:
                    token_ids[p] = tokenizer(p, padding="max_length", max_length=tokenizer.model_max_length,
                                             truncation=True).input_ids
        print(f"    {name:28s} frames {tuple(result.shape)!s:22s} {str(result.dtype):14s}"
              f" std {result.float().std().item():.3f}  two-thread diff {noise_floor[name]:.1e}")
    handle.remove()

    # --- the saved folder must reproduce the in-memory pipeline
    reloaded = I2VGenXLPipeline.from_pretrained(model_dir)
    reloaded.set_progress_bar_config(disable=True)
    c = calls["cfg"]
    torch.manual_seed(c["global_seed"])
    again = reloaded(image=images["image.png"], generator=make_generator(c["generator"]), **c["kwargs"]).frames
    err = (torch.from_numpy(again) - tensors["cfg/frames"]).abs().max().item()
    print(f"  reload check (cfg): max abs diff {err:.2e}")
    assert err < 1e-4, err

    save_tensors(folder / "frames.safetensors", tensors)
    write_json(folder / "calls.json", calls)
    write_json(folder / "token_ids.json", token_ids)
    write_json(folder / "info.json", dict(
        vae_scale_factor=pipe.vae_scale_factor,
        reload_max_abs_diff=err,
        two_thread_max_abs_diff=noise_floor,
        note="frames.safetensors: <call>/frames (np: (B, F, H, W, 3) float32; pt: (B, F, 3, H, W); pil: uint8 "
        "(B, F, H, W, 3); latent: (B, 4, F, h, w)); <call>/unet_in/{sample, timestep, encoder_hidden_states, fps, "
        "image_latents, image_embeddings}: the UNet's inputs at the first denoising step; <call>/in/*: tensor inputs. "
        "Before each call: torch.manual_seed(global_seed), then the generator is built, then pipe(image=..., "
        "generator=..., **kwargs, **tensor_kwargs). two_thread_max_abs_diff: the same call rerun by the reference "
        "with torch.set_num_threads(2) (another float32 summation order; recorded on 1): the reference's own noise floor; "
        "classifier-free guidance at scale 9 amplifies float32 rounding about 20-fold.",
    ))



# ----------------------------------------------------------------------------------------------
# Samplers (issue 12): UniPC, DPM-Solver++ and Euler step sequences, and tiny-pipeline calls with each


def sampler_cases(alt: bool) -> dict:
    """Case name -> scheduler class, config overrides on top of the released DDIM config (as users write
    `Cls.from_config(pipe.scheduler.config, **overrides)`), steps and, for stochastic ones, the generator seed.
    `base: "default"` starts from the class's own defaults instead (the code paths the released config skips)."""
    tr = dict(timestep_spacing="trailing")
    cases = {
        "unipc_bh2_o2_trailing": dict(cls="UniPCMultistepScheduler", overrides=dict(tr, solver_type="bh2"), steps=10),
        # bh1 with final_sigmas_type "zero" (UniPC's default) gives NaN in the reference: its last step multiplies
        # B(h) = -inf by a zero correction. We return x0 there (tests/test_samplers.py); recorded with sigma_min.
        "unipc_bh1_o3_trailing": dict(cls="UniPCMultistepScheduler",
                                      overrides=dict(tr, solver_type="bh1", solver_order=3,
                                                     final_sigmas_type="sigma_min"), steps=12),
        "unipc_bh2_o3_leading": dict(cls="UniPCMultistepScheduler", overrides=dict(solver_order=3), steps=8),
        "unipc_bh2_o1_linspace": dict(cls="UniPCMultistepScheduler",
                                      overrides=dict(timestep_spacing="linspace", solver_order=1), steps=7),
        "unipc_o3_sigma_min_no_lower_final": dict(
            cls="UniPCMultistepScheduler",
            overrides=dict(tr, solver_order=3, final_sigmas_type="sigma_min", lower_order_final=False), steps=9),
        "unipc_disable_corrector": dict(cls="UniPCMultistepScheduler",
                                        overrides=dict(tr, disable_corrector=[0, 3]), steps=6),
        "unipc_eps_threshold": dict(cls="UniPCMultistepScheduler", base="default",
                                    overrides=dict(solver_order=3, thresholding=True, sample_max_value=1.5), steps=8),
        "dpm_2m_trailing_zero": dict(cls="DPMSolverMultistepScheduler", overrides=dict(tr, final_sigmas_type="zero"),
                                     steps=10),
        "dpm_3m_trailing_zero_16": dict(cls="DPMSolverMultistepScheduler",
                                        overrides=dict(tr, solver_order=3, final_sigmas_type="zero"), steps=16),
        "dpm_2m_heun_leading_sigma_min": dict(
            cls="DPMSolverMultistepScheduler",
            overrides=dict(solver_type="heun", final_sigmas_type="sigma_min"), steps=8),
        "dpm_1_linspace": dict(cls="DPMSolverMultistepScheduler",
                               overrides=dict(timestep_spacing="linspace", solver_order=1), steps=6),
        "dpm_2m_euler_at_final_20": dict(
            cls="DPMSolverMultistepScheduler",
            overrides=dict(tr, final_sigmas_type="sigma_min", euler_at_final=True), steps=20),
        "dpm_3m_no_lower_final": dict(
            cls="DPMSolverMultistepScheduler",
            overrides=dict(tr, solver_order=3, final_sigmas_type="sigma_min", lower_order_final=False), steps=9),
        "dpm_lambda_clipped": dict(cls="DPMSolverMultistepScheduler",
                                   overrides=dict(timestep_spacing="linspace", lambda_min_clipped=-5.1), steps=10),
        "sde_dpm_2m_trailing_zero": dict(
            cls="DPMSolverMultistepScheduler",
            overrides=dict(tr, algorithm_type="sde-dpmsolver++", final_sigmas_type="zero"), steps=10, seed=31),
        "sde_dpm_3m_trailing_16": dict(
            cls="DPMSolverMultistepScheduler",
            overrides=dict(tr, algorithm_type="sde-dpmsolver++", solver_order=3), steps=16, seed=32),
        "sde_dpm_2m_heun_sigma_min": dict(
            cls="DPMSolverMultistepScheduler",
            overrides=dict(tr, algorithm_type="sde-dpmsolver++", solver_type="heun", final_sigmas_type="sigma_min"),
            steps=7, seed=33),
        "dpm_3m_eps_threshold": dict(cls="DPMSolverMultistepScheduler", base="default",
                                     overrides=dict(solver_order=3, thresholding=True, sample_max_value=1.5), steps=8),
        "euler_trailing": dict(cls="EulerDiscreteScheduler", overrides=dict(tr), steps=10),
        "euler_leading": dict(cls="EulerDiscreteScheduler", overrides=dict(), steps=10),
        "euler_linspace_sigma_min": dict(cls="EulerDiscreteScheduler",
                                         overrides=dict(timestep_spacing="linspace", final_sigmas_type="sigma_min"),
                                         steps=9),
        "euler_churn": dict(cls="EulerDiscreteScheduler", overrides=dict(tr), steps=8, seed=34,
                            step_kwargs=dict(s_churn=2.0, s_tmin=0.5, s_tmax=50.0, s_noise=1.003)),
        "euler_eps_default": dict(cls="EulerDiscreteScheduler", base="default", overrides=dict(), steps=7),
    }
    return alternate_steps(cases) if alt else cases


def alternate_steps(cases: dict) -> dict:
    """The --alt variant of step-sequence cases: other step counts and generator seeds under the same names."""
    for i, case in enumerate(cases.values()):
        case["steps"] += 1 + i % 3
        if "seed" in case:
            case["seed"] += 100
    return cases


def record_step_sequences(folder: Path, cases: dict, alt: bool, seed_base: int) -> None:
    """Per case: the scheduler's saved config, and in steps.safetensors its timesteps, sigmas, init_noise_sigma, the
    initial sample and per step the model input, a stand-in model output and the sample step() returned."""
    import diffusers.schedulers as ds

    tensors, meta = {}, {}
    shape = (2, 3, 2, 3) if alt else (3, 2, 2, 3)  # 4-D like the pipeline's (B F) C h w latents
    released = DDIMScheduler(**RELEASED_DDIM).config
    for idx, (name, case) in enumerate(cases.items()):
        cls = getattr(ds, case["cls"])
        if case.get("base") == "default":
            sched = cls(**case["overrides"])
        else:
            sched = cls.from_config(released, **case["overrides"])
        sched.save_pretrained(folder / name)
        sched.set_timesteps(case["steps"])
        tensors[f"{name}/timesteps"] = sched.timesteps.clone()
        tensors[f"{name}/sigmas"] = sched.sigmas.clone()
        tensors[f"{name}/init_noise_sigma"] = torch.as_tensor(sched.init_noise_sigma, dtype=torch.float32)
        data_gen = torch.Generator().manual_seed(seed_base + idx + (1000 if alt else 0))
        sample = randn(data_gen, *shape) * sched.init_noise_sigma
        tensors[f"{name}/sample"] = sample
        step_gen = torch.Generator().manual_seed(case["seed"]) if "seed" in case else None
        kwargs = dict(case.get("step_kwargs", {}))
        if step_gen is not None:
            kwargs["generator"] = step_gen
        for i, t in enumerate(sched.timesteps):
            model_in = sched.scale_model_input(sample, t)
            # A stand-in denoiser: mostly a function of the input (as a model is), plus fresh randomness.
            model_output = 0.5 * torch.tanh(model_in) + randn(data_gen, *shape, scale=0.5)
            sample = sched.step(model_output, t, sample, **kwargs).prev_sample
            tensors[f"{name}/model_input/{i}"] = model_in
            tensors[f"{name}/model_output/{i}"] = model_output
            tensors[f"{name}/prev_sample/{i}"] = sample
        meta[name] = dict(cls=case["cls"], base=case.get("base", "released"), overrides=case["overrides"],
                          num_inference_steps=case["steps"], generator_seed=case.get("seed"),
                          step_kwargs=case.get("step_kwargs", {}))
        print(f"  {name:36s} {len(sched.timesteps)} steps {sched.timesteps.tolist()[:4]}...  "
              f"final |x| {sample.abs().max().item():.3f}")
    save_tensors(folder / "steps.safetensors", tensors)
    write_json(folder / "cases.json", meta)


def sampler_pipeline_calls(alt: bool) -> dict:
    """Tiny-pipeline calls with another scheduler swapped in: name -> scheduler, overrides, call kwargs."""
    steps = 5 if alt else 4
    tr = dict(timestep_spacing="trailing")
    return {
        "unipc": dict(cls="UniPCMultistepScheduler", overrides=dict(tr), kwargs=dict(num_inference_steps=steps)),
        "unipc_bh1_o3": dict(cls="UniPCMultistepScheduler",
                             overrides=dict(tr, solver_type="bh1", solver_order=3, final_sigmas_type="sigma_min"),
                             kwargs=dict(num_inference_steps=steps + 1)),
        "dpm_2m_zero": dict(cls="DPMSolverMultistepScheduler", overrides=dict(tr, final_sigmas_type="zero"),
                            kwargs=dict(num_inference_steps=steps)),
        "sde_dpm_2m": dict(cls="DPMSolverMultistepScheduler",
                           overrides=dict(tr, algorithm_type="sde-dpmsolver++", final_sigmas_type="zero"),
                           kwargs=dict(num_inference_steps=steps)),
        "euler_trailing": dict(cls="EulerDiscreteScheduler", overrides=dict(tr),
                               kwargs=dict(num_inference_steps=steps)),
        "euler_leading": dict(cls="EulerDiscreteScheduler", overrides=dict(), kwargs=dict(num_inference_steps=steps)),
    }


def sampler_option_cases(alt: bool) -> dict:
    """Issue 27's options: sigmas placed by a formula (Karras, exponential, beta, Lu), DPM-Solver's noise-prediction
    algorithm types, Euler's log-linear interpolation and continuous timesteps. `base: "default"` as in
    sampler_cases; the others start from the released config."""
    d, tr = "default", dict(timestep_spacing="trailing")
    dpm, unipc, euler = "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler"
    cases = {
        # On the released (cosine) schedule the largest Karras/beta sigmas all map to t = 998-999: duplicated
        # timesteps, on which the reference's step lookup skips a step and then overruns (IndexError, DPM) or
        # repeats one; so these cases use SD's scaled_linear schedule (the cosine ones go through Lu and exponential).
        "dpm_karras_v": dict(cls=dpm, base=d, overrides=dict(use_karras_sigmas=True, beta_schedule="scaled_linear",
                                                             prediction_type="v_prediction"), steps=10),
        "dpm_karras_eps_default": dict(cls=dpm, base=d, overrides=dict(use_karras_sigmas=True), steps=12),
        "dpm_exponential_default": dict(cls=dpm, base=d, overrides=dict(use_exponential_sigmas=True), steps=9),
        "dpm_beta_v_default": dict(cls=dpm, base=d, overrides=dict(use_beta_sigmas=True,
                                                                   prediction_type="v_prediction"), steps=10),
        "dpm_lu_default": dict(cls=dpm, base=d, overrides=dict(use_lu_lambdas=True), steps=10),
        "dpm_lu_3m": dict(cls=dpm, overrides=dict(use_lu_lambdas=True, solver_order=3), steps=12),
        "dpm_noise_2m_sigma_min": dict(cls=dpm, overrides=dict(tr, algorithm_type="dpmsolver",
                                                               final_sigmas_type="sigma_min"), steps=10),
        "dpm_noise_3m_default": dict(cls=dpm, base=d, overrides=dict(algorithm_type="dpmsolver", solver_order=3,
                                                                     final_sigmas_type="sigma_min"), steps=16),
        "dpm_noise_heun_threshold": dict(cls=dpm, base=d, overrides=dict(
            algorithm_type="dpmsolver", solver_type="heun", final_sigmas_type="sigma_min", thresholding=True,
            sample_max_value=1.5, prediction_type="sample"), steps=8),
        "sde_dpm_noise_2m": dict(cls=dpm, overrides=dict(tr, algorithm_type="sde-dpmsolver",
                                                         final_sigmas_type="sigma_min"), steps=10, seed=41),
        "sde_dpm_noise_heun_default": dict(cls=dpm, base=d, overrides=dict(
            algorithm_type="sde-dpmsolver", solver_type="heun", final_sigmas_type="sigma_min"), steps=9, seed=42),
        "unipc_karras_v": dict(cls=unipc, base=d, overrides=dict(use_karras_sigmas=True, beta_schedule="scaled_linear",
                                                                 prediction_type="v_prediction"), steps=10),
        "unipc_karras_sigma_min_default": dict(cls=unipc, base=d, overrides=dict(use_karras_sigmas=True,
                                                                                 final_sigmas_type="sigma_min"),
                                               steps=11),
        "unipc_exponential_default": dict(cls=unipc, base=d, overrides=dict(use_exponential_sigmas=True), steps=9),
        "unipc_beta_3": dict(cls=unipc, base=d, overrides=dict(use_beta_sigmas=True, solver_order=3,
                                                              beta_schedule="scaled_linear"), steps=10),
        "euler_karras_default": dict(cls=euler, base=d, overrides=dict(use_karras_sigmas=True), steps=10),
        "euler_karras_bounds_default": dict(cls=euler, base=d, overrides=dict(
            use_karras_sigmas=True, sigma_min=0.02, sigma_max=100.0), steps=10),
        "euler_exponential": dict(cls=euler, overrides=dict(tr, use_exponential_sigmas=True), steps=8),
        "euler_beta_default": dict(cls=euler, base=d, overrides=dict(use_beta_sigmas=True), steps=9),
        "euler_log_linear_default": dict(cls=euler, base=d, overrides=dict(interpolation_type="log_linear"), steps=8),
        "euler_continuous_v_default": dict(cls=euler, base=d, overrides=dict(
            timestep_type="continuous", prediction_type="v_prediction"), steps=10),
    }
    return alternate_steps(cases) if alt else cases


def make_sampler_options(out: Path, alt: bool) -> None:
    record_step_sequences(fresh_dir(out / "sampler_options"), sampler_option_cases(alt), alt, seed_base=900)


def make_samplers(out: Path, alt: bool) -> None:
    import diffusers.schedulers as ds
    from PIL import Image
    from diffusers import I2VGenXLPipeline

    record_step_sequences(fresh_dir(out / "samplers"), sampler_cases(alt), alt, seed_base=700)

    # --- whole tiny-pipeline calls with each scheduler (the pipeline part's saved model, same call as its "cfg")
    pipe_dir = out / "pipeline"
    pipe = I2VGenXLPipeline.from_pretrained(pipe_dir / "model")
    pipe.set_progress_bar_config(disable=True)
    base_call = json.loads((pipe_dir / "calls.json").read_text())["cfg"]
    image = Image.open(pipe_dir / base_call["image"]).convert("RGB")
    frames, noise_floor, calls = {}, {}, {}
    ddim_config = pipe.scheduler.config
    for k, (name, c) in enumerate(sampler_pipeline_calls(alt).items()):
        pipe.scheduler = getattr(ds, c["cls"]).from_config(ddim_config, **c["overrides"])
        call = dict(kwargs={**base_call["kwargs"], **c["kwargs"]}, cls=c["cls"], overrides=c["overrides"],
                    image=base_call["image"], generator_seed=40 + k, global_seed=140 + k)

        def run():
            torch.manual_seed(call["global_seed"])
            return torch.from_numpy(pipe(image=image, generator=torch.Generator().manual_seed(call["generator_seed"]),
                                         **call["kwargs"]).frames)

        frames[f"{name}/frames"] = run()
        noise_floor[name] = two_thread_diff(run, frames[f"{name}/frames"])
        calls[name] = call
        print(f"    pipeline {name:20s} frames {tuple(frames[f'{name}/frames'].shape)} "
              f"std {frames[f'{name}/frames'].std().item():.3f}  two-thread diff {noise_floor[name]:.1e}")
    save_tensors(folder / "pipeline_frames.safetensors", frames)
    write_json(folder / "pipeline_calls.json", dict(calls=calls, two_thread_max_abs_diff=noise_floor, note=(
        "Each call: the tiny model of ../pipeline/model, its scheduler replaced by cls.from_config(<its DDIM config>, "
        "**overrides); torch.manual_seed(global_seed), then pipe(image=<image>, generator="
        "torch.Generator().manual_seed(generator_seed), **kwargs). frames: (B, F, H, W, 3) float32 (output_type np).")))


# ----------------------------------------------------------------------------------------------
# Pipeline API (issue 27): the public methods and properties the reference pipeline defines itself, their
# signatures, and what they return on the tiny pipeline of the pipeline part


def reference_pipeline_signatures() -> dict:
    """name -> {"kind": "property"} or {"kind": "method", "parameters": [[name, kind, default repr or null], ...]}
    (self left out) for the public members I2VGenXLPipeline defines itself (not those of DiffusionPipeline)."""
    import inspect

    from diffusers import I2VGenXLPipeline

    members = {}
    for name, member in vars(I2VGenXLPipeline).items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(member, property):
            members[name] = dict(kind="property")
        elif callable(member):
            params = list(inspect.signature(inspect.unwrap(member)).parameters.values())[1:]
            members[name] = dict(kind="method", parameters=[
                [p.name, p.kind.name, None if p.default is p.empty else repr(p.default)] for p in params])
    return members


def pipeline_api_calls(alt: bool) -> dict:
    """encode_prompt calls: name -> (guidance_scale the pipeline holds, keyword arguments; "embeds_from" names the
    call whose prompt_embeds are passed in)."""
    return {
        "one": (9.0, dict(prompt="a red ball rolls left" if not alt else "a blue cube", num_videos_per_prompt=1)),
        "two_prompts_two_videos": (9.0, dict(prompt=["a red ball", "a green square falls"],
                                             negative_prompt=["blurry", "static"], num_videos_per_prompt=2)),
        "no_guidance": (1.0, dict(prompt="a red ball", num_videos_per_prompt=3)),
        "clip_skip_2": (9.0, dict(prompt="a red ball rolls left", num_videos_per_prompt=1, clip_skip=2)),
        "given_embeds": (9.0, dict(prompt=None, num_videos_per_prompt=2, embeds_from="one")),
    }


def make_pipeline_api(out: Path, alt: bool) -> None:
    from diffusers import I2VGenXLPipeline

    folder = fresh_dir(out / "pipeline_api")
    pipe = I2VGenXLPipeline.from_pretrained(out / "pipeline" / "model")
    pipe.unet.eval()
    tensors, calls = {}, {}
    for name, (guidance_scale, kwargs) in pipeline_api_calls(alt).items():
        pipe._guidance_scale = guidance_scale  # set by __call__ in the reference; encode_prompt reads it
        args = dict(kwargs)
        source = args.pop("embeds_from", None)
        if source is not None:
            args["prompt_embeds"] = tensors[f"encode_prompt/{source}/prompt_embeds"]
        embeds, negative = pipe.encode_prompt(device=torch.device("cpu"), **args)
        tensors[f"encode_prompt/{name}/prompt_embeds"] = embeds
        if negative is not None:
            tensors[f"encode_prompt/{name}/negative_prompt_embeds"] = negative
        calls[name] = dict(guidance_scale=guidance_scale, kwargs=kwargs, negative_is_none=negative is None)
        print(f"    encode_prompt {name:24s} {tuple(embeds.shape)} negative "
              f"{None if negative is None else tuple(negative.shape)}")

    pipe._guidance_scale = 9.0
    gen = torch.Generator().manual_seed(61 if alt else 60)
    image = torch.rand(2, 3, 32, 48, generator=gen) * 2 - 1  # preprocessed: (B, 3, H, W) in [-1, 1]
    torch.manual_seed(62)  # the posterior sample draws from the global RNG
    tensors["prepare_image_latents/image"] = image
    tensors["prepare_image_latents/out"] = pipe.prepare_image_latents(image, torch.device("cpu"), 4, 2)
    tensors["prepare_latents/out"] = pipe.prepare_latents(
        2, 4, 3, 32, 48, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(63))
    latents = torch.randn(1, 4, 3, 4, 6, generator=gen)
    tensors["decode_latents/latents"] = latents
    tensors["decode_latents/out"] = pipe.decode_latents(latents, decode_chunk_size=2)
    save_tensors(folder / "outputs.safetensors", tensors)
    write_json(folder / "api.json", dict(
        signatures=reference_pipeline_signatures(), encode_prompt=calls,
        prepare_image_latents=dict(num_frames=4, num_videos_per_prompt=2, guidance_scale=9.0, global_seed=62),
        prepare_latents=dict(args=[2, 4, 3, 32, 48], generator_seed=63),
        decode_latents=dict(decode_chunk_size=2),
        prepare_extra_step_kwargs_ddim=sorted(pipe.prepare_extra_step_kwargs(None, 0.0)),
        note="Recorded on ../pipeline/model (diffusers 0.35.2, transformers 4.57), device cpu, float32."))


# ----------------------------------------------------------------------------------------------
# Drop-in API (issue 11): FreeU and fused QKV projections on the tiny pipeline, and the dummy pipeline of
# diffusers' own fast tests (tests/pipelines/i2vgen_xl/test_i2vgenxl.py, removed before 0.35.2).

FREEU = dict(s1=0.9, s2=0.2, b1=1.2, b2=1.4)  # the values diffusers' FreeU test and users take for this model


def upstream_dummy_pipeline(folder: Path):
    """The components of diffusers' I2VGen-XL fast tests, built in their order and seeds. Their tokenizer is
    a hub download (hf-internal-testing/tiny-random-clip), unreachable here: a local tiny CLIP BPE stands in."""
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)
    from diffusers import I2VGenXLPipeline

    torch.manual_seed(0)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    torch.manual_seed(0)
    unet = I2VGenXLUNet(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), cross_attention_dim=4,
                        attention_head_dim=4, num_attention_heads=None, norm_num_groups=2)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], latent_channels=4, sample_size=32, norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=4, intermediate_size=16, layer_norm_eps=1e-05,
        num_attention_heads=2, num_hidden_layers=2, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
        projection_dim=32))
    tok_src = folder / "_tok"
    write_tiny_clip_bpe(tok_src, ["A painting of a squirrel eating a burger", "a photo of a cat"], num_merges=30)
    tokenizer = CLIPTokenizer(str(tok_src / "vocab.json"), str(tok_src / "merges.txt"), pad_token="!",
                              model_max_length=77)
    shutil.rmtree(tok_src)
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=16, patch_size=1))
    torch.manual_seed(0)
    feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
    models = [unet, vae, text_encoder, image_encoder]
    for m in models:
        m.eval()  # the reference builds them in train mode; dropout is 0 here except TemporalConvLayer's, which
        # feeds a zero-initialised conv: eval changes no number, only stops global-RNG draws
    return I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                            feature_extractor=feature_extractor, unet=unet, scheduler=scheduler)


def make_dropin(out: Path, alt: bool) -> None:
    import random

    import numpy as np
    from PIL import Image
    from diffusers import I2VGenXLPipeline

    folder = fresh_dir(out / "dropin")
    calls = json.loads((out / "pipeline" / "calls.json").read_text())
    pipe = I2VGenXLPipeline.from_pretrained(out / "pipeline" / "model")
    pipe.set_progress_bar_config(disable=True)
    tensors, noise_floor = {}, {}

    def replay(name):
        c = calls[name]
        with Image.open(out / "pipeline" / c["image"]) as im:
            image = im.convert("RGB")
        torch.manual_seed(c["global_seed"])
        return torch.from_numpy(pipe(image=image, generator=make_generator(c["generator"]), **c["kwargs"]).frames)

    # FreeU on a square (power-of-two latents) and a non-square call; fused QKV (UNet and VAE) on the first.
    for name in ("cfg", "non_square"):
        pipe.enable_freeu(**FREEU)
        tensors[f"freeu/{name}"] = replay(name)
        noise_floor[f"freeu/{name}"] = two_thread_diff(lambda: replay(name), tensors[f"freeu/{name}"])
        pipe.disable_freeu()
        plain = replay(name)
        tensors[f"plain/{name}"] = plain
        print(f"    freeu/{name:12s} changes frames by {(tensors[f'freeu/{name}'] - plain).abs().max():.3f}")
    pipe.fuse_qkv_projections()
    tensors["fused_qkv/cfg"] = replay("cfg")
    noise_floor["fused_qkv/cfg"] = two_thread_diff(lambda: replay("cfg"), tensors["fused_qkv/cfg"])
    pipe.unfuse_qkv_projections()
    print(f"    fused_qkv/cfg vs plain: {(tensors['fused_qkv/cfg'] - tensors['plain/cfg']).abs().max():.1e}")

    # diffusers' fast-test pipeline and its default inputs (image: floats_tensor((1, 3, 32, 32), rng=Random(0))).
    dummy = upstream_dummy_pipeline(folder)
    dummy.set_progress_bar_config(disable=True)
    dummy.save_pretrained(folder / "upstream_dummy", safe_serialization=True)
    rng = random.Random(0)
    image = torch.tensor([rng.random() for _ in range(3 * 32 * 32)], dtype=torch.float).view(1, 3, 32, 32)
    tensors["upstream/image"] = image
    inputs = dict(prompt="A painting of a squirrel eating a burger", num_inference_steps=2, guidance_scale=6.0,
                  num_frames=4, width=32, height=32, output_type="np")

    def upstream(**kw):
        torch.manual_seed(0)
        return torch.from_numpy(dummy(image=image, generator=torch.Generator().manual_seed(0), **{**inputs, **kw}).frames)

    for name, kw in {"default": {}, "num_videos_2": dict(num_videos_per_prompt=2)}.items():
        tensors[f"upstream/{name}"] = upstream(**kw)
        noise_floor[f"upstream/{name}"] = two_thread_diff(lambda: upstream(**kw), tensors[f"upstream/{name}"])
        print(f"    upstream/{name}: {tuple(tensors[f'upstream/{name}'].shape)}, slice "
              f"{np.round(tensors[f'upstream/{name}'][0, 0, -3:, -3:, -1].flatten().numpy(), 4).tolist()}")

    save_tensors(folder / "frames.safetensors", tensors)
    write_json(folder / "info.json", dict(
        freeu=FREEU,
        two_thread_max_abs_diff=noise_floor,
        note="freeu/<call>, fused_qkv/<call>, plain/<call>: frames of tests/fixtures/pipeline's recorded call <call> "
        "(replayed as there) after pipe.enable_freeu(**freeu), pipe.fuse_qkv_projections() (UNet and VAE), or "
        "neither. upstream_dummy/: the components of diffusers' I2VGen-XL fast tests (seed-0 initialisation, a "
        "local tokenizer in place of the hub's tiny-random-clip), saved by the reference. upstream/<name>: its "
        "frames for the fast tests' inputs (upstream/image), after torch.manual_seed(0) and with "
        "generator=torch.Generator().manual_seed(0); num_videos_2 adds num_videos_per_prompt=2. "
        "two_thread_max_abs_diff: the reference rerun on two threads (its own float32 noise floor).",
    ))


# ----------------------------------------------------------------------------------------------
# LoRA (issue 15): a UNet LoRA saved by diffusers itself, and the reference UNet's outputs with it


# The adapter's update (alpha / r) B A is drawn with entries of std LORA_UPDATE_SIZE / sqrt(fan_in): 5% of the
# base weights' (redraw_weights_: N(0, 1 / fan_in)), the size of a trained adapter's change rather than a second set
# of weights. It still moves unet_2level's output by ~20% of its scale. (An update twice the base weights, as first
# recorded, drove attention logits to ~48 and hidden states to ~120 and made the recording depend on the CPU's kernels
# by 2e-4 of its scale instead of ~1e-6: tests/fixtures/README.md.)
LORA_UPDATE_SIZE = 0.05
# The tests' float32 parity bound (tests/test_unet.py REL_TOL): removing any one adapter layer must move the output
# by 10 times that or more, so that a dropped layer fails the test.
PARITY_REL_TOL = 1e-5


def lora_case(alt: bool) -> dict:
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    if alt:
        return dict(rank=2, lora_alpha=6, seed=16, target_modules=targets[:4] + ["proj_in", "proj_out"])
    return dict(rank=4, lora_alpha=8, seed=15, target_modules=targets)


def draw_lora_weights_(unet: nn.Module, case: dict) -> None:
    """A ~ N(0, 1 / fan_in), B ~ N(0, s^2) with s = LORA_UPDATE_SIZE / ((alpha / r) sqrt(r)), so that each entry of
    (alpha / r) B A, a sum of r products, has std LORA_UPDATE_SIZE / sqrt(fan_in)."""
    rank, scale = case["rank"], case["lora_alpha"] / case["rank"]
    gen = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_A" in name:
                p.copy_(randn(gen, *p.shape, scale=p[0].numel() ** -0.5))
            elif ".lora_B" in name:
                p.copy_(randn(gen, *p.shape, scale=LORA_UPDATE_SIZE / (scale * rank**0.5)))


def rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def weakest_lora_layer(unet: nn.Module, layers: list, inputs: dict, out: torch.Tensor) -> tuple[str, float]:
    """The adapter layer whose removal moves the output least, and by how much (relative): the fixture must
    catch a dropped layer."""
    names = {m: n for n, m in unet.named_modules()}
    effects = {}
    for layer in layers:
        layer.enable_adapters(False)
        effects[names[layer]] = rel_change(unet(**inputs).sample, out)
        layer.enable_adapters(True)
    return min(effects.items(), key=lambda kv: kv[1])


def make_lora(out: Path, alt: bool) -> None:
    """tests/fixtures/lora: an adapter for the recorded unet_2level UNet (rank 4, alpha 8, on the attention
    projections and feed-forwards; --alt: rank 2, alpha 6, attention and proj_in/proj_out), its weights drawn by
    draw_lora_weights_, saved with diffusers' `StableDiffusionLoraLoaderMixin.save_lora_weights` (the file layout
    diffusers' LoRA training scripts write, with the LoraConfig in the metadata); outputs for unet_2level's inputs
    with the adapter at weight 1 and 0.5, and without it.

    diffusers' I2VGenXLUNet is not a PeftAdapterMixin (no `add_adapter`), so the adapter is put in with
    peft's `inject_adapter_in_model`, which is what `add_adapter` calls for the UNets that have it."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    case = lora_case(alt)
    unet = I2VGenXLUNet.from_pretrained(out / "unet_2level").eval()
    base_io = load_file(out / "unet_2level" / "io.safetensors")
    inputs = {k: base_io[k] for k in ("sample", "timestep", "fps", "image_latents", "image_embeddings",
                                      "encoder_hidden_states")}
    config = LoraConfig(r=case["rank"], lora_alpha=case["lora_alpha"], target_modules=case["target_modules"])
    inject_adapter_in_model(config, unet, adapter_name="default_0")
    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
    draw_lora_weights_(unet, case)
    with torch.no_grad():
        io = dict(inputs)
        io["out_lora"] = unet(**inputs).sample
        floor = two_thread_diff(lambda: unet(**inputs).sample, io["out_lora"])
        weakest = weakest_lora_layer(unet, layers, inputs, io["out_lora"])
        for layer in layers:  # what diffusers' set_adapters does per layer
            layer.set_scale("default_0", 0.5)
        io["out_lora_half"] = unet(**inputs).sample
        for layer in layers:
            layer.enable_adapters(False)
        io["out_base"] = unet(**inputs).sample
    base_diff = (io["out_base"] - base_io["out"]).abs().max().item()  # another process: float32 noise only
    assert base_diff < 1e-5 * base_io["out"].abs().max().item(), base_diff
    moves = dict(lora_vs_base=rel_change(io["out_lora"], io["out_base"]),
                 lora_vs_half=rel_change(io["out_lora_half"], io["out_lora"]), weakest_layer_dropped=weakest[1])
    assert min(moves.values()) > 10 * PARITY_REL_TOL, (moves, weakest)
    folder = fresh_dir(out / "lora")
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet, adapter_name="default_0"),
        unet_lora_adapter_metadata=config.to_dict())
    for k in ("out_lora", "out_lora_half"):
        stats(k, io[k])
    print(f"    relative moves {moves}, weakest layer {weakest[0]}")
    save_tensors(folder / "io.safetensors", io)
    write_json(folder / "case.json", dict(
        base="unet_2level", **case, update_size=LORA_UPDATE_SIZE, out_base_vs_unet_2level_max_abs_diff=base_diff,
        two_thread_max_abs_diff_out_lora=floor, relative_moves=moves, weakest_layer=weakest[0],
        note="pytorch_lora_weights.safetensors: written by diffusers' StableDiffusionLoraLoaderMixin.save_lora_weights "
        "(unet_lora_layers = peft's get_peft_model_state_dict, unet_lora_adapter_metadata = the LoraConfig). Adapter "
        "weights: A ~ N(0, 1/fan_in), B ~ N(0, s^2) with s = update_size / ((lora_alpha / rank) sqrt(rank)): the update "
        "(alpha / r) B A has entries of update_size times the base weights' std. io: the "
        "unet_2level inputs; out_lora (adapter weight 1), out_lora_half (set_adapters weight 0.5), out_base (adapters "
        "disabled; equals unet_2level's out). relative_moves: max |difference| / max |reference| between out_lora and "
        "out_base, out_lora and out_lora_half, and out_lora and the output with only weakest_layer's adapter disabled "
        "(the layer that moves it least). Model in eval() mode. The adapter was injected with peft's "
        "inject_adapter_in_model (diffusers' I2VGenXLUNet has no add_adapter), which also freezes every UNet "
        "parameter (requires_grad False).",
    ))


if __name__ == "__main__":
    main()
