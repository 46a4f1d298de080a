"""Which frames of a clip one sample uses, and at what frame rate, as VGen samples them.

VGen (tools/datasets/video_dataset.py) reads `max_frames` frames with a stride of round(clip fps / sample fps)
from a random start. Here the fps micro-condition of the sample is the rate of the frames it actually got,
clip fps / stride, so the model sees real clips at the rate each one really plays at and learns what the
condition means. A clip too short for `num_frames` at that stride is read with the largest stride that fits
(a higher frame rate); one shorter than `num_frames` frames cannot be used at all.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start: int
    stride: int
    fps: int  # the micro-condition: the frame rate of the sampled frames, rounded

    def indices(self, num_frames: int) -> range:
        return range(self.start, self.start + (num_frames - 1) * self.stride + 1, self.stride)


def stride_for(clip_frames: int, clip_fps: float, target_fps: float, num_frames: int) -> int | None:
    """round(clip fps / target fps), at least 1, lowered until `num_frames` frames fit; None if none fit."""
    stride = max(1, round(clip_fps / target_fps))
    while stride > 1 and (num_frames - 1) * stride + 1 > clip_frames:
        stride -= 1
    return stride if num_frames <= clip_frames else None


def window(clip_frames: int, clip_fps: float, target_fps: float, num_frames: int, u: float) -> Window:
    """The window for a uniform draw u in [0, 1): its start is uniform over the positions that fit."""
    stride = stride_for(clip_frames, clip_fps, target_fps, num_frames)
    if stride is None:
        raise ValueError(f"a clip of {clip_frames} frames is shorter than a window of {num_frames}")
    starts = clip_frames - (num_frames - 1) * stride
    return Window(min(int(u * starts), starts - 1), stride, round(clip_fps / stride))
