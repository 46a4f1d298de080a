"""Motion from dense optical flow computed without learned weights: OpenCV's Farneback method (Farneback 2003,
"Two-frame motion estimation based on polynomial expansion"; `pip install 'i2vgen[eval]'`).

VBench measures motion with learned networks (RAFT optical flow for dynamic degree, the AMT frame interpolator
for motion smoothness); these are the weights-free stand-ins, documented in docs/evaluation.md.
Videos are (F, H, W, C) arrays in [0, 1]; flow is in pixels per frame, (x, y) with y pointing down.
"""

import numpy as np

# Farneback settings: OpenCV's documented example values (pyramid scale 0.5, 3 levels, 15 px averaging window,
# 3 iterations, polynomial neighbourhood 5 with sigma 1.2), never tuned on the videos evaluated.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("motion metrics need OpenCV: pip install 'i2vgen[eval]' (opencv-python-headless)") from None
    return cv2


def _gray_uint8(frame: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] -> (H, W) uint8 luma (ITU-R BT.601 weights, as OpenCV's RGB2GRAY)."""
    frame = np.asarray(frame, dtype=np.float64)
    gray = frame @ np.array([0.299, 0.587, 0.114]) if frame.shape[-1] == 3 else frame.mean(axis=-1)
    return np.round(np.clip(gray, 0, 1) * 255).astype(np.uint8)


def optical_flow(video) -> np.ndarray:
    """Dense Farneback flow from each frame to the next: (F - 1, H, W, 2), pixels per frame."""
    video = np.asarray(video)
    if video.ndim != 4 or len(video) < 2:
        raise ValueError(f"optical_flow needs a video (F, H, W, C) of at least 2 frames, got {video.shape}")
    cv2 = _cv2()
    gray = [_gray_uint8(frame) for frame in video]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(gray[:-1], gray[1:])])


def motion_magnitude(flow) -> float:
    """Mean length of the flow vectors, over frames and pixels: pixels per frame (0 for a static video)."""
    return float(np.linalg.norm(np.asarray(flow, dtype=np.float64), axis=-1).mean())


def motion_acceleration(flow) -> float:
    """Mean length of the change of flow from one frame pair to the next, at each pixel: pixels per frame^2.
    0 for motion at constant velocity; large for jerky motion. Lower is smoother (VBench's motion smoothness,
    from a learned frame interpolator, is another measure of the same quality, higher being smoother)."""
    flow = np.asarray(flow, dtype=np.float64)
    if len(flow) < 2:
        raise ValueError(f"motion_acceleration needs the flow of at least 3 frames, got {len(flow) + 1} frames")
    return float(np.linalg.norm(np.diff(flow, axis=0), axis=-1).mean())


def dynamic_degree(flow) -> bool:
    """VBench's dynamic degree (vbench/dynamic_degree.py) on the given flow: a frame pair moves when the mean of
    its largest 5 % flow lengths exceeds 6 px scaled by min(H, W) / 256; the video is dynamic when at least
    round(4 F / 16) pairs move (F frames; VBench first subsamples to about 8 fps, which this leaves to the caller)."""
    flow = np.asarray(flow, dtype=np.float64)
    lengths = np.sort(np.linalg.norm(flow, axis=-1).reshape(len(flow), -1), axis=1)[:, ::-1]
    top = lengths[:, : int(lengths.shape[1] * 0.05)].mean(axis=1)
    threshold = 6.0 * min(flow.shape[1:3]) / 256.0
    return bool((top > threshold).sum() >= round(4 * (len(flow) + 1) / 16))
