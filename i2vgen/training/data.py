"""Synthetic motion clips: one coloured shape sliding across a dark background.

Each clip is 8 frames of 64x64 RGB: a uniform grey background (level 0-50), one filled circle or square of
radius 5-9 px in red, green, blue or yellow (each channel jittered by up to +-20 around the base colour),
moving 2-4 px per frame left, right, up or down. The caption names what happens:
"a red circle moving left". The object never leaves the frame. The diagonal motions ("up-left", "down-right",
...: 2-4 px per frame on each axis) are not in the demo model's training data; its LoRA learns them
(docs/training.md).

Train and evaluation clips never share a (start position, colour) pair: `is_heldout` hashes that pair and
puts 1 in 8 of them aside for evaluation. `sample_spec(rng, split)` draws until the pair falls in the split
asked for, so evaluation always sees first frames (positions and colours together) the model never saw.
"""

import zlib
from dataclasses import dataclass

import numpy as np
import torch

BASE_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (225, 215, 40),
}
SHAPES = ("circle", "square")
# (dx, dy) per frame in image coordinates: y grows downwards.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DIAGONALS = {"up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1)}
MOTIONS = DIRECTIONS | DIAGONALS

COLOR_JITTER = 20
RADIUS_RANGE = (5, 9)
SPEED_RANGE = (2, 4)
BACKGROUND_RANGE = (0, 50)
HELDOUT_FRACTION = 8  # one (start, colour) pair in 8 is kept for evaluation


@dataclass(frozen=True)
class MotionSpec:
    """Everything needed to draw one clip."""

    color: str
    rgb: tuple[int, int, int]
    shape: str
    radius: int
    direction: str
    speed: int  # pixels per frame
    start: tuple[int, int]  # centre (x, y) in the first frame
    background: int  # grey level of the background

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction}"

    def center(self, frame: int) -> tuple[int, int]:
        dx, dy = MOTIONS[self.direction]
        return self.start[0] + dx * self.speed * frame, self.start[1] + dy * self.speed * frame


def is_heldout(spec: MotionSpec) -> bool:
    """Whether this clip's (start position, colour) pair belongs to the evaluation split."""
    key = f"{spec.start[0]},{spec.start[1]},{spec.rgb[0]},{spec.rgb[1]},{spec.rgb[2]}".encode()
    return zlib.crc32(key) % HELDOUT_FRACTION == 0


def _draw_spec(rng: np.random.Generator, num_frames: int, size: int, direction: str | None,
               start_anywhere: bool, directions: tuple[str, ...]) -> MotionSpec:
    color = str(rng.choice(list(BASE_COLORS)))
    rgb = tuple(int(np.clip(c + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1), 0, 255)) for c in BASE_COLORS[color])
    shape = str(rng.choice(SHAPES))
    radius = int(rng.integers(RADIUS_RANGE[0], RADIUS_RANGE[1] + 1))
    direction = direction or str(rng.choice(list(directions)))
    speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
    travel = speed * (num_frames - 1)
    dx, dy = MOTIONS[direction]
    # Along the motion axis the start leaves room for the whole travel; across it, anywhere inside.
    # With start_anywhere, the start ignores the direction (the object may leave the frame).
    lo, hi = radius, size - 1 - radius
    if start_anywhere:
        dx = dy = 0
    x_range = (lo + travel, hi) if dx < 0 else (lo, hi - travel) if dx > 0 else (lo, hi)
    y_range = (lo + travel, hi) if dy < 0 else (lo, hi - travel) if dy > 0 else (lo, hi)
    start = (int(rng.integers(x_range[0], x_range[1] + 1)), int(rng.integers(y_range[0], y_range[1] + 1)))
    background = int(rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1))
    return MotionSpec(color, rgb, shape, radius, direction, speed, start, background)


def sample_spec(rng: np.random.Generator, split: str = "train", num_frames: int = 8, size: int = 64,
                direction: str | None = None, start_anywhere: bool = False,
                directions: tuple[str, ...] = tuple(DIRECTIONS)) -> MotionSpec:
    """Draw a random clip description from the "train" or "eval" split: a given direction, or one drawn
    uniformly from `directions` (names of MOTIONS; by default the four the demo model was trained on).

    By default the object stays inside the frame, so its start position hints at the direction (nothing
    starts at the left edge moving left). `start_anywhere=True` draws the start independently of the
    direction, letting the object leave the frame: then only the caption tells the direction."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    for name in [direction] if direction is not None else directions:
        if name not in MOTIONS:
            raise ValueError(f"direction must be one of {list(MOTIONS)}, got {name!r}")
    while True:
        spec = _draw_spec(rng, num_frames, size, direction, start_anywhere, tuple(directions))
        if is_heldout(spec) == (split == "eval"):
            return spec


def render_frame(spec: MotionSpec, frame: int, size: int = 64) -> np.ndarray:
    """One frame as uint8 (size, size, 3)."""
    image = np.full((size, size, 3), spec.background, dtype=np.uint8)
    cx, cy = spec.center(frame)
    ys, xs = np.mgrid[0:size, 0:size]
    if spec.shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= spec.radius**2
    else:
        inside = (np.abs(xs - cx) <= spec.radius) & (np.abs(ys - cy) <= spec.radius)
    image[inside] = spec.rgb
    return image


def render_clip(spec: MotionSpec, num_frames: int = 8, size: int = 64) -> np.ndarray:
    """The clip as uint8 (num_frames, size, size, 3)."""
    return np.stack([render_frame(spec, f, size) for f in range(num_frames)])


def to_tensor(clip: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(clip).float().div(127.5).sub(1.0).movedim(-1, -3)


class SyntheticMotion(torch.utils.data.IterableDataset):
    """Endless stream of (video (3, F, H, W) in [-1, 1], caption, first frame uint8 (H, W, 3)), seeded."""

    def __init__(self, seed: int = 0, split: str = "train", num_frames: int = 8, size: int = 64,
                 start_anywhere: bool = False, directions: tuple[str, ...] = tuple(DIRECTIONS)):
        self.seed, self.split, self.num_frames, self.size = seed, split, num_frames, size
        self.start_anywhere, self.directions = start_anywhere, tuple(directions)

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            spec = sample_spec(rng, self.split, self.num_frames, self.size, start_anywhere=self.start_anywhere,
                               directions=self.directions)
            clip = render_clip(spec, self.num_frames, self.size)
            yield to_tensor(clip).movedim(0, 1), spec.caption, clip[0]
