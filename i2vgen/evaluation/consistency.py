"""Consistency metrics over per-frame features (features.py): pure functions of (N, D) arrays, so they are
tested on features whose answer is known and work with any feature extractor.

Cosine similarities are clipped below at 0, as VBench does.
"""

import numpy as np


def _unit(features) -> np.ndarray:
    features = np.atleast_2d(np.asarray(features, dtype=np.float64))
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def _cosines(a, b) -> np.ndarray:
    """max(0, cos) of matching rows of a and b (b may be one row)."""
    return np.maximum(0.0, np.sum(_unit(a) * _unit(b), axis=-1))


def frame_consistency(features) -> float:
    """VBench's subject consistency (DINO features) and background consistency (CLIP features)
    (vbench/subject_consistency.py): over frames i >= 1, the mean of (cos(f_i-1, f_i) + cos(f_0, f_i)) / 2.
    1 when every frame has the same feature direction."""
    features = _unit(features)
    if len(features) < 2:
        raise ValueError(f"frame_consistency needs the features of at least 2 frames, got {len(features)}")
    return float(np.mean((_cosines(features[:-1], features[1:]) + _cosines(features[:1], features[1:])) / 2))


def i2v_consistency(image_feature, features) -> float:
    """VBench-I2V's I2V subject score (vbench2_beta_i2v/i2v_subject.py): 0.4 x the largest cos(image, frame) +
    0.3 x the mean and 0.3 x the smallest cos(frame i-1, frame i)."""
    features = _unit(features)
    if len(features) < 2:
        raise ValueError(f"i2v_consistency needs the features of at least 2 frames, got {len(features)}")
    to_image, consecutive = _cosines(features, image_feature), _cosines(features[:-1], features[1:])
    return float(0.4 * to_image.max() + 0.3 * consecutive.mean() + 0.3 * consecutive.min())


def mean_similarity(features, reference_feature) -> float:
    """Mean max(0, cos) of each frame's feature with one reference feature: CLIP image-image similarity
    (reference: the input image) and CLIP text-video similarity (reference: the prompt's text feature)."""
    return float(_cosines(features, reference_feature).mean())
