"""Windowed temporal attention for videos longer than the model was trained on (FreeNoise, Qiu et al. 2024).

The temporal attention layers of a model trained on L-frame clips are asked, on a longer video, to attend over
sequences they have never seen. FreeNoise (sec. 3.3, "window-based attention fusion") lets each layer attend only
within overlapping windows of L frames, `context_stride` frames apart, and fuses the windows' outputs frame by frame
with weights that favour a window's middle (eq. 9):

    out[j] = sum_w weight_w(j) * attention(x[window w])[j] / sum_w weight_w(j)

`FrameWindows` is the one switch: `I2VGenXLUNet.enable_frame_windows` hands the same object to every attention
that runs across frames (the temporal transformers, `transformer_in`, the image-latent temporal encoder), and
`Attention.forward` reads it. Everything else, the temporal convolutions included, sees the whole video.
"""

from dataclasses import dataclass

import torch
from einops import rearrange

WEIGHTING_SCHEMES = ("flat", "pyramid", "delayed_reverse_sawtooth")


def window_weights(length: int, weighting_scheme: str) -> list[float]:
    """Fusion weight of each of a window's `length` frames (diffusers' schemes and values):
    flat [1, 1, 1, 1]; pyramid [1, 2, 2, 1] / [1, 2, 3, 2, 1]; delayed_reverse_sawtooth [0.01, 2, 2, 1] /
    [0.01, 0.01, 3, 2, 1] (a window's first half hardly counts: each frame follows the window that reached it
    earlier)."""
    mid = (length + 1) // 2  # the peak: length = 2 mid (even) or 2 mid - 1 (odd)
    rising, falling = [float(w) for w in range(1, mid + 1)], [float(w) for w in range(mid, 0, -1)]
    if weighting_scheme == "flat":
        return [1.0] * length
    if weighting_scheme == "pyramid":
        return rising + falling[length % 2:]
    if weighting_scheme == "delayed_reverse_sawtooth":
        return [0.01] * (mid - 1) + ([float(mid)] if length % 2 == 0 else []) + falling
    raise ValueError(f"weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)}; got {weighting_scheme!r}")


def frame_windows(num_frames: int, context_length: int, context_stride: int) -> list[tuple[int, int]]:
    """[start, end) of each window: every `context_stride` frames from 0, as long as a whole window fits, then one
    window aligned to the video's end if the last one stops short of it. One window [0, F) when F <= L."""
    if num_frames <= context_length:
        return [(0, num_frames)]
    windows = [(start, start + context_length) for start in range(0, num_frames - context_length + 1, context_stride)]
    if windows[-1][1] < num_frames:
        windows.append((num_frames - context_length, num_frames))
    return windows


@dataclass(frozen=True)
class FrameWindows:
    """Attend within windows of `context_length` frames, `context_stride` apart, fused by `weighting_scheme`."""

    context_length: int = 16
    context_stride: int = 4
    weighting_scheme: str = "pyramid"

    def __post_init__(self):
        for name in ("context_length", "context_stride"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be a positive int (frames); got {value!r}")
        if self.context_stride > self.context_length:
            raise ValueError(f"context_stride ({self.context_stride}) must be at most context_length "
                             f"({self.context_length}), or some frames would be in no window")
        window_weights(self.context_length, self.weighting_scheme)  # checks the name

    def fuse(self, attend, x: torch.Tensor) -> torch.Tensor:
        """attend(x) for x (N, F, C), attention along dim 1, computed per window and fused (eq. 9 above).

        The windows run as one batch, ((N W), L, C), in one call of `attend` (one attention, not W), and each
        frame's output is the sum, in window order, of its windows' outputs times their shares (the weights summed
        per frame first, so each frame's output is a convex combination of windows)."""
        num_frames = x.shape[1]
        windows = frame_windows(num_frames, self.context_length, self.context_stride)
        if len(windows) == 1:  # [0, F): its share is 1 for every frame
            return attend(x)
        length = windows[0][1] - windows[0][0]  # every window is context_length frames once F > context_length
        index = torch.tensor([list(range(start, end)) for start, end in windows], device=x.device)  # (W, L)
        parts = attend(rearrange(x[:, index], "n w l c -> (n w) l c"))
        parts = rearrange(parts, "(n w) l c -> n w l c", w=len(windows)) * self._shares(windows, length, x)
        out = x.new_zeros((x.shape[0], num_frames, parts.shape[-1]))
        for w, (start, end) in enumerate(windows):
            out[:, start:end] += parts[:, w]
        return out

    def _shares(self, windows: list[tuple[int, int]], length: int, x: torch.Tensor) -> torch.Tensor:
        """(W, L, 1): each window's part of each of its frames, weight / (sum of the frame's weights), float64
        arithmetic, then x's dtype."""
        weights = window_weights(length, self.weighting_scheme)
        total = [0.0] * windows[-1][1]
        for start, end in windows:
            for j in range(start, end):
                total[j] += weights[j - start]
        shares = [[[weights[j - start] / total[j]] for j in range(start, end)] for start, end in windows]
        return torch.tensor(shares, dtype=torch.float64).to(x.device, x.dtype)
