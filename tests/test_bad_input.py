"""Every bad input and fault of issue 10, each as the user met it: a clear one-line error (or the right result),
and nothing partial left behind. Grouped as the issue lists them: silent wrong, tracebacks, cryptic one-liners,
no refusal, also."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from i2vgen import I2VGenXLPipeline
from i2vgen.apps.cli import main, read_image
from i2vgen.loading import read_config
from i2vgen.preprocess import center_crop_wide, to_pil_images
from i2vgen.schedulers.ddim import DDIMScheduler
from conftest import Tiny, small_call

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "landscape.png"
TINY = ROOT / "weights" / "tiny-demo"
FAST = ["--steps", "2", "--frames", "3", "--height", "32", "--width", "32", "--seed", "1"]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def out_dir(tmp_path):
    """The output folder; every test that fails a run checks it is left empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def cli(capsys, out_dir, *args, image=IMAGE, prompt="a house", name="v.gif"):
    """Run `i2vgen generate`; returns (exit status, last stderr line)."""
    code = main(["generate", "--image", str(image), "--prompt", prompt, *FAST, "--out", str(out_dir / name),
                 *args])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def refused(capsys, out_dir, *args, code=1, **kwargs) -> str:
    """Run the CLI, expect a one-line error with exit status `code` and an empty output folder; return the line."""
    got, line = cli(capsys, out_dir, *args, **kwargs)
    assert got == code and line.startswith("i2vgen: error: "), (got, line)
    assert list(out_dir.iterdir()) == []
    return line


@pytest.fixture
def model(tmp_path):
    """A writable copy of the embedded tiny model, to damage."""
    return Path(shutil.copytree(TINY, tmp_path / "model"))


@pytest.fixture(scope="module")
def pipe(demo_pipe):
    return demo_pipe


call = small_call


# ---- silent wrong (were: exit 0 with a wrong video or wrong data) ----

@pytest.mark.parametrize("args, message", [
    (["--eta", "5"], "--eta must be a number between 0 and 1, got 5.0"),
    (["--eta", "nan"], "--eta must be a number between 0 and 1, got nan"),
    (["--guidance", "inf"], "--guidance must be a finite number, got inf"),
    (["--guidance", "nan"], "--guidance must be a finite number, got nan"),  # was cryptic
])
def test_eta_and_guidance_are_checked(capsys, out_dir, args, message):
    assert refused(capsys, out_dir, *args, code=2) == f"i2vgen: error: {message}"


def test_eta_and_guidance_through_the_api(pipe):
    for kwargs, match in ((dict(eta=5.0), "eta must be a number between 0 and 1"),
                          (dict(guidance_scale=float("inf")), "guidance_scale must be a finite number")):
        with pytest.raises(ValueError, match=match):
            call(pipe, **kwargs)
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="eta must be a number between 0 and 1"):
        scheduler.step(torch.zeros(1), 0, torch.zeros(1), eta=float("nan"))


def test_nan_weights_are_named(capsys, out_dir, model):
    state = load_file(model / UNET_WEIGHTS)
    key = sorted(state)[3]
    state[key][0] = float("nan")
    save_file(state, model / UNET_WEIGHTS)
    line = refused(capsys, out_dir, "--model", str(model))
    assert line == f"i2vgen: error: {model / UNET_WEIGHTS}: tensor {key} holds NaN or infinite values"


def test_nan_image_tensor_is_refused(pipe):
    image = torch.full((3, 32, 32), 0.5)
    image[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="image tensor or array holds NaN"):
        call(pipe, image=image)


def test_non_finite_latents_are_never_decoded(capsys, out_dir, monkeypatch):
    """Whatever makes the latents NaN (weights, inputs, float16 overflow), no black video is written."""
    decoded = []
    monkeypatch.setattr(I2VGenXLPipeline, "_predict", lambda self, latents, *args: torch.full_like(latents, torch.nan))
    monkeypatch.setattr(I2VGenXLPipeline, "decode_latents", lambda self, *args: decoded.append(1))
    line = refused(capsys, out_dir)
    assert line.startswith("i2vgen: error: the denoised latents hold NaN or infinite values") and not decoded


def test_16_bit_png_keeps_its_brightness(tmp_path):
    path = tmp_path / "gray16.png"
    PIL.Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    with PIL.Image.open(path) as image:
        assert image.mode == "I;16"
    expected = round(32768 * 255 / 65535)  # 128: the same brightness in 8 bits (PIL's own convert gives 255)
    assert read_image(str(path)).getpixel((0, 0)) == (expected,) * 3
    with PIL.Image.open(path) as image:
        assert to_pil_images(image)[0].getpixel((0, 0)) == (expected,) * 3
    float_image = PIL.Image.fromarray(np.full((8, 8), 0.25, dtype=np.float32))  # mode "F" in [0, 1]
    assert to_pil_images(float_image)[0].getpixel((0, 0)) == (64,) * 3


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with orientation 6 ("rotate 90 clockwise to view") comes out upright."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # stored: white left half
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    PIL.Image.fromarray(pixels).save(path, exif=exif, quality=95)
    upright = read_image(str(path))
    assert upright.size == (20, 40)  # width and height swapped
    top, bottom = np.asarray(upright)[5].mean(), np.asarray(upright)[-5].mean()
    assert top > 200 and bottom < 50  # the stored left half is on top after a clockwise turn
    with PIL.Image.open(path) as image:
        assert to_pil_images(image)[0].size == (20, 40)


def test_alpha_is_dropped_as_diffusers_does():
    rgba = PIL.Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_pil_images(rgba)[0].getpixel((0, 0)) == (10, 20, 30)
    assert to_pil_images(np.full((4, 4, 4), 1.0))[0].getpixel((0, 0)) == (255, 255, 255)


def _sharded(folder, names):
    """Tiny's weights in two shards named `names` (relative to folder) by the index."""
    model = Tiny()
    model.save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(model.state_dict())
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: model.state_dict()[k].contiguous() for k in keys[i::2]}, folder / name)
    weight_map = {k: str(names[i % 2]) for i, k in enumerate(keys)}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_shard_index_cannot_name_files_outside(tmp_path, where):
    folder, outside = tmp_path / "model", tmp_path / "outside" / "x.safetensors"
    folder.mkdir()
    name = "../outside/x.safetensors" if where == "parent" else str(outside)
    _sharded(folder, ["a.safetensors", name])
    assert outside.is_file()
    with pytest.raises(ValueError, match=f"names {re.escape(repr(name))}; shard names must be relative file names"):
        Tiny.from_pretrained(folder)


def test_links_must_stay_inside_except_hub_blobs(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    Tiny().save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    weights.rename(outside)
    weights.symlink_to(outside)
    with pytest.raises(ValueError, match="elsewhere.safetensors, outside the model folder"):
        Tiny.from_pretrained(folder)

    # The hub cache's own layout: snapshots/<rev>/<file> -> ../../blobs/<hash> (and deeper for subfolders)
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot, blobs = repo / "snapshots" / "abc123" / "unet", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    model = Tiny(dim=3)
    model.save_pretrained(blobs)
    for name, blob in (("config.json", "1111"), ("diffusion_pytorch_model.safetensors", "2222")):
        (blobs / name).rename(blobs / blob)
        (snapshot / name).symlink_to(Path("../../../blobs", blob))
    assert Tiny.from_pretrained(snapshot).config.dim == 3


def test_ddim_timesteps_and_schedules_are_checked():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 4)
    for bad in (-3, 1000, float("nan"), 2.5, torch.tensor(float("nan"))):  # -3 was used as t = 997
        with pytest.raises(ValueError, match="timestep must be one integer train step between 0 and 999"):
            scheduler.step(x, bad, x)
    with pytest.raises(ValueError, match=r"trained_betas must be finite and in \[0, 1\]; got -0.2"):
        DDIMScheduler(trained_betas=[0.1, -0.2, 0.3], num_train_timesteps=3)
    with pytest.raises(ValueError, match=r"beta_start and beta_end must be finite and in \[0, 1\]; got 2.0"):
        DDIMScheduler(beta_start=0.1, beta_end=2.0)  # alpha_bar would turn negative
    mismatched = DDIMScheduler(trained_betas=[0.1, 0.2, 0.3])  # accepted and saved as the reference does, but
    with pytest.raises(ValueError, match="trained_betas has 3 values but num_train_timesteps is 1000"):
        mismatched.set_timesteps(10)  # not sampled from
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 2, got 0"):
        DDIMScheduler(num_train_timesteps=0)


def test_nan_timestep_does_not_reach_the_unet(pipe):
    """The pipeline's timesteps come from the scheduler, which refuses NaN (above); a UNet called directly
    refuses a NaN number. (A NaN inside a timestep tensor is not read there, as the UNet must also run on fake
    tensors; its NaN output then stops the pipeline before decoding: test_non_finite_latents_are_never_decoded.)"""
    sample = torch.zeros(1, 4, 2, 4, 4)
    condition = pipe.unet.encode_condition(
        encoder_hidden_states=torch.zeros(1, 16, pipe.unet.config.cross_attention_dim),
        image_embeddings=torch.zeros(1, 1, pipe.unet.config.cross_attention_dim),
        image_latents=torch.zeros(1, 4, 2, 4, 4), fps=torch.tensor([16]))
    with pytest.raises(ValueError, match="timestep must be a finite number; got nan"):
        pipe.unet(sample, float("nan"), condition=condition)


# ---- tracebacks (were: a Python traceback) ----

@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("file", [UNET_WEIGHTS, "text_encoder/model.safetensors"])
def test_damaged_safetensors_are_named(capsys, out_dir, model, damage, file):
    path = model / file
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00garbage" * 100}[damage])
    line = refused(capsys, out_dir, "--model", str(model))
    assert line.startswith(f"i2vgen: error: {path} is not a readable safetensors file (")


def test_config_that_is_not_an_object(capsys, out_dir, model):
    (model / "unet" / "config.json").write_text("[1, 2]")
    line = refused(capsys, out_dir, "--model", str(model))
    assert line == f"i2vgen: error: {model / 'unet' / 'config.json'} must hold a JSON object {{...}}, got a JSON list"


def test_shard_index_without_weight_map(tmp_path):
    Tiny().save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match="index.json has no weight_map"):
        Tiny.from_pretrained(tmp_path)


def test_scheduler_with_zero_train_timesteps(capsys, out_dir, model):
    path = model / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(read_config(path.parent, path.name) | {"num_train_timesteps": 0}))
    line = refused(capsys, out_dir, "--model", str(model))
    assert line == f"i2vgen: error: {path}: num_train_timesteps must be an integer >= 2, got 0"


def test_cuda_devices_that_are_not_there(capsys, out_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(capsys, out_dir, "--device", "cuda", code=2)
    assert line == "i2vgen: error: --device: device 'cuda' is not available on this machine (torch.cuda reports " \
                   "none); use cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = refused(capsys, out_dir, "--device", "cuda:5", code=2)
    assert line == "i2vgen: error: --device: device 'cuda:5' does not exist: this machine has 1 cuda device(s), " \
                   "cuda:0 to cuda:0"


def test_fps_out_of_range(capsys, out_dir):
    with pytest.raises(SystemExit) as exit_info:  # not an integer: argparse's own one-line usage error
        cli(capsys, out_dir, "--fps", "1e20")
    assert exit_info.value.code == 2 and "argument --fps: invalid int value: '1e20'" in capsys.readouterr().err
    line = refused(capsys, out_dir, "--fps", str(10**20), code=2)
    assert line == f"i2vgen: error: --fps must be between 1 and 1000, got {10**20}"


def test_1000_steps_with_leading_spacing(capsys, out_dir):
    """The released scheduler (leading spacing, steps_offset 1) would start at t = 1000 (the reference raises an
    IndexError in step()); 999 steps is its maximum."""
    line = refused(capsys, out_dir, "--steps", "1000", code=2)
    assert line == ("i2vgen: error: --steps 1000 with leading spacing and steps_offset 1 would start "
                    "at timestep 1000, past the last train step 999; use at most 999 steps")
    scheduler = DDIMScheduler.from_pretrained(TINY, subfolder="scheduler")
    scheduler.set_timesteps(999)
    assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 1
    scheduler = DDIMScheduler(steps_offset=0)
    scheduler.set_timesteps(1000)  # without the offset every train step is used once
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))


def test_long_thin_image_is_cropped_before_resizing(capsys, out_dir, tmp_path, monkeypatch):
    """A 1 x 400000 PNG (a 1.6 KB file) would be resized to 32 x 12800000 before cropping."""
    path = tmp_path / "strip.png"
    PIL.Image.new("RGB", (1, 400_000), (200, 10, 10)).save(path)
    assert path.stat().st_size < 5000
    resize = PIL.Image.Image.resize
    sizes = []

    def recording_resize(self, size, *args, **kwargs):
        sizes.append(size[0] * size[1])
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "resize", recording_resize)
    code, _ = cli(capsys, out_dir, image=path)
    assert code == 0 and [p.name for p in out_dir.iterdir()] == ["v.gif"]
    assert max(sizes) <= 400_000  # never more pixels than the input has
    crop = np.asarray(center_crop_wide(PIL.Image.new("RGB", (1, 400_000), (200, 10, 10)), (32, 32)))
    assert crop.shape == (32, 32, 3) and (crop == [200, 10, 10]).all()


def test_center_crop_wide_unchanged_for_ordinary_images():
    """The crop-first path is only taken for images that would grow MAX_RESIZE_GROWTH times; others keep the
    reference's exact pixels (full resize, then crop)."""
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8))
    for size in ((32, 32), (64, 16), (128, 128)):
        scale = min(image.width / size[0], image.height / size[1])
        full = image.resize((round(image.width // scale), round(image.height // scale)), PIL.Image.BOX)
        left, top = (full.width - size[0]) // 2, (full.height - size[1]) // 2
        expected = full.crop((left, top, left + size[0], top + size[1]))
        np.testing.assert_array_equal(np.asarray(center_crop_wide(image, size)), np.asarray(expected))


def test_huge_frame_size_is_refused_with_the_estimate(capsys, out_dir):
    line = refused(capsys, out_dir, "--height", "100000", "--width", "100000", code=2)
    assert re.fullmatch(r"i2vgen: error: --height 100000, --width 100000, --frames 3, --steps 2 would take at least "
                        r"[\d,.]+ days on cpu \([\d.]+ EFLOP at [\d.]+ GFLOP/s\), over the limit of 1 h; lower "
                        r"them, or pass --force to run anyway", line), line


def test_pickle_that_runs_code_is_refused(capsys, out_dir, model):
    class Payload:
        def __reduce__(self):
            return print, ("PWNED",)

    (model / "text_encoder" / "model.safetensors").unlink()
    torch.save({"x": Payload()}, model / "text_encoder" / "pytorch_model.bin")
    line = refused(capsys, out_dir, "--model", str(model))
    assert line == (f"i2vgen: error: {model / 'text_encoder'}: refused a pickle weights file that holds more than "
                    "tensors (it could run code); use safetensors weights")


# ---- cryptic one-liners (were: a message that does not name the problem) ----

def test_config_value_of_the_wrong_type(capsys, out_dir, model):
    path = model / "unet" / "config.json"
    path.write_text(json.dumps(read_config(path.parent) | {"layers_per_block": "1"}))
    line = refused(capsys, out_dir, "--model", str(model))
    assert line == f'i2vgen: error: {path}: layers_per_block must be int, got "1"'


def test_missing_tokenizer_folder(capsys, out_dir, model):
    shutil.rmtree(model / "tokenizer")
    line = refused(capsys, out_dir, "--model", str(model))
    assert line == f"i2vgen: error: {model} has no tokenizer folder, which model_index.json lists"


def test_non_utf8_prompt(capsys, out_dir):
    line = refused(capsys, out_dir, prompt="caf\udce9", code=2)  # what Python makes of b"caf\xe9" in a UTF-8 locale
    assert line == "i2vgen: error: --prompt is not valid UTF-8 text"
    result = subprocess.run([sys.executable, "-m", "i2vgen.apps.cli", "generate", "--image", str(IMAGE), "--prompt",
                             b"caf\xe9", "--out", str(out_dir / "v.gif")], capture_output=True, timeout=120,
                            env=os.environ | {"LC_ALL": "C.UTF-8"})
    assert result.returncode == 2 and result.stderr.decode().strip() == "i2vgen: error: --prompt is not valid UTF-8 text"
    assert list(out_dir.iterdir()) == []


def test_meta_device(capsys, out_dir):
    line = refused(capsys, out_dir, "--device", "meta", code=2)
    assert line == "i2vgen: error: --device: device 'meta' holds no data, so no video can be computed on it; use " \
                   "cpu or cuda"


def test_int32_checkpoint_tensor(capsys, out_dir, model):
    state = load_file(model / UNET_WEIGHTS)
    key = sorted(k for k in state if k.endswith("weight"))[0]
    state[key] = state[key].to(torch.int32)
    save_file(state, model / UNET_WEIGHTS)
    line = refused(capsys, out_dir, "--model", str(model))
    assert f"1 wrong-dtype (first: ['{key}: file torch.int32, model torch.float32'])" in line


@pytest.mark.parametrize("where", ["folder", "proc", "read-only"])
def test_unwritable_output_found_before_generation(capsys, out_dir, monkeypatch, where):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(I2VGenXLPipeline, "from_pretrained", never)
    if where == "folder":
        (out_dir / "v.gif").mkdir()
        code, line = cli(capsys, out_dir)
        assert code == 2 and line == f"i2vgen: error: --out: output {out_dir / 'v.gif'} is a folder; give a file name such as " \
                       f"{out_dir / 'v.gif' / 'video.gif'}"
        assert [p.name for p in out_dir.iterdir()] == ["v.gif"]
        return
    if where == "proc":
        code = main(["generate", "--image", str(IMAGE), "--prompt", "x", "--out", "/proc/x.gif"])
        line = capsys.readouterr().err.strip()
        assert code == 2 and line.startswith("i2vgen: error: --out: cannot write /proc/x.gif: ")
        return
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    out_dir.chmod(0o500)
    try:
        line = refused(capsys, out_dir, code=2)
    finally:
        out_dir.chmod(0o700)
    assert line == f"i2vgen: error: --out: cannot write {out_dir / 'v.gif'}: Permission denied"
    assert ".partial" not in line


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompt=[]), TypeError, "prompt must be a string or a non-empty list of strings, got \\[\\]"),
    (dict(negative_prompt=3), TypeError, "negative_prompt must be a string or a non-empty list of strings, got 3"),
    (dict(image=torch.zeros(32, 32, 3)), ValueError, r"must be \(C, H, W\) or \(N, C, H, W\) with C = 1, 3 or 4, got "
                                                     r"shape \(32, 32, 3\) \(channels last\?"),
    (dict(image=np.zeros((3, 32, 32))), ValueError, r"must be \(H, W, C\) or \(N, H, W, C\) with C = 1, 3 or 4, got "
                                                    r"shape \(3, 32, 32\) \(channels first\?"),
    (dict(num_videos_per_prompt=0), ValueError, "num_videos_per_prompt must be at least 1, got 0"),
    (dict(clip_skip=99), ValueError, "clip_skip must be between 0 and 2, got 99"),
    (dict(num_inference_steps=2.5), TypeError, "num_inference_steps must be an integer, got 2.5"),
    (dict(target_fps=10**20), ValueError, "target_fps must be between 1 and 1000"),
])
def test_api_arguments_are_named(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        call(pipe, **kwargs)


def test_cpu_offload_without_an_accelerator(pipe, monkeypatch):
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args: None)
    with pytest.raises(ValueError, match="enable_model_cpu_offload moves models to an accelerator between uses, and "
                                         "this machine has none"):
        pipe.enable_model_cpu_offload()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        pipe.enable_model_cpu_offload("cuda")
    assert pipe._offload_device is None


# ---- no refusal (were: minutes of CPU time with no estimate) ----

@pytest.mark.parametrize("args, named", [
    (["--height", "4096", "--width", "4096", "--frames", "16"], "--height 4096, --width 4096, --frames 16, --steps 2"),
    (["--height", "64", "--width", "64", "--frames", "100000"], "--height 64, --width 64, --frames 100000, --steps 2"),
])
def test_huge_requests_are_refused_before_loading(capsys, out_dir, monkeypatch, args, named):
    """Both would run for days on this CPU: refused, naming the arguments, the estimate and the limit, before the
    model loads (no "Model:" line); --force goes on to generate."""
    line = refused(capsys, out_dir, *args, code=2)
    assert re.fullmatch(rf"i2vgen: error: {named} would take at least [\d,.]+ (days|h) on cpu \([\d.]+ [PE]FLOP at "
                        r"[\d.]+ GFLOP/s\), over the limit of 1 h; lower them, or pass --force to run anyway", line)

    def generating(self, **kwargs):
        raise KeyboardInterrupt  # stand-in for the long generation: only check that it starts

    monkeypatch.setattr(I2VGenXLPipeline, "__call__", generating)
    code, line = cli(capsys, out_dir, *args, "--force")
    assert code == 130 and list(out_dir.iterdir()) == []


def test_request_that_cannot_fit_is_refused(capsys, out_dir, monkeypatch):
    """With 1 MiB free (monkeypatched) a 16-frame video at 64 x 64 (1.5 MiB decoded) does not fit: refused, naming
    what to lower."""
    from i2vgen.pipelines import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    line = refused(capsys, out_dir, "--frames", "16", "--height", "64", "--width", "64", code=2)
    assert re.fullmatch(r"i2vgen: error: --height 64, --width 64, --frames 16, --steps 2 need at least [\d.]+ MiB of "
                        r"memory beyond the weights and cpu has 1.0 MiB free; lower --height and --width \(memory "
                        r"grows with their product\) or --frames, or pass --force to run anyway", line), line


def test_memory_estimate_is_printed_and_small_calls_pass(capsys, out_dir, pipe):
    from i2vgen.pipelines import memory as checks

    assert main(["generate", "--image", str(IMAGE), "--prompt", "x", *FAST, "--out", str(out_dir / "v.gif")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^Estimate: at least [\d.e-]+ s \([\d.]+ [MG]FLOP at [\d.]+ GFLOP/s measured on cpu\) and "
                     r"[\d.]+ MiB of memory beyond the weights \([\d.]+ GiB free\)$", err, re.M)
    assert err.index("Estimate:") < err.index("Model:")  # before the weights load
    # The tiny model at its own size, 16 frames: a few MiB. The estimate is exact arithmetic on the configs:
    # batch 32 x (skips 2 x (32 + 64 / 4) + 2 x (32 + 64)) x 8 x 8 pixels x 4 bytes for the UNet, and the
    # decoded video 2 x 16 x 3 x 64 x 64 x 4 + 3 x 32 x 64 x 64 x 4 bytes, the larger of the two.
    unet = 32 * (2 * (32 + 64 // 4) + 2 * (32 + 64)) * 64 * 4
    decode = 2 * 16 * 3 * 64 * 64 * 4 + 3 * 32 * 64 * 64 * 4
    assert checks.estimate_activation_bytes(pipe.unet.config, pipe.vae.config, torch.float32, 1, 16, 64, 64,
                                            guided=True) == max(unet, decode)


# ---- also ----

SIGTERM_SCRIPT = textwrap.dedent("""
    import importlib.util, sys, time
    import numpy as np, PIL.Image
    spec = importlib.util.spec_from_file_location("video", sys.argv[2])  # i2vgen.video alone: no torch to import
    video = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(video)
    def slow_save(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"GIF89a partial")
        print("writing", flush=True)
        time.sleep(60)
    PIL.Image.Image.save = slow_save
    video.export_to_gif([np.zeros((8, 8, 3), np.uint8)] * 2, sys.argv[1])
""")


def test_sigterm_during_export_leaves_nothing(out_dir):
    """A program that exports a video and is sent SIGTERM (default action: die at once) removes the temp file."""
    process = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(out_dir / "v.gif"),
                                str(ROOT / "i2vgen" / "video.py")], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    assert len(list(out_dir.iterdir())) == 1  # the hidden temporary file
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and list(out_dir.iterdir()) == []


def test_sigterm_ends_the_cli_like_ctrl_c(capsys, out_dir, monkeypatch):
    def terminated_while_saving(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"GIF89a partial")
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PIL.Image.Image, "save", terminated_while_saving)
    previous = signal.getsignal(signal.SIGTERM)
    assert cli(capsys, out_dir) == (128 + signal.SIGTERM, "i2vgen: terminated; no video written")
    assert list(out_dir.iterdir()) == [] and signal.getsignal(signal.SIGTERM) == previous


def test_api_default_size_is_the_models(pipe):
    import inspect

    parameters = inspect.signature(I2VGenXLPipeline.__call__).parameters
    assert parameters["height"].default is None and parameters["width"].default is None
    frames = pipe("a red circle moving right", PIL.Image.new("RGB", (64, 64)), num_frames=2, num_inference_steps=1,
                  output_type="np").frames
    assert frames.shape == (1, 2, 64, 64, 3)


def test_readme_says_how_to_run_the_cli():
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/i2vgen generate" in readme and "source .venv/bin/activate" in readme


def test_loading_and_long_prompts_are_quiet(capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = I2VGenXLPipeline.from_pretrained(TINY)
        pipe.set_progress_bar_config(disable=True)
        call(pipe, prompt="a red circle moving right " * 20)
    err = capfd.readouterr().err
    assert "Loading" not in err and "Token indices sequence length" not in err, err
    assert [str(w.message) for w in caught] == ["a prompt is longer than CLIP's 16 tokens and was truncated"]


def test_every_torch_load_is_weights_only():
    calls = [(path, line) for folder in ("i2vgen", "scripts", "tests") for path in (ROOT / folder).rglob("*.py")
             for line in path.read_text().splitlines() if "torch.load(" in line and "def " not in line]
    assert calls and all("weights_only=True" in line for _, line in calls), calls


@pytest.mark.parametrize("text, expected", [
    ('{"max_steps": "10"}', "max_steps must be int"),
    ('{"learning_rate": [1]}', "learning_rate must be float"),
    ('{"no_such_key": 1}', "unknown training config keys ['no_such_key']"),
    ("[1, 2]", "must hold a JSON object"),
    ("{not json", "is not valid JSON"),
])
def test_training_config_errors_name_the_file_and_key(tmp_path, capsys, text, expected):
    from i2vgen.apps.cli import main

    path = tmp_path / "train.json"
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("i2vgen train: error: ") and str(path) in err and expected in err and "\n" not in err
