"""`i2vgen generate` on the embedded tiny model: output, messages, and one-line errors."""

import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

from i2vgen.apps.cli import main

IMAGE = Path(__file__).resolve().parent.parent / "assets" / "landscape.png"
FAST = ["--steps", "2", "--frames", "3", "--height", "32", "--width", "32", "--seed", "1"]


def generate(*args):
    return main(["generate", "--image", str(IMAGE), "--prompt", "a house", *FAST, *args])


def test_generate_gif_on_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "v.gif"
    assert generate("--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "weights/tiny-demo" in captured.err and "tiny demo" in captured.err
    assert f"Wrote {out} (3 frames, 32x32, 16 fps, seed 1)" in captured.out
    with PIL.Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif"]


def test_generate_is_reproducible_with_a_seed(tmp_path):
    paths = [tmp_path / "a.gif", tmp_path / "b.gif"]
    for path in paths:
        assert generate("--out", str(path)) == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()


def error_of(capsys, *args, image=IMAGE, prompt="a house"):
    code = main(["generate", "--image", str(image), "--prompt", prompt, *FAST, *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1]


@pytest.mark.parametrize("args, message", [
    (["--height", "30"], "--height must be a positive multiple of 8"),
    (["--frames", "0"], "--frames must be at least 1"),
    (["--out", "video.avi"], "--out must end in .gif or .mp4"),
    (["--out", "no/such/folder/v.gif"], "output folder does not exist"),
    # long videos (FreeNoise) and prompt changes
    (["--prompt-at", "0:a tree"], "--prompt-at must be FRAME:TEXT with FRAME from 1 to 2 (frame 0 is --prompt's)"),
    (["--prompt-at", "a tree"], "--prompt-at must be FRAME:TEXT"),
    (["--prompt-at", "1:a", "--prompt-at", "1:b"], "--prompt-at gives frame 1 twice"),
    (["--prompt-interpolation", "cubic"], "--prompt-interpolation must be one of linear, hold"),
    (["--context-length", "0"], "--context-length must be a positive int"),
    (["--context-stride", "20"], "--context-stride (20) must be at most context_length (16)"),
    (["--weighting-scheme", "linear"], "--weighting-scheme must be one of flat, pyramid, delayed_reverse_sawtooth"),
    (["--noise-type", "fresh"], "--noise-type must be one of shuffle_context, repeat_context, random"),
])
def test_bad_arguments(capsys, args, message):
    code, line = error_of(capsys, *args)
    assert code == 2 and line.startswith("i2vgen: error:") and message in line


def test_unreadable_and_missing_images(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, line = error_of(capsys, "--out", str(tmp_path / "v.gif"), image=text)
    assert code == 2 and line.startswith(f"i2vgen: error: cannot read image {text}")
    code, line = error_of(capsys, "--out", str(tmp_path / "v.gif"), image=tmp_path / "missing.png")
    assert code == 2 and line == f"i2vgen: error: image not found: {tmp_path / 'missing.png'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png"]


def test_fast_and_scheduler(tmp_path, capsys):
    small = ["--frames", "2", "--height", "32", "--width", "32", "--seed", "1"]
    assert main(["generate", "--image", str(IMAGE), "--prompt", "a house", "--fast", *small,
                 "--out", str(tmp_path / "fast.gif")]) == 0
    assert "Sampler: fast, 15 steps, cached" in capsys.readouterr().err
    assert generate("--scheduler", "unipc:solver_order=3,solver_type=bh1", "--out", str(tmp_path / "u.gif")) == 0
    assert "Sampler: unipc, 2 steps" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "plms"], "--scheduler: unknown name 'plms'; choose one of ddim, unipc, dpm++"),
    (["--scheduler", "unipc:solver_oder=3"], "--scheduler: unipc has no option 'solver_oder'; its options are"),
    (["--scheduler", "euler:3"], "--scheduler: option '3' is not KEY=VALUE"),
    (["--fast", "--scheduler", "unipc"], "--fast picks its own sampler: leave out --scheduler"),
    (["--scheduler", "dpm++", "--eta", "0.5"], "--eta applies only to the ddim scheduler, not dpm++"),
])
def test_bad_scheduler_arguments(capsys, args, message):
    code, line = error_of(capsys, *args)
    assert code == 2 and line.startswith("i2vgen: error:") and message in line


def test_bad_scheduler_option_value_is_one_line(tmp_path, capsys):
    code, line = error_of(capsys, "--scheduler", "dpm++:solver_order=5", "--out", str(tmp_path / "v.gif"))
    assert code == 2 and line == "i2vgen: error: --scheduler dpm++: unknown solver_order 5; choose one of (1, 2, 3)"


def test_missing_model_folder(tmp_path, capsys):
    code, line = error_of(capsys, "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "v.gif"))
    assert code == 1 and line == f"i2vgen: error: model folder not found: {tmp_path / 'nothing'}"


def test_ctrl_c_leaves_no_video(tmp_path, capsys, monkeypatch):
    def interrupted(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"GIF89a partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(PIL.Image.Image, "save", interrupted)
    code, line = error_of(capsys, "--out", str(tmp_path / "v.gif"))
    assert code == 130 and "interrupted" in line
    assert list(tmp_path.iterdir()) == []


def test_help_through_the_entry_module():
    result = subprocess.run([sys.executable, "-m", "i2vgen.apps.cli", "generate", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--image", "--prompt", "--model", "--negative-prompt", "--steps", "--guidance", "--frames",
                 "--fps", "--height", "--width", "--seed", "--eta", "--dtype", "--device", "--out", "--scheduler",
                 "--fast"):
        assert flag in result.stdout


def test_train_subcommand_reaches_the_training_module(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "usage: i2vgen train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # --config is required
        main(["train"])
    assert exit_info.value.code == 2


# ---- long videos (FreeNoise) and prompts that change over time ----

def test_free_noise_and_prompt_changes_on_the_command_line(tmp_path):
    """--free-noise and --prompt-at make the video the pipeline makes with the same options."""
    import numpy as np
    import torch

    from i2vgen import I2VGenXLPipeline
    from i2vgen.apps.render import EMBEDDED_MODEL
    from i2vgen.pipelines.prompt_schedule import hold

    out = tmp_path / "long.gif"
    assert generate("--frames", "7", "--free-noise", "--context-length", "4", "--context-stride", "2",
                    "--weighting-scheme", "flat", "--noise-type", "repeat_context", "--prompt-at", "3: a tree",
                    "--prompt-interpolation", "hold", "--out", str(out)) == 0
    pipe = I2VGenXLPipeline.from_pretrained(EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_free_noise(4, 2, "flat", "repeat_context", prompt_interpolation_callback=hold)
    torch.manual_seed(1)
    frames = pipe(prompt={0: "a house", 3: "a tree"}, image=PIL.Image.open(IMAGE), height=32, width=32,
                  num_frames=7, num_inference_steps=2, generator=torch.manual_seed(1), output_type="pil").frames[0]
    with PIL.Image.open(out) as gif:
        assert gif.n_frames == 7
        gif.seek(6)
        shown = np.asarray(gif.convert("RGB"), dtype=int)
    # the GIF's palette quantises: compare with the frame written through the same exporter
    from i2vgen.video import export_to_gif
    export_to_gif(frames, tmp_path / "api.gif", fps=16)
    with PIL.Image.open(tmp_path / "api.gif") as gif:
        gif.seek(6)
        assert np.array_equal(shown, np.asarray(gif.convert("RGB"), dtype=int))


def test_job_file_keys_for_long_videos(tmp_path):
    """Job files take the same options: "prompt_at" as a list of FRAME:TEXT strings (or one string)."""
    from i2vgen.apps.jobs import job_request
    from i2vgen.apps.render import UsageError, VideoRequest

    defaults = VideoRequest(image=str(IMAGE), frames=24)
    job = {"prompt": "p", "out": "a.gif", "free_noise": True, "context_length": 8, "prompt_at": ["8: q", "16:r"]}
    request = job_request(job, defaults, tmp_path)
    assert request.free_noise and request.context_length == 8
    assert request.prompt_schedule() == {0: "p", 8: "q", 16: "r"}
    assert job_request(job | {"prompt_at": "8:q"}, defaults, tmp_path).prompt_schedule() == {0: "p", 8: "q"}
    with pytest.raises(UsageError, match="argument --prompt-at: expected a string or a list of strings"):
        job_request(job | {"prompt_at": [8]}, defaults, tmp_path)
    with pytest.raises(UsageError, match="--prompt-at must be FRAME:TEXT with FRAME from 1 to 23"):
        job_request(job | {"prompt_at": ["30:q"]}, defaults, tmp_path)
