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
    assert "Sampler: fast, 15 steps" in capsys.readouterr().err
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
