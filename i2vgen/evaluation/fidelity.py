"""Fidelity to a reference: how close generated frames are to the frames they should be.

Frames are arrays in [0, 1] (any float dtype, numpy or anything `np.asarray` takes), videos (F, H, W, C).
"""

import numpy as np


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1]: 10 log10(1 / mse). The mse is floored at
    1e-12, so identical images give 120 dB rather than infinity."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs images of one shape, got {a.shape} and {b.shape}")
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def first_frame_psnr(video, image) -> float:
    """PSNR of the video's first frame against the image it was made from."""
    return psnr(np.asarray(video)[0], image)


def per_frame_psnr(video, reference) -> list[float]:
    """PSNR of each frame against the same frame of a reference clip of equal length."""
    video, reference = np.asarray(video), np.asarray(reference)
    if len(video) != len(reference):
        raise ValueError(f"per_frame_psnr needs videos of one length, got {len(video)} and {len(reference)} frames")
    return [psnr(a, b) for a, b in zip(video, reference)]
