"""Writing frames to a GIF (Pillow) or an MP4 (imageio-ffmpeg, the optional `mp4` extra), and reading them back.

Both writers go through a temporary file in the destination folder that is renamed into place only once
it is complete, so an error, Ctrl-C or SIGTERM never leaves a half-written video behind. `check_output_path`
lets a caller find an unwritable destination before a long generation.
"""

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import PIL.Image

__all__ = ["check_output_path", "exit_on_sigterm", "export_to_gif", "export_to_video", "read_video"]


def _to_uint8_frames(frames) -> list[np.ndarray]:
    """PIL images, or float arrays in [0, 1] / uint8 arrays of shape (H, W, 3) -> list of uint8 (H, W, 3)."""
    if len(frames) == 0:
        raise ValueError("no frames to write")
    out = []
    for frame in frames:
        if isinstance(frame, PIL.Image.Image):
            frame = np.asarray(frame.convert("RGB"))
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:
            if not np.isfinite(frame).all():
                raise ValueError("frames hold NaN or infinite values; nothing written")
            frame = (np.clip(frame, 0, 1) * 255).round().astype(np.uint8)
        out.append(frame)
    return out


def _temporary_file(path: Path) -> str:
    """A new empty hidden file next to `path`; errors name `path`, never the temporary name."""
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a folder; give a file name such as {path / ('video' + path.suffix)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    except OSError as error:
        raise PermissionError(f"cannot write {path}: {error.strerror or error}") from None
    os.close(fd)
    return tmp


def check_output_path(path) -> None:
    """Raise now, in one line, if a video could not be written to `path` (a folder, a missing or read-only
    folder): creates and removes an empty hidden file next to it."""
    os.remove(_temporary_file(Path(path)))


def _exit_terminated(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_sigterm():
    """While the block runs, SIGTERM (whose default action kills the process at once, skipping all cleanup)
    exits through Python instead, as SystemExit(128 + 15): temporary files are removed on the way out. Only the
    main thread receives signals; elsewhere this does nothing. The previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _atomic_path(path):
    """Yield a temporary path next to `path`; move it to `path` only if the block finishes."""
    path = Path(path)
    tmp = _temporary_file(path)
    # Unless the program handles SIGTERM itself, make it exit through the cleanup below.
    sigterm = exit_on_sigterm() if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else contextlib.nullcontext()
    try:
        with sigterm:
            yield tmp
            umask = os.umask(0)  # mkstemp made the file private (0600); give it the usual permissions
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except BaseException as error:  # KeyboardInterrupt and SIGTERM too: remove the partial file, then re-raise
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(error, Exception) and tmp in str(error):  # e.g. ffmpeg's message: name the real output
            raise OSError(f"cannot write {path}: {str(error).replace(tmp, str(path))}") from None
        raise


def export_to_gif(frames, output_gif_path, fps: int = 10) -> str:
    """Write `frames` as a looping GIF at `fps` frames per second; returns the path."""
    images = [PIL.Image.fromarray(f) for f in _to_uint8_frames(frames)]
    with _atomic_path(output_gif_path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0
        )
    return str(output_gif_path)


def export_to_video(frames, output_video_path, fps: int = 10, quality: float = 5.0) -> str:
    """Write `frames` as an H.264 MP4 at `fps`; needs `pip install i2vgen[mp4]`. Returns the path."""
    try:
        import imageio_ffmpeg
    except ImportError as error:
        raise ImportError("MP4 export needs imageio-ffmpeg: pip install 'i2vgen[mp4]' (or write a .gif)") from error
    arrays = _to_uint8_frames(frames)
    height, width = arrays[0].shape[:2]
    with _atomic_path(output_video_path) as tmp:
        # macro_block_size 2: H.264 with yuv420p needs even sides; larger blocks would rescale our frames.
        writer = imageio_ffmpeg.write_frames(
            tmp, (width, height), fps=fps, quality=quality, macro_block_size=2, ffmpeg_log_level="error"
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in arrays:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
        _check_written(imageio_ffmpeg, tmp, len(arrays), output_video_path)
    return str(output_video_path)


def _check_written(imageio_ffmpeg, tmp: str, expected: int, path) -> None:
    """imageio-ffmpeg ignores ffmpeg's exit status, so a full disk would leave a cut-off file and no error: read
    the written file back and count its frames."""
    try:
        written, _ = imageio_ffmpeg.count_frames_and_secs(tmp)
    except RuntimeError:  # unreadable: ffmpeg stopped before writing the index
        written = 0
    if written != expected:
        raise OSError(f"cannot write {path}: ffmpeg wrote {written} of {expected} frames (is the disk full?)")


def read_video(path) -> np.ndarray:
    """The frames of a GIF (Pillow; merged identical frames expanded again) or another video file
    (imageio-ffmpeg) as uint8 (F, H, W, 3).
    Raises ValueError in one line naming the file when it cannot be read or holds no frame."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".gif":
            frames = _read_gif(path)
        else:
            frames = _read_with_ffmpeg(path)
    except (OSError, RuntimeError, EOFError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]  # ffmpeg appends its log
        raise ValueError(f"cannot read video {path}: {first_line.removesuffix(' === stderr ===')}") from None
    if not frames:
        raise ValueError(f"cannot read video {path}: no frames")
    return np.stack(frames)


def _read_gif(path: Path) -> list[np.ndarray]:
    """A GIF's frames. Pillow writes a run of identical frames as one frame showing for their summed durations;
    each frame is repeated round(duration / shortest duration) times to undo that (a GIF whose frames were all
    identical keeps one frame: nothing tells how many it had)."""
    frames, durations = [], []
    with PIL.Image.open(path) as gif:
        for index in range(getattr(gif, "n_frames", 1)):
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB")))
            durations.append(gif.info.get("duration") or 0)
    unit = min(durations)
    repeats = [max(1, round(d / unit)) if unit > 0 else 1 for d in durations]
    return [frame for frame, n in zip(frames, repeats) for _ in range(n)]


def _read_with_ffmpeg(path: Path) -> list[np.ndarray]:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ImportError(f"reading {path} needs imageio-ffmpeg: pip install 'i2vgen[mp4]' (GIFs need only Pillow)") from None
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    width, height = next(reader)["size"]
    return [np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader]
