"""i2vgen.utils: the reference documentation's example through our helpers, load_image's sources and errors."""

import functools
import http.server
import socket
import threading
from pathlib import Path

import PIL.Image
import pytest
import torch

from i2vgen import I2VGenXLPipeline
from i2vgen.utils import export_to_gif, export_to_video, load_image

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "landscape.png"


@pytest.fixture
def served(tmp_path):
    """A local http server on tmp_path (no network needed): yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_reference_docs_example_on_the_tiny_demo(tmp_path, served):
    """The reference's EXAMPLE_DOC_STRING with the import changed, the hub id replaced by the tiny demo, the image
    URL by a local server, and a small size and step count so it runs in seconds."""
    PIL.Image.open(IMAGE).save(tmp_path / "img_0009.png")
    pipeline = I2VGenXLPipeline.from_pretrained(ROOT / "weights" / "tiny-demo")
    pipeline.set_progress_bar_config(disable=True)
    image_url = f"{served}/img_0009.png"
    image = load_image(image_url).convert("RGB")
    prompt = "Papers were floating in the air on a table in the library"
    negative_prompt = "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static"
    generator = torch.manual_seed(8888)
    with pytest.warns(UserWarning, match="truncated"):  # the tiny demo's CLIP takes 16 tokens
        frames = pipeline(prompt=prompt, image=image, num_inference_steps=2, negative_prompt=negative_prompt,
                          guidance_scale=9.0, generator=generator, height=32, width=32, num_frames=3).frames[0]
    video_path = export_to_gif(frames, str(tmp_path / "i2v.gif"))
    with PIL.Image.open(video_path) as gif:
        assert gif.n_frames == 3 and gif.size == (32, 32)


def test_load_image_applies_exif_orientation_and_rgb(tmp_path):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    PIL.Image.new("RGBA", (40, 20), (255, 0, 0, 128)).save(tmp_path / "tall.png", exif=exif)
    image = load_image(tmp_path / "tall.png")
    assert image.size == (20, 40) and image.mode == "RGB"
    gray = load_image(PIL.Image.new("L", (4, 4)), convert_method=lambda im: im.convert("LA"))
    assert gray.mode == "LA"


def test_load_image_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=f"image not found: {tmp_path / 'no.png'}"):
        load_image(str(tmp_path / "no.png"))
    with pytest.raises(ValueError, match="got int"):
        load_image(3)
    with socket.socket() as sock:  # a port nothing listens on: what offline looks like to urllib
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.png"
    with pytest.raises(OSError, match=f"cannot download {url}: .*offline\\?") as error:
        load_image(url)
    assert "\n" not in str(error.value)


def test_export_without_a_path_writes_a_temporary_file():
    frames = [PIL.Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    path = Path(export_to_gif(frames))
    try:
        with PIL.Image.open(path) as gif:
            assert gif.n_frames == 3
    finally:
        path.unlink()
    path = Path(export_to_video(frames, fps=8))
    try:
        assert path.suffix == ".mp4" and path.stat().st_size > 0
    finally:
        path.unlink()
