"""Drop-in API (issue 11): each method a diffusers user calls on the pipeline, loading and saving, tested here.

Parity of the methods that change the numbers (FreeU, fused QKV) is in test_dropin_models.py; diffusers' own
fast tests, rewritten, are in test_upstream_i2vgenxl.py and test_upstream_ddim.py.
"""

import pickle
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_unet

from i2vgen import DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
import i2vgen.pipelines.offload as offload

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "weights" / "tiny-demo"
IMAGE = PIL.Image.open(DEFAULT_MODEL.parent.parent / "assets" / "landscape.png")
CALL = dict(prompt="a red house", height=32, width=32, num_frames=3, num_inference_steps=2, output_type="np")
MODELS = ("vae", "text_encoder", "image_encoder", "unet")


@pytest.fixture(scope="module")
def pipe():
    pipe = I2VGenXLPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=0, **kwargs):
    torch.manual_seed(seed)
    return pipe(image=IMAGE, generator=torch.Generator().manual_seed(seed), **(CALL | kwargs))


@pytest.fixture(scope="module")
def plain_frames(pipe):
    return run(pipe).frames


def fresh(pipe):
    """A pipeline with its own models (for tests that switch something on)."""
    new = I2VGenXLPipeline.from_pretrained(DEFAULT_MODEL)
    new.set_progress_bar_config(disable=True)
    return new


# ---- output, components, from_pipe, progress bar ----

def test_output_reads_like_base_output(pipe, plain_frames):
    out = run(pipe)
    assert out[0] is out.frames is out["frames"] is out.to_tuple()[0] is out[-1]
    assert out.keys() == ["frames"] and list(out) == ["frames"] and len(out) == 1
    np.testing.assert_array_equal(out[0], plain_frames)
    with pytest.raises(KeyError):
        out["images"]


def test_components_and_from_pipe(pipe, plain_frames):
    components = pipe.components
    assert set(components) == {*MODELS, "tokenizer", "feature_extractor", "scheduler"}
    assert all(components[name] is getattr(pipe, name) for name in components)

    scheduler = DDIMScheduler(**{**pipe.scheduler.config.to_dict(), "timestep_spacing": "trailing"})
    other = I2VGenXLPipeline.from_pipe(pipe, scheduler=scheduler)
    assert other.unet is pipe.unet and other.vae is pipe.vae and other.scheduler is scheduler
    assert other._progress_bar_config == {"disable": True}
    np.testing.assert_array_equal(run(I2VGenXLPipeline.from_pipe(pipe)).frames, plain_frames)
    assert not np.array_equal(run(other).frames, plain_frames)  # the new scheduler is really used
    with pytest.raises(TypeError, match="unknown components \\['controlnet'\\]"):
        I2VGenXLPipeline.from_pipe(pipe, controlnet=None)
    source = fresh(None)
    half = I2VGenXLPipeline.from_pipe(source, torch_dtype=torch.float16)
    assert half.unet is source.unet and {m.dtype for m in half.models} == {torch.float16}  # shared, so cast too


def test_progress_bar(pipe):
    assert list(pipe.progress_bar(range(3))) == [0, 1, 2]
    with pipe.progress_bar(total=4) as bar:
        assert bar.total == 4 and bar.disable  # the set_progress_bar_config(disable=True) of the fixture
    with pytest.raises(ValueError, match="iterable or a total"):
        pipe.progress_bar()


# ---- memory switches: same output ----

def test_sequential_cpu_offload_equals_plain(plain_frames, monkeypatch):
    pipe = fresh(None)
    moves = []
    move = offload._move_own_tensors
    monkeypatch.setattr(offload, "_move_own_tensors", lambda m, device: (moves.append(device.type), move(m, device)))
    pipe.enable_sequential_cpu_offload(device="cpu")  # the only device here; the hooks run all the same
    pipe.enable_sequential_cpu_offload(device="cpu")  # enabling twice must not stack hooks
    hooks = len(pipe._sequential_hooks)
    assert pipe.execution_device == torch.device("cpu") and hooks > 0
    np.testing.assert_array_equal(run(pipe).frames, plain_frames)
    # every module that owns tensors moved them in before, and out after, each of its forwards
    assert moves.count("cpu") == len(moves) > hooks
    pipe.enable_model_cpu_offload("cpu")  # switching to model offload removes the per-layer hooks
    assert pipe._sequential_hooks == []
    np.testing.assert_array_equal(run(pipe).frames, plain_frames)
    pipe.maybe_free_model_hooks()  # nothing left to free: every model is back on the CPU
    assert all(getattr(pipe, name).device.type == "cpu" for name in MODELS)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not available"):
            pipe.enable_sequential_cpu_offload()


def test_vae_slicing_and_tiling_switches(pipe, plain_frames):
    """The pipeline's switches reach the VAE. Slicing: all frames in one decode call, decoded one at a time,
    give the plain run's frames (which decodes one frame per call, decode_chunk_size=1). Tiling: at 96 x 96,
    larger than this VAE's 64-pixel tile, the frames change near the seams (how much is test_vae's parity with the
    reference); switched off again, the plain frames come back."""
    pipe.enable_vae_slicing()
    try:
        assert pipe.vae.use_slicing
        np.testing.assert_array_equal(run(pipe, decode_chunk_size=None).frames, plain_frames)
    finally:
        pipe.disable_vae_slicing()
    large = run(pipe, height=96, width=96).frames
    pipe.enable_vae_tiling()
    try:
        assert pipe.vae.use_tiling
        assert not np.array_equal(run(pipe, height=96, width=96).frames, large)
    finally:
        pipe.disable_vae_tiling()
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling
    np.testing.assert_array_equal(run(pipe, height=96, width=96).frames, large)


@pytest.mark.parametrize("method", ["enable_attention_slicing", "enable_xformers_memory_efficient_attention"])
def test_attention_switches_say_they_do_nothing(pipe, method):
    if method.endswith("xformers_memory_efficient_attention"):  # the UNet has the switch too, as in the reference
        with pytest.warns(UserWarning, match="has no effect"):
            pipe.unet.enable_xformers_memory_efficient_attention()
    with pytest.warns(UserWarning, match="has no effect.*scaled_dot_product_attention"):
        getattr(pipe, method)()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        getattr(pipe, method.replace("enable", "disable"))()


# ---- saving and loading ----

def test_save_variant_bin_and_load_it_back(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, variant="fp16", safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.bin").is_file()
    assert (tmp_path / "vae" / "diffusion_pytorch_model.fp16.bin").is_file()
    assert any(".fp16." in f.name for f in (tmp_path / "text_encoder").iterdir())
    loaded = I2VGenXLPipeline.from_pretrained(tmp_path, variant="fp16")
    for name in MODELS:
        for (key, ours), theirs in zip(getattr(pipe, name).state_dict().items(), getattr(loaded, name).state_dict().values()):
            assert torch.equal(ours, theirs), f"{name}.{key}"
    with pytest.raises(FileNotFoundError, match="pass variant='fp16'"):  # the UNet has only the variant
        I2VGenXLPipeline.from_pretrained(tmp_path)


def test_missing_variant_is_a_value_error():
    with pytest.raises(ValueError, match="variant='fp16'.*no component"):
        I2VGenXLPipeline.from_pretrained(DEFAULT_MODEL, variant="fp16")


def test_torch_dtype_per_component():
    loaded = I2VGenXLPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype={"unet": torch.bfloat16,
                                                                          "default": torch.float16})
    assert loaded.unet.dtype == torch.bfloat16
    assert {getattr(loaded, name).dtype for name in ("vae", "text_encoder", "image_encoder")} == {torch.float16}
    loaded = I2VGenXLPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype={"vae": torch.float16})
    assert loaded.vae.dtype == torch.float16 and loaded.unet.dtype == torch.float32  # no "default": float32
    with pytest.raises(TypeError, match="torch_dtype"):
        I2VGenXLPipeline.from_pretrained(DEFAULT_MODEL, torch_dtype={"unet": "half"})


class NotATensor:
    """Unpickling this would need the class itself: exactly what weights_only refuses."""


def small_unet() -> I2VGenXLUNet:
    torch.manual_seed(0)
    return tiny_unet()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the bare pickle.dump file below
def test_bin_weights_load_safely(tmp_path):
    unet = small_unet()
    unet.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    loaded = I2VGenXLUNet.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), loaded.state_dict().values()))

    # safetensors wins when both are there
    doubled = {k: 2 * v for k, v in unet.state_dict().items()}
    save_file({k: v.contiguous() for k, v in doubled.items()}, tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = I2VGenXLUNet.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(doubled.values(), loaded.state_dict().values()))

    # a pickle that needs more than tensors is refused, with no code run
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({**unet.state_dict(), "extra": NotATensor()}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="refused: this pickle needs full unpickling"):
        I2VGenXLUNet.from_pretrained(tmp_path)
    with open(tmp_path / "diffusion_pytorch_model.bin", "wb") as f:  # a bare pickle, not torch's zip format
        pickle.dump({"x": 1}, f)
    with pytest.raises(ValueError, match="refused"):
        I2VGenXLUNet.from_pretrained(tmp_path)


def test_ddim_numpy_trained_betas_save(tmp_path):
    scheduler = DDIMScheduler(trained_betas=np.array([0.1, 0.3]), num_train_timesteps=2)
    scheduler.save_pretrained(tmp_path)
    assert DDIMScheduler.from_pretrained(tmp_path).betas.tolist() == scheduler.betas.tolist()
