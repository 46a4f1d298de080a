"""The helpers of `diffusers.utils` that the reference's documentation uses, so its example runs by changing the
import to `from i2vgen.utils import export_to_gif, load_image`:

    image = load_image("https://.../img_0009.png").convert("RGB")
    frames = pipe(prompt=prompt, image=image, generator=torch.manual_seed(8888)).frames[0]
    video_path = export_to_gif(frames, "i2v.gif")

The writers are i2vgen.video's (atomic: no partial file on error); here the output path may be left out, as in
diffusers, for a temporary file.
"""

import io
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import PIL.Image
import PIL.ImageOps

from i2vgen import video

DOWNLOAD_TIMEOUT_S = 10  # as diffusers' DIFFUSERS_REQUEST_TIMEOUT


def load_image(image, convert_method: Callable[[PIL.Image.Image], PIL.Image.Image] | None = None) -> PIL.Image.Image:
    """A PIL image from a local path, an http(s) URL or a PIL image, upright (EXIF orientation applied) and in RGB,
    or converted by `convert_method` instead, as diffusers' load_image."""
    if isinstance(image, (str, Path)):
        source = str(image)
        if source.startswith(("http://", "https://")):
            image = PIL.Image.open(io.BytesIO(_download(source)))
        elif Path(source).is_file():
            image = PIL.Image.open(source)
        else:
            raise ValueError(f"image not found: {source} (give a file path, an http(s):// URL or a PIL image)")
    elif not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image must be a file path, an http(s):// URL or a PIL image, got {type(image).__name__}")
    image = PIL.ImageOps.exif_transpose(image)
    return convert_method(image) if convert_method is not None else image.convert("RGB")


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise OSError(f"cannot download {url}: {reason} (offline? download it elsewhere and pass the file path)") \
            from None


def _output_path(path, suffix: str) -> str:
    if path is not None:
        return str(path)
    with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as file:
        return file.name


def export_to_gif(image, output_gif_path=None, fps: int = 10) -> str:
    """Frames (PIL images, or arrays) as a looping GIF; a temporary file when no path is given. Returns the path."""
    return video.export_to_gif(image, _output_path(output_gif_path, ".gif"), fps=fps)


def export_to_video(video_frames, output_video_path=None, fps: int = 10, quality: float = 5.0) -> str:
    """Frames as an H.264 MP4 (needs i2vgen[mp4]); a temporary file when no path is given. Returns the path."""
    return video.export_to_video(video_frames, _output_path(output_video_path, ".mp4"), fps=fps, quality=quality)
