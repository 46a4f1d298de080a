"""The second battery of bad input and faults (issue 25): full disks, LoRA files, endless waits, job files, the
API's types, the app. Each ends in one clear line naming the argument, file or key (or the right result), with
nothing partial left behind."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import small_call

from i2vgen import I2VGenXLPipeline
from i2vgen.apps.cli import main

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "red_circle.png"
TINY = ROOT / "weights" / "tiny-demo"
FAST = ["--steps", "2", "--frames", "3", "--height", "32", "--width", "32", "--seed", "1"]


def cli(capsys, *args) -> tuple[int, str]:
    """Run the CLI; returns (exit status, last stderr line)."""
    code = main(list(map(str, args)))
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def pipe(demo_pipe):
    return demo_pipe


call = small_call


# ---- full disks ----

FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    from i2vgen.apps.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def full_disk(*args) -> subprocess.CompletedProcess:
    """Run the CLI in a process whose files cannot grow past 1 kB (a 3-frame 32x32 MP4 is 1.8 kB) (ffmpeg, its child, inherits the limit)."""
    return subprocess.run([sys.executable, "-c", FULL_DISK, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})


def test_full_disk_during_mp4_export_fails_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = full_disk("generate", "--image", IMAGE, "--prompt", "a red circle moving right", *FAST,
                       "--out", out / "v.mp4")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith(f"i2vgen: error: cannot write {out / 'v.mp4'}: ffmpeg wrote "), last
    assert "(is the disk full?)" in last and list(out.iterdir()) == []


SAVE_ON_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from i2vgen import I2VGenXLPipeline
    pipe = I2VGenXLPipeline.from_pretrained(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # the UNet's weights are 5.6 MB
    try:
        pipe.save_pretrained(sys.argv[2])
    except OSError as error:
        sys.exit(f"refused: {error}")
""")


@pytest.mark.parametrize("old_save", [False, True])
def test_save_pretrained_onto_a_full_disk_leaves_the_old_state(tmp_path, old_save):
    target = tmp_path / "saved"
    if old_save:
        I2VGenXLPipeline.from_pretrained(TINY).save_pretrained(target)
    before = sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*"))
    result = subprocess.run([sys.executable, "-c", SAVE_ON_FULL_DISK, TINY, target], capture_output=True, text=True,
                            timeout=300, env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 1 and result.stderr.startswith(f"refused: cannot write {target}/"), result.stderr
    assert ".partial" not in result.stderr
    assert sorted((p.relative_to(tmp_path), p.stat().st_size) for p in tmp_path.rglob("*")) == before


# ---- LoRA files ----

LORA = ROOT / "weights" / "tiny-demo-lora-diagonal" / "pytorch_lora_weights.safetensors"
A_KEY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight"
B_KEY = A_KEY.replace("lora_A", "lora_B")


def damaged_lora(tmp_path, change=None, metadata=None) -> Path:
    """A copy of the diagonal LoRA with `change(state)` applied and `metadata` (a string) as its config JSON."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(LORA, framework="pt") as file:
        state = {key: file.get_tensor(key) for key in file.keys()}
        stored = file.metadata()
    if change:
        change(state)
    if metadata is not None:
        stored["lora_adapter_metadata"] = metadata
    path = tmp_path / "lora.safetensors"
    save_file(state, path, metadata=stored)
    return path


def _set(key, value):
    return lambda state: state.__setitem__(key, value(state[key]))


@pytest.mark.parametrize("change, metadata, message", [
    (_set(A_KEY, lambda t: (t * 100).int()), None, f"{A_KEY} is int32; LoRA weights must be floating point"),
    (_set(B_KEY, lambda t: t[:, :4].contiguous()), None, f"{B_KEY} has rank 4 but {A_KEY} has rank 8"),
    (lambda state: state.pop(B_KEY), None, f"{A_KEY} has no {B_KEY} beside it"),
    (_set(A_KEY, lambda t: t.index_fill(0, torch.tensor([0]), float("nan"))), None, f"{A_KEY} holds NaN or infinite"),
    (_set(B_KEY, lambda t: t.index_fill(0, torch.tensor([0]), float("inf"))), None, f"{B_KEY} holds NaN or infinite"),
    (lambda state: state.clear(), None, "holds no tensors, so no LoRA weights"),
    (None, "{not json", "metadata lora_adapter_metadata is not valid JSON"),
    (None, "[1, 2]", "metadata lora_adapter_metadata must be a JSON object, got list"),
    (None, '{"unet.r": 8, "unet.lora_alpha": 1e30}', "metadata unet.lora_alpha must be a number between -8000 and 8000"),
    (None, '{"unet.r": 0}', "metadata unet.r must be at least 1, got 0"),
])
def test_bad_lora_files_are_named(pipe, tmp_path, change, metadata, message):
    path = damaged_lora(tmp_path, change, metadata)
    with pytest.raises(ValueError) as error:
        pipe.load_lora_weights(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), error.value
    assert not hasattr(pipe.unet, "peft_config")


@pytest.mark.parametrize("spec, message", [
    (f"{LORA}:abc", f"--lora: the scale after {LORA}: must be a finite number, got 'abc'"),
    (f"{LORA}:", f"--lora: the scale after {LORA}: must be a finite number, got ''"),
    (f"{LORA}:nan", f"--lora: the scale after {LORA}: must be a finite number, got 'nan'"),
    (f"{LORA}:inf", f"--lora: the scale after {LORA}: must be a finite number, got 'inf'"),
])
def test_lora_scale_on_the_command_line(capsys, tmp_path, spec, message):
    code, line = cli(capsys, "generate", "--image", IMAGE, "--prompt", "a", *FAST, "--lora", spec,
                     "--out", tmp_path / "v.gif")
    assert code == 2 and line == f"i2vgen: error: {message}" and list(tmp_path.iterdir()) == []


def test_lora_weights_and_scales_through_the_api(pipe):
    name = pipe.load_lora_weights(LORA)
    try:
        with pytest.raises(ValueError, match=r"^adapter_weights\[0\] must be a finite number, got nan$"):
            pipe.set_adapters([name], [float("nan")])
        with pytest.raises(ValueError, match=r"^lora_scale must be a finite number, got inf$"):
            pipe.fuse_lora(lora_scale=float("inf"))
        with pytest.raises(ValueError, match=r"^cross_attention_kwargs\['scale'\] must be a finite number, got nan$"):
            call(pipe, cross_attention_kwargs={"scale": float("nan")})
    finally:
        pipe.unload_lora_weights()


# ---- endless waits ----

def test_image_that_is_a_fifo_is_refused(capsys, tmp_path):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    code, line = cli(capsys, "generate", "--image", fifo, "--prompt", "a", *FAST, "--out", tmp_path / "v.gif")
    assert (code, line) == (2, f"i2vgen: error: --image: {fifo} is not a regular file; give an image file")


def test_weights_file_that_is_a_fifo_is_refused(capsys, tmp_path):
    import shutil

    model = Path(shutil.copytree(TINY, tmp_path / "model"))
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    code, line = cli(capsys, "generate", "--model", model, "--image", IMAGE, "--prompt", "a", *FAST,
                     "--out", tmp_path / "v.gif")
    assert code == 1 and line == (f"i2vgen: error: {weights} is not a regular file (a pipe, socket or device); "
                                  f"model files must be regular files")


JOIN_ALONE = textwrap.dedent("""
    import datetime, sys
    from i2vgen import distributed
    distributed.JOIN_TIMEOUT = datetime.timedelta(seconds=2)  # 5 minutes in earnest
    from i2vgen.apps.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_world_size_left_in_a_single_process_environment_times_out(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(IMAGE), "prompt": "a", "out": "v.gif"}) + "\n")
    result = subprocess.run([sys.executable, "-c", JOIN_ALONE, "generate", "--jobs", jobs, "--out-dir",
                             tmp_path / "videos", *FAST], capture_output=True, text=True, timeout=120, env=env)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith(
        "i2vgen: error: WORLD_SIZE is 2, but the other processes did not join within 2 s ("), last
    assert last.endswith("start the run with torchrun, or unset WORLD_SIZE for a single process")
    assert not (tmp_path / "videos" / "v.gif").exists()


# ---- job files ----

def test_job_file_types_nul_bytes_and_no_empty_failures_file(capsys, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    out = tmp_path / "videos"
    good = {"image": str(IMAGE), "prompt": "a", "out": "good.gif"}
    jobs.write_text("".join(json.dumps(job) + "\n" for job in
                            [good | {"steps": True, "out": "a.gif"}, good | {"out": "b\0.gif"}, good]))
    assert main(["generate", "--jobs", str(jobs), "--out-dir", str(out), *FAST]) == 1
    reasons = [json.loads(line)["reason"] for line in (out / "failures.jsonl").read_text().splitlines()]
    assert reasons == ["argument --steps: invalid int value: true", '"out" holds a NUL character']
    assert (out / "good.gif").is_file()
    jobs.write_text(json.dumps(good | {"out": "other.gif"}) + "\n")  # a clean run: no failures file, not even empty
    assert main(["generate", "--jobs", str(jobs), "--out-dir", str(out), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["good.gif", "other.gif"]


# ---- the sampler's options, before loading ----

@pytest.mark.parametrize("args, message", [
    (["--steps", "1000"], "--steps 1000 with leading spacing and steps_offset 1 would start at timestep 1000, past "
                          "the last train step 999; use at most 999 steps"),
    (["--scheduler", "ddim:steps_offset=-5"], "--scheduler ddim: steps_offset must be between 0 and 999, got -5"),
])
def test_sampler_options_are_named_before_loading(capsys, tmp_path, monkeypatch, args, message):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("i2vgen.apps.cli.load_pipeline", no_loading)
    code, line = cli(capsys, "generate", "--image", IMAGE, "--prompt", "a", *FAST, *args, "--out", tmp_path / "v.gif")
    assert (code, line) == (2, f"i2vgen: error: {message}") and list(tmp_path.iterdir()) == []


# ---- model configs ----

@pytest.mark.parametrize("key, value, message", [
    ("block_out_channels", [-8, 16], "block_out_channels must be positive integers, got (-8, 16)"),
    ("attention_head_dim", 0, "attention_head_dim must be one int dividing every block_out_channels"),
])
def test_unet_config_values_name_the_file(tmp_path, key, value, message):
    import shutil

    from i2vgen import I2VGenXLUNet

    folder = Path(shutil.copytree(TINY / "unet", tmp_path / "unet"))
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    if key == "block_out_channels":
        config["down_block_types"], config["up_block_types"] = config["down_block_types"][:2], config["up_block_types"][:2]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        I2VGenXLUNet.from_pretrained(folder)
    assert str(error.value).startswith(f"{folder / 'config.json'}: {message}"), error.value


def test_config_json_that_is_a_folder(tmp_path):
    import shutil

    from i2vgen import I2VGenXLUNet

    folder = Path(shutil.copytree(TINY / "unet", tmp_path / "unet"))
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    with pytest.raises(ValueError, match=f"^{folder / 'config.json'} is not a regular file .*it must be a JSON file$"):
        I2VGenXLUNet.from_pretrained(folder)


# ---- the API's types ----

def _recorder():
    seen = []
    return seen, lambda pipe, i, t, kwargs: seen.append(kwargs["latents"].clone()) or None


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt=None, prompt_embeds=torch.zeros(16, 32)), ValueError,
     "prompt_embeds must be (prompts, tokens, 32) as the text encoder makes them, got shape (16, 32)"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 1, 16, 32)), ValueError,
     "prompt_embeds must be (prompts, tokens, 32) as the text encoder makes them, got shape (1, 1, 16, 32)"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 7)), ValueError,
     "prompt_embeds must be (prompts, tokens, 32) as the text encoder makes them, got shape (1, 16, 7)"),
    (dict(prompt=None, prompt_embeds=[[0.0]]), TypeError, "prompt_embeds must be a torch.Tensor, got list"),
    (dict(prompt=None, prompt_embeds=torch.full((1, 16, 32), float("nan"))), ValueError,
     "prompt_embeds holds NaN or infinite values"),
    (dict(latents=np.zeros((1, 4, 2, 4, 4), np.float32)), TypeError, "latents must be a torch.Tensor, got ndarray"),
    (dict(latents=[0.0]), TypeError, "latents must be a torch.Tensor, got list"),
    (dict(latents=torch.full((1, 4, 2, 4, 4), float("inf"))), ValueError, "latents holds NaN or infinite values"),
    (dict(generator=5), TypeError, "generator must be a torch.Generator or a list of them, got 5"),
    (dict(generator="seed"), TypeError, "generator must be a torch.Generator or a list of them, got 'seed'"),
    (dict(callback_on_step_end=3), TypeError, "callback_on_step_end must be a function, got 3"),
    (dict(callback_on_step_end=lambda pipe, i, t, kw: kw["latents"]), TypeError,
     "callback_on_step_end must return None or a dict such as {'latents': latents}, got Tensor"),
    (dict(image=PIL.Image.new("RGB", (0, 0))), ValueError, "image has size 0x0; it must be at least 1x1 pixel"),
])
def test_api_types_are_named(pipe, kwargs, error, message):
    with pytest.raises(error) as raised:
        call(pipe, **kwargs)
    assert str(raised.value) == message


def seeded_call(pipe, **kwargs):
    torch.manual_seed(0)  # the first frame's latents come from the global RNG
    return call(pipe, **kwargs)


def test_float64_latents_are_used_as_float32(pipe):
    latents = torch.randn(1, 4, 2, 4, 4, generator=torch.manual_seed(0))
    assert np.array_equal(seeded_call(pipe, latents=latents.double()), seeded_call(pipe, latents=latents))


def test_eta_with_one_generator_per_video(pipe):
    """Valid input the reference fails on: each video's DDIM noise comes from its own generator, so the first
    video is the one made alone with its generator."""
    both = seeded_call(pipe, eta=0.5, num_inference_steps=2, num_videos_per_prompt=2,
                       generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    alone = seeded_call(pipe, eta=0.5, num_inference_steps=2, generator=[torch.Generator().manual_seed(1)])
    # The first video (the second takes the image's second VAE posterior sample, from the global RNG); batch 2
    # against batch 1 changes only float32 summation order (conftest.SCHEDULING_ATOL's note: up to 2e-5).
    assert np.abs(both[0] - alone[0]).max() < 2e-5 and np.abs(both[0] - both[1]).max() > 0.01


def test_meta_device_none_model_and_freeu_values(pipe):
    with pytest.raises(ValueError, match="^device 'meta' holds no data"):
        pipe.to("meta")
    assert pipe.device.type == "cpu"
    with pytest.raises(TypeError, match="^pretrained_model_name_or_path must be a folder or a hub id"):
        I2VGenXLPipeline.from_pretrained(None)
    with pytest.raises(ValueError, match="^b1 must be a finite number, got nan$"):
        pipe.enable_freeu(s1=0.9, s2=0.2, b1=float("nan"), b2=1.4)


@pytest.mark.parametrize("name", ["ddim", "unipc", "dpm++", "euler"])
def test_scheduler_step_with_mismatched_shapes(pipe, name):
    from i2vgen.schedulers import by_name

    scheduler = by_name(name, pipe.scheduler.config)
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match=r"^step: model_output has shape \(1, 4, 8, 8\) but sample has \(2, 4, 8, 8\); "
                                         r"they must match$"):
        scheduler.step(torch.zeros(1, 4, 8, 8), scheduler.timesteps[0], torch.zeros(2, 4, 8, 8))
