"""Fréchet video distance (Unterthiner et al. 2018): the Fréchet distance between Gaussians fitted to video
features of two sets (features.videomae_features here; the paper's I3D is not in transformers).
"""

import numpy as np


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from rounding set to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(features_a, features_b) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of the features' means and covariances (N, D) each.

    Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): the same eigenvalues, on a symmetric matrix."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two sets of at least 2 features of one size, got {a.shape}, {b.shape}")
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    root_a = _sqrt_psd(np.atleast_2d(cov_a))
    cross = np.trace(_sqrt_psd(root_a @ np.atleast_2d(cov_b) @ root_a))
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(np.atleast_2d(cov_a + cov_b)) - 2 * cross)
