"""Change over time that is not motion: flicker between frames and colour that drifts over the clip.

Videos are (F, H, W, C) arrays in [0, 1].
"""

import numpy as np


def _video(video, least_frames: int, metric: str) -> np.ndarray:
    video = np.asarray(video, dtype=np.float64)
    if video.ndim != 4 or len(video) < least_frames:
        raise ValueError(f"{metric} needs a video (F, H, W, C) of at least {least_frames} frames, got {video.shape}")
    return video


def temporal_flickering(video) -> float:
    """VBench's temporal flickering (Huang et al. 2024, sec. 3.2; vbench/temporal_flickering.py): one minus the
    mean absolute difference of consecutive frames, (255 - MAE) / 255 on 8-bit frames. 1 for a static video;
    it also falls with real motion, which is why VBench scores it on videos of static scenes only."""
    video = _video(video, 2, "temporal_flickering")
    return float(1.0 - np.abs(np.diff(video, axis=0)).mean())


def colour_shift(video, window: int = 1) -> np.ndarray:
    """Per-channel mean colour of the last `window` frames minus that of the first `window` frames, (C,):
    a blue cast that builds up over the clip shows as a positive last entry on RGB video."""
    video = _video(video, 2, "colour_shift")
    if not 1 <= window <= len(video) // 2:
        raise ValueError(f"colour_shift window must be 1..{len(video) // 2} frames for {len(video)} frames, got {window}")
    return video[-window:].mean(axis=(0, 1, 2)) - video[:window].mean(axis=(0, 1, 2))


def colour_drift(video, window: int = 1) -> float:
    """Length of `colour_shift`: how far the clip's mean colour moves from its start to its end (0 to sqrt(3))."""
    return float(np.linalg.norm(colour_shift(video, window)))
