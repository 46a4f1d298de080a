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


def _per_frame(metric, video, reference) -> list[float]:
    """`metric` of each frame against the same frame of a reference clip of equal length."""
    video, reference = np.asarray(video), np.asarray(reference)
    if len(video) != len(reference):
        raise ValueError(f"per-frame {metric.__name__} needs videos of one length, got {len(video)} and "
                         f"{len(reference)} frames")
    return [metric(a, b) for a, b in zip(video, reference)]


def per_frame_psnr(video, reference) -> list[float]:
    """PSNR of each frame against the same frame of a reference clip of equal length."""
    return _per_frame(psnr, video, reference)


# SSIM (Wang, Bovik, Sheikh and Simoncelli 2004, eq. 13) with the paper's constants: an 11x11 Gaussian window of
# standard deviation 1.5, K1 = 0.01, K2 = 0.03, dynamic range L = 1 (images in [0, 1]).
SSIM_WINDOW, SSIM_SIGMA, SSIM_C1, SSIM_C2 = 11, 1.5, 0.01**2, 0.03**2


def _gaussian_filter(x: np.ndarray) -> np.ndarray:
    """Local Gaussian means of the (H, W, C) array `x` over the valid region (no padding), one axis at a time."""
    taps = np.exp(-0.5 * ((np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2) / SSIM_SIGMA) ** 2)
    taps /= taps.sum()
    windows = np.lib.stride_tricks.sliding_window_view
    rows = windows(x, SSIM_WINDOW, axis=0) @ taps  # (H - 10, W, C)
    return windows(rows, SSIM_WINDOW, axis=1) @ taps  # (H - 10, W - 10, C)


def ssim(a, b) -> float:
    """Structural similarity of two (H, W, C) images in [0, 1]: the SSIM map of each channel (eq. 13) averaged
    over positions and channels (the mean SSIM of section III-C), on the valid region of the 11x11 window."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs two (H, W, C) images of one shape, at least {SSIM_WINDOW} px a side; "
                         f"got {a.shape} and {b.shape}")
    mu_a, mu_b = _gaussian_filter(a), _gaussian_filter(b)
    var_a = _gaussian_filter(a * a) - mu_a**2
    var_b = _gaussian_filter(b * b) - mu_b**2
    cov = _gaussian_filter(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
                / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)))
    return float(ssim_map.mean())


def first_frame_ssim(video, image) -> float:
    """SSIM of the video's first frame against the image it was made from."""
    return ssim(np.asarray(video)[0], image)


def per_frame_ssim(video, reference) -> list[float]:
    """SSIM of each frame against the same frame of a reference clip of equal length."""
    return _per_frame(ssim, video, reference)
