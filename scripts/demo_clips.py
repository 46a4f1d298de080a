"""A folder of mp4 clips for the fine-tuning demo (docs/training.md, "Fine-tune on your own clips").

    python scripts/demo_clips.py --out runs/demo-clips [--per-motion 64]

Each clip is one second of the demo's shapes (i2vgen/training/data.py: a grey background, one circle or square
in red, green, blue or yellow) recorded at 8, 12, 16 or 24 fps, written as H.264 mp4 with PyAV, listed in
metadata.csv (file_name,text). The motions follow physics, in pixels per *second*, so the same motion moves
three times as far per frame at 8 fps as at 24 fps:
- "a red circle moving left" (right, up, down): 24-40 px/s, the four motions weights/tiny-demo knows;
- "a red circle growing" / "... shrinking": the radius changes by 5-9 px/s from 7-12 px, in place: a motion
  the tiny model never saw, with words its tokenizer spells letter by letter.
First frames come from the training split of data.py's hash of (start position, colour); the evaluation
(scripts/eval_demo_clips.py) draws its first frames from the held-out split.
"""

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from i2vgen.training.data import BASE_COLORS, COLOR_JITTER, DIRECTIONS, SHAPES, is_heldout  # noqa: E402

SIZES = ("growing", "shrinking")
MOTIONS = (*DIRECTIONS, *SIZES)
RECORDED_FPS = (8, 12, 16, 24)
SPEED = (24, 40)  # px/s, sliding
GROWTH = (5, 9)  # px/s of radius, growing or shrinking
RADIUS = (7, 12)  # at the first frame, growing or shrinking
SLIDE_RADIUS = (5, 9)
DURATION = 1.0  # seconds
SIZE = 64


@dataclass(frozen=True)
class ClipSpec:
    color: str
    rgb: tuple[int, int, int]
    shape: str
    motion: str
    radius: int  # at t = 0
    speed: float  # px/s: of the centre (sliding) or of the radius (growing, shrinking)
    start: tuple[int, int]
    background: int

    @property
    def caption(self) -> str:
        verb = self.motion if self.motion in SIZES else f"moving {self.motion}"
        return f"a {self.color} {self.shape} {verb}"

    def at(self, seconds: float) -> tuple[float, float, float]:
        """(x, y, radius) at a time."""
        if self.motion in SIZES:
            sign = 1 if self.motion == "growing" else -1
            return self.start[0], self.start[1], self.radius + sign * self.speed * seconds
        dx, dy = DIRECTIONS[self.motion]
        return self.start[0] + dx * self.speed * seconds, self.start[1] + dy * self.speed * seconds, self.radius


def _draw(rng: np.random.Generator, motion: str) -> ClipSpec:
    color = str(rng.choice(list(BASE_COLORS)))
    rgb = tuple(int(np.clip(c + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1), 0, 255)) for c in BASE_COLORS[color])
    shape = str(rng.choice(SHAPES))
    if motion in SIZES:
        speed = float(rng.uniform(*GROWTH))
        low = RADIUS[0] if motion == "growing" else max(RADIUS[0], int(np.ceil(speed * DURATION)) + 2)
        radius = int(rng.integers(low, RADIUS[1] + 1))
        reach = radius + (speed * DURATION if motion == "growing" else 0)  # the largest radius it has
        lo, hi = int(np.ceil(reach)), SIZE - 1 - int(np.ceil(reach))
        start = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
    else:
        speed = float(rng.uniform(*SPEED))
        radius = int(rng.integers(SLIDE_RADIUS[0], SLIDE_RADIUS[1] + 1))
        travel = int(np.ceil(speed * DURATION))
        dx, dy = DIRECTIONS[motion]
        lo, hi = radius, SIZE - 1 - radius
        ranges = [(lo + travel, hi) if d < 0 else (lo, hi - travel) if d > 0 else (lo, hi) for d in (dx, dy)]
        start = tuple(int(rng.integers(a, b + 1)) for a, b in ranges)
    return ClipSpec(color, rgb, shape, motion, radius, speed, start, int(rng.integers(0, 51)))


def sample_clip(rng: np.random.Generator, motion: str, split: str = "train") -> ClipSpec:
    """A clip of `motion` whose (start, colour) pair falls in the split (data.is_heldout)."""
    while True:
        spec = _draw(rng, motion)
        if is_heldout(spec) == (split == "eval"):
            return spec


def render(spec: ClipSpec, seconds: float) -> np.ndarray:
    """The frame at a time, uint8 (SIZE, SIZE, 3)."""
    x, y, r = spec.at(seconds)
    image = np.full((SIZE, SIZE, 3), spec.background, dtype=np.uint8)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    inside = (xs - x) ** 2 + (ys - y) ** 2 <= r**2 if spec.shape == "circle" else (
        (np.abs(xs - x) <= r) & (np.abs(ys - y) <= r))
    image[inside] = spec.rgb
    return image


def write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_folder(out: Path, per_motion: int, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for motion in MOTIONS:
        for i in range(per_motion):
            spec, fps = sample_clip(rng, motion), RECORDED_FPS[i % len(RECORDED_FPS)]
            name = f"{motion}-{i:03d}-{fps}fps.mp4"
            write_mp4(out / name, [render(spec, k / fps) for k in range(round(DURATION * fps))], fps)
            rows.append({"file_name": name, "text": spec.caption})
    with open(out / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} clips to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-motion", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_folder(args.out, args.per_motion, args.seed)
