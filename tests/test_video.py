"""Video export: GIF and MP4 written at the given fps, never half-written."""

import imageio_ffmpeg  # the mp4 extra, which the test extra installs
import numpy as np
import PIL.Image
import pytest

from i2vgen.video import export_to_gif, export_to_video

FRAMES = np.random.default_rng(0).random((5, 32, 48, 3), dtype=np.float32)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_gif_frames_and_rate(tmp_path):
    path = tmp_path / "v.gif"
    assert export_to_gif(FRAMES, path, fps=8) == str(path)
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (48, 32)
        assert gif.info["duration"] in (120, 125)  # 1000 // 8 = 125 ms; GIF stores 10 ms units
    assert leftovers(tmp_path) == ["v.gif"]


def test_gif_accepts_pil_frames(tmp_path):
    frames = [PIL.Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    export_to_gif(frames, tmp_path / "v.gif", fps=4)
    with PIL.Image.open(tmp_path / "v.gif") as gif:
        assert gif.n_frames == 3


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        export_to_gif(FRAMES, tmp_path / "nope" / "v.gif")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_gif_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch, interrupt):
    path = tmp_path / "v.gif"
    path.write_bytes(b"previous video")

    def half_write(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"GIF89a partial")
        raise interrupt()

    monkeypatch.setattr(PIL.Image.Image, "save", half_write)
    with pytest.raises(interrupt):
        export_to_gif(FRAMES, path)
    assert leftovers(tmp_path) == ["v.gif"] and path.read_bytes() == b"previous video"


def test_mp4_frames_and_rate(tmp_path):
    path = tmp_path / "v.mp4"
    export_to_video(FRAMES, path, fps=8)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["fps"] == 8 and tuple(meta["size"]) == (48, 32)
    assert sum(1 for _ in reader) == 5
    assert leftovers(tmp_path) == ["v.mp4"]


def test_interrupted_mp4_leaves_nothing(tmp_path, monkeypatch):

    def interrupted_writer(path, *args, **kwargs):  # ffmpeg's writer protocol: send(None), then frames
        with open(path, "wb") as f:
            f.write(b"partial mp4")
            yield  # started
            yield  # first frame written; Ctrl-C arrives during the second
            raise KeyboardInterrupt

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", interrupted_writer)
    with pytest.raises(KeyboardInterrupt):
        export_to_video(FRAMES, tmp_path / "v.mp4")
    assert leftovers(tmp_path) == []


def test_written_video_has_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = export_to_gif(FRAMES, tmp_path / "v.gif")
    finally:
        os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o644  # not the temp file's private 0600
