"""TensorBoard logging of a training run (`"tensorboard": true`; `pip install 'i2vgen[tensorboard]'`).

<output_dir>/tensorboard/ gets the loss and learning rate of every step, the validation metrics, the validation
grid as an image, and each validation video as an animated GIF in an image summary (what TensorBoard shows as
a video; torch's `add_video` makes the same summary but needs moviepy to encode the GIF).
"""

import io

import numpy as np
import PIL.Image


def open_writer(folder):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("\"tensorboard\": true needs TensorBoard: pip install 'i2vgen[tensorboard]'") from None
    return SummaryWriter(str(folder))


def gif_summary(tag: str, video: np.ndarray, fps: int = 8):
    """An image summary holding `video` (F, H, W, 3) in [0, 1] as an animated GIF."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = [PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in video]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
    height, width = video.shape[1:3]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def log_validation(writer, step: int, metrics: dict, names: list[str], videos: list[np.ndarray], grid: np.ndarray):
    for key, value in metrics.items():
        writer.add_scalar(f"validation/{key}", value, step)
    writer.add_image("validation/grid", grid, step, dataformats="HWC")
    for name, video in zip(names, videos):
        writer._get_file_writer().add_summary(gif_summary(f"validation/{name}", video), step)
    writer.flush()
