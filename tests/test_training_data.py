"""Your own clips: the folder layouts, decoding, windows and fps, buckets, and every bad-data case.

Expected values come from how the clips are written here (frame counts, frame rates, sizes) and from the
definitions in windows.py and buckets.py (VGen's stride = round(clip fps / target fps))."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import DEMO_MODEL, write_metadata, write_mp4

from i2vgen.training.buckets import Bucket, nearest_bucket, parse_buckets
from i2vgen.training.config import TrainConfig
from i2vgen.training.train import main
from i2vgen.training.video_folder import Clip, ClipError, read_frames, scan_folder
from i2vgen.training.windows import Window, stride_for, window

# ---- layouts and decoding ----

@pytest.mark.parametrize("layout", ["metadata.csv", "metadata.jsonl", "txt"])
def test_the_three_layouts_give_the_same_clips(tmp_path, layout):
    write_mp4(tmp_path / "a.mp4", 6, 8)
    write_mp4(tmp_path / "b.mp4", 6, 24)
    captions = {"a.mp4": "a red circle moving left", "b.mp4": "a blue square growing"}
    if layout == "txt":
        for name, text in captions.items():
            (tmp_path / name).with_suffix(".txt").write_text(text + "\n")
    else:
        write_metadata(tmp_path, [{"file_name": k, "text": v} for k, v in captions.items()], layout)
    clips, problems = scan_folder(tmp_path)
    assert problems == []
    assert {c.path.name: c.caption for c in clips} == captions


def test_decoding_gives_every_frame_at_the_file_rate(tmp_path):
    frames, fps = read_frames(Clip(write_mp4(tmp_path / "a.mp4", 10, 12), "x"))
    assert fps == 12 and len(frames) == 10 and frames[0].size == (32, 32)
    levels = [np.asarray(f).mean() for f in frames]
    np.testing.assert_allclose(levels, 8 * np.arange(10), atol=2)  # lossless H.264; yuv rounding only


def test_metadata_overrides_fps_and_picks_a_time_range(tmp_path):
    write_mp4(tmp_path / "a.mp4", 24, 24)
    write_metadata(tmp_path, [{"file_name": "a.mp4", "text": "x", "fps": 12, "start": 0.5, "end": 1.0}])
    (clip,), _ = scan_folder(tmp_path)
    frames, fps = read_frames(clip)
    # At the overridden 12 fps, frame k is at k / 12 s: frames 6..11 fall in [0.5, 1.0).
    assert fps == 12 and len(frames) == 6
    assert np.asarray(frames[0]).mean() == pytest.approx(8 * 6, abs=2)


def test_a_folder_of_frames_is_a_clip(tmp_path):
    (tmp_path / "clip").mkdir()
    for k in range(5):
        PIL.Image.new("RGB", (16, 24), (10 * k,) * 3).save(tmp_path / "clip" / f"{k:03d}.png")
    write_metadata(tmp_path, [{"file_name": "clip", "text": "x", "fps": 10}])
    (clip,), _ = scan_folder(tmp_path)
    frames, fps = read_frames(clip)
    assert fps == 10 and [np.asarray(f)[0, 0, 0] for f in frames] == [0, 10, 20, 30, 40]


# ---- windows and fps ----

def test_stride_is_the_rounded_rate_ratio():
    assert stride_for(100, 24, 8, 8) == 3 and stride_for(100, 24, 12, 8) == 2 and stride_for(100, 8, 24, 8) == 1
    assert stride_for(100, 30, 8, 8) == 4  # round(3.75)
    assert stride_for(10, 24, 8, 4) == 3  # 3 strides of 3 + 1 = 10 frames: fits exactly
    assert stride_for(9, 24, 8, 4) == 2  # one frame short: the largest stride that fits
    assert stride_for(3, 24, 8, 4) is None  # shorter than the window


def test_the_fps_condition_is_the_rate_of_the_frames_read():
    assert window(48, 24, 8, 8, 0.0) == Window(0, 3, 8)
    assert window(48, 24, 24, 8, 0.0) == Window(0, 1, 24)
    assert window(12, 12, 8, 8, 0.0) == Window(0, 1, 12)  # too short for stride 2: read at 12 fps
    # Starts are uniform over the positions that fit: 48 - 7 * 3 = 27 of them.
    assert window(48, 24, 8, 8, 0.999).start == 26
    assert list(Window(2, 3, 8).indices(4)) == [2, 5, 8, 11]


# ---- buckets ----

def test_each_clip_goes_to_the_bucket_nearest_its_aspect_ratio():
    buckets = parse_buckets([[32, 32, 8], [48, 32, 8], [32, 64, 8]])
    assert nearest_bucket(buckets, 1280, 720) == 2  # 16:9 -> 2:1
    assert nearest_bucket(buckets, 720, 1280) == 1  # 9:16 -> 2:3 (portrait)
    assert nearest_bucket(buckets, 500, 480) == 0
    assert buckets[1] == Bucket(48, 32, 8) and buckets[1].aspect == pytest.approx(2 / 3)


@pytest.mark.parametrize("value, message", [([[30, 32, 8]], "multiples of 8"), ([[32, 32]], r"\[height, width, frames\]"),
                                            ([], "at least one bucket"), ([[32, 32, 1]], "frames at least 2")])
def test_bad_buckets_are_one_line(value, message):
    with pytest.raises(ValueError, match=message):
        parse_buckets(value)


# ---- bad data: one line each, naming the file ----

def _one_problem(folder: Path) -> str:
    clips, problems = scan_folder(folder)
    assert len(problems) == 1 and "\n" not in problems[0]
    return problems[0]


def test_a_metadata_row_naming_a_missing_file(tmp_path):
    write_metadata(tmp_path, [{"file_name": "gone.mp4", "text": "x"}])
    assert "gone.mp4" in _one_problem(tmp_path) and "does not exist" in _one_problem(tmp_path)


def test_an_empty_caption(tmp_path):
    write_mp4(tmp_path / "a.mp4", 4, 8)
    write_metadata(tmp_path, [{"file_name": "a.mp4", "text": "  "}])
    assert "a.mp4" in _one_problem(tmp_path) and "caption" in _one_problem(tmp_path)
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "a.txt").write_text("\n")
    assert "a.txt" in _one_problem(tmp_path) and "empty" in _one_problem(tmp_path)


def test_a_clip_without_a_caption_file(tmp_path):
    write_mp4(tmp_path / "a.mp4", 4, 8)
    assert "a.txt" in _one_problem(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_and_truncated_videos(tmp_path, damage):
    path = write_mp4(tmp_path / "a.mp4", 30, 8, size=(64, 64))
    data = path.read_bytes()
    path.write_bytes(b"not a video at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ClipError) as error:
        read_frames(Clip(path, "x"))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_clip_with_no_frames(tmp_path):
    write_mp4(tmp_path / "a.mp4", 8, 8)
    with pytest.raises(ClipError, match="a.mp4: has no frames in the asked time range"):
        read_frames(Clip(tmp_path / "a.mp4", "x", start=5.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipError, match="empty: has no frames"):
        read_frames(Clip(tmp_path / "empty", "x", fps=8))


def test_bad_metadata_values_and_files(tmp_path):
    write_mp4(tmp_path / "a.mp4", 4, 8)
    write_metadata(tmp_path, [{"file_name": "a.mp4", "text": "x", "fps": "fast"}])
    assert "fps must be a number" in _one_problem(tmp_path) and "metadata.csv line 2" in _one_problem(tmp_path)
    write_metadata(tmp_path, [{"file_name": "a.mp4"}])
    with pytest.raises(ValueError, match=r"metadata.csv: needs the columns file_name and text; missing \['text'\]"):
        scan_folder(tmp_path)
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.mp4", "text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="metadata.jsonl: line 2 is not JSON"):
        scan_folder(tmp_path)


def test_a_folder_with_no_clips(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(ValueError, match="has no clips"):
        scan_folder(tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        scan_folder(tmp_path / "nowhere")


# ---- through i2vgen train: one line, exit 2 ----

def _run_train(config: dict, tmp_path, *extra) -> tuple[int, str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config | {"model": str(DEMO_MODEL)}))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--config", str(path), *extra])
    return code, err.getvalue()


def test_data_errors_through_the_command(tmp_path):
    (tmp_path / "data").mkdir()
    code, err = _run_train({"output_dir": str(tmp_path / "run"),
                            "data_dir": str(tmp_path / "data")}, tmp_path)
    assert code == 2 and err.strip().endswith("has no clips: expected a metadata.csv or metadata.jsonl (file_name,text) "
                                              "or video files (.mp4, .webm, .mov, .mkv, .gif) or folders of frames "
                                              "with a same-name .txt caption")
    assert err.count("\n") == 1 and "Traceback" not in err
    code, err = _run_train({"output_dir": str(tmp_path / "run"),
                            "buckets": [[64, 60, 8]]}, tmp_path)
    assert code == 2 and "config.json: buckets: bucket [64, 60, 8]: height and width must be positive multiples of 8" in err
    code, err = _run_train({"output_dir": str(tmp_path / "run")}, tmp_path, "--encode-only")
    assert code == 2 and "--encode-only needs a data_dir" in err


def test_the_demo_configs_read_mp4_files_with_data_dir():
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    full, lora = (TrainConfig.from_json(scripts / name) for name in ("train_demo_clips.json", "train_demo_clips_lora.json"))
    assert full.data_dir == lora.data_dir == "runs/demo-clips" and full.sample_fps == (8, 12, 16, 24)
    assert full.lora is None and "fps_embedding.0" in lora.lora["target_modules"]
    assert "scripts/demo_clips.py --out runs/demo-clips" in (scripts / "train_demo_clips.sh").read_text()
