"""Buckets: every clip trains at the (height, width, frames) of the bucket nearest its aspect ratio.

Clips are centre-cropped wide to their bucket (`preprocess.center_crop_wide`, as the pipeline crops its input
image), so portrait, square and landscape clips all train, each at a size of its own shape. Every batch is drawn
from one bucket (`ClipDataset`), so its videos stack into one tensor.
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    height: int
    width: int
    frames: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def parse_buckets(values, where: str = "buckets") -> tuple[Bucket, ...]:
    """[[height, width, frames], ...] -> Buckets; sides must be positive multiples of 8 (the VAE's factor)."""
    buckets = []
    for value in values:
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value)):
            raise ValueError(f"{where}: each bucket is [height, width, frames] of integers, got {value!r}")
        height, width, frames = value
        if height <= 0 or width <= 0 or height % 8 or width % 8 or frames < 2:
            raise ValueError(f"{where}: bucket {list(value)}: height and width must be positive multiples of 8 "
                             f"and frames at least 2")
        buckets.append(Bucket(height, width, frames))
    if not buckets:
        raise ValueError(f"{where}: give at least one bucket")
    return tuple(buckets)


def nearest_bucket(buckets: tuple[Bucket, ...], width: int, height: int) -> int:
    """Index of the bucket whose aspect ratio is nearest the clip's (on a log scale: 2:1 and 1:2 are as far
    from 1:1); the first of equally near ones."""
    distance = [abs(math.log(width / height) - math.log(b.aspect)) for b in buckets]
    return distance.index(min(distance))
