"""Inference sigmas placed by a formula between sigma_max and sigma_min, instead of at spaced timesteps, and the
(fractional) timesteps the model is then told: the options use_karras_sigmas, use_exponential_sigmas,
use_beta_sigmas and DPM-Solver's use_lu_lambdas. The arithmetic is the reference's (float64 numpy), so that the
timesteps and sigmas come out identical.
"""

import math

import numpy as np


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: evenly spaced in sigma^(1/rho), rho = 7 (the paper's), from sigma_max down."""
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Evenly spaced in log sigma, from sigma_max down."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024, "Beta Sampling is All You Need": sigma_min + (sigma_max - sigma_min) F^-1(1 - i/(n-1)), F the
    Beta(0.6, 0.6) distribution function, so steps crowd at both ends of the schedule."""
    return np.array([sigma_min + beta_ppf(q, alpha, beta) * (sigma_max - sigma_min)
                     for q in 1 - np.linspace(0, 1, n)])


def lu_sigmas(log_sigma_min: float, log_sigma_max: float, n: int) -> np.ndarray:
    """DPM-Solver (Lu et al. 2022, sec. 3.4): steps evenly spaced in the log-SNR lambda = -log sigma."""
    return np.exp(log_sigma_max + np.linspace(0, 1, n) * (log_sigma_min - log_sigma_max))


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The fractional train step of each sigma: linear interpolation of log sigma between the two train steps around
    it (log_sigmas, ascending, one per train step), clamped to the ends."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (train steps, sigmas)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def formula_sigmas(c, train_sigmas: np.ndarray, n: int) -> np.ndarray | None:
    """The n sigmas the config's formula option asks for between the ends of `train_sigmas` (descending), or None
    without one. sigma_min / sigma_max override the ends where the config has them (Euler's keys, or carried over
    from an Euler config, as the reference reads them)."""
    sigma_min = c.get("sigma_min") if c.get("sigma_min") is not None else train_sigmas[-1].item()
    sigma_max = c.get("sigma_max") if c.get("sigma_max") is not None else train_sigmas[0].item()
    if c.use_karras_sigmas:
        return karras_sigmas(sigma_min, sigma_max, n)
    if c.use_exponential_sigmas:
        return exponential_sigmas(sigma_min, sigma_max, n)
    if c.use_beta_sigmas:
        return beta_sigmas(sigma_min, sigma_max, n)
    return None


# ---- the Beta distribution's quantile function (numpy only) ----

def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Abramowitz & Stegun 26.5.8,
    evaluated by the modified Lentz method), on the side where it converges fast."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1 - math.exp(log_front) * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float, tiny: float = 1e-300) -> float:
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1) < 1e-16:
            break
    return f


def beta_ppf(q: float, a: float, b: float) -> float:
    """x with I_x(a, b) = q, by bisection to float64 resolution (the CDF is monotone)."""
    if q <= 0 or q >= 1:
        return float(q >= 1)
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if beta_cdf(mid, a, b) < q else (lo, mid)
    return (lo + hi) / 2
