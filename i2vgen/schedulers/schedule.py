"""Noise-schedule math shared by every sampler: betas, zero-terminal-SNR rescale, timestep spacings,
and the conversions between alpha_bar, sigma = sqrt((1 - alpha_bar) / alpha_bar) and the log-SNR lambda.

Notation: alpha_bar_t is the cumulative product of (1 - beta) (DDIM's alpha_t); for the solvers in sigma form
x_t = alpha_t x0 + sigma_t eps with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), and the
log-SNR lambda_t = log(alpha_t / sigma_t) (DPM-Solver, Lu et al. 2022, sec. 2). The arithmetic reproduces diffusers'
schedulers bit for bit (betas and sigmas in float32), because a released model was trained on those numbers.

Also here, so that each scheduler file holds only its step: dynamic thresholding, and the one conversion of a
model output (eps, v or x0, by prediction type) into the pair (x0, eps) every sampler works with.
"""

import math

import numpy as np
import torch

# alpha_bar given to the last train step when a zero-terminal-SNR schedule is used by a solver in sigma form:
# alpha_bar = 0 would make sigma infinite, so the reference uses 2**-24 (sigma_max ~ 4096), as do we.
ZERO_SNR_LAST_ALPHA_BAR = 2.0**-24


# ---- beta schedules: (num_train_timesteps,) float32 ----

def linear_betas(beta_start: float, beta_end: float, n: int) -> torch.Tensor:
    """DDPM's schedule (Ho et al. 2020, sec. 4). torch's float32 linspace, as the reference, for identical bits."""
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)


def scaled_linear_betas(beta_start: float, beta_end: float, n: int) -> torch.Tensor:
    """Linear in sqrt(beta), then squared: Stable Diffusion's (latent diffusion's) schedule."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2


def squaredcos_cap_v2_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), s = 0.008,
    beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta). In float64 (python floats), then float32."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has alpha_bar = 0, i.e. pure noise, keeping the first step
    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1).
    Kept in the input's dtype (float32), as the reference computes it."""
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])  # undo the cumulative product
    return 1 - alphas


def make_betas(c) -> torch.Tensor:
    """The betas a scheduler config asks for: trained_betas, else the named schedule; zero-SNR rescaled if asked."""
    if c.trained_betas is not None:
        betas = torch.tensor(c.trained_betas, dtype=torch.float32)
    elif c.beta_schedule == "linear":
        betas = linear_betas(c.beta_start, c.beta_end, c.num_train_timesteps)
    elif c.beta_schedule == "scaled_linear":
        betas = scaled_linear_betas(c.beta_start, c.beta_end, c.num_train_timesteps)
    else:
        betas = squaredcos_cap_v2_betas(c.num_train_timesteps)
    return rescale_zero_terminal_snr(betas) if c.rescale_betas_zero_snr else betas


def solver_alphas_cumprod(c, betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t for the solvers in sigma form: with zero terminal SNR the last one is 2**-24, not 0."""
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if c.rescale_betas_zero_snr:
        alphas_cumprod[-1] = ZERO_SNR_LAST_ALPHA_BAR
    return alphas_cumprod


# ---- timestep spacings (Lin et al. 2024, Table 2): (n,) int64, descending ----

def leading_timesteps(num_train_timesteps: int, n: int, steps_offset: int = 0) -> np.ndarray:
    """0, k, 2k, ... with k = T // n, plus steps_offset: never reaches the last train step T - 1."""
    return np.arange(n)[::-1] * (num_train_timesteps // n) + steps_offset


def trailing_timesteps(num_train_timesteps: int, n: int, start: int | None = None) -> np.ndarray:
    """start - 1, start - 1 - T/n, ... rounded (start = T by default): begins at the last train step (needed with
    zero terminal SNR). np.arange with a float step sometimes yields one extra value (about 0, hence timestep -1)
    in the reference (e.g. T=1000, n=61); we keep the first n, which are the reference's values."""
    start = num_train_timesteps if start is None else start
    return np.round(np.arange(start, 0, -num_train_timesteps / n))[:n].astype(np.int64) - 1


def linspace_timesteps(num_train_timesteps: int, n: int) -> np.ndarray:
    """n evenly spaced values from T - 1 down to 0, rounded half to even (numpy's round)."""
    return np.linspace(0, num_train_timesteps - 1, n).round()[::-1].astype(np.int64)


def as_numpy(values, dtype) -> np.ndarray:
    """User-given timesteps or sigmas (a list, an array or a tensor) as a numpy array of dtype."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.array(values).astype(dtype)


def check_num_inference_steps(n, num_train_timesteps: int) -> int:
    """A step count is an integer between 1 and the number of train steps."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be an integer between 1 and num_train_timesteps "
                         f"({num_train_timesteps}), got {n!r}")
    return int(n)


def _within_train_steps(spaced, num_train_timesteps: int, n: int, steps_offset: int) -> np.ndarray:
    """`spaced(n)`, the n leading-spaced timesteps, unless they pass the last train step: with steps_offset they
    can (T = 1000, steps_offset 1, 1000 DDIM steps: t = 1000), and the reference then fails with an IndexError
    inside step(). Refused here, in one line that gives the largest step count that works."""
    timesteps = spaced(n)
    if timesteps.max() >= num_train_timesteps:
        allowed = max(k for k in range(1, n) if spaced(k).max() < num_train_timesteps)
        raise ValueError(f"num_inference_steps={n} with leading spacing and steps_offset {steps_offset} would start "
                         f"at timestep {timesteps.max()}, past the last train step {num_train_timesteps - 1}; use "
                         f"at most {allowed} steps")
    return timesteps


def train_step(timestep, num_train_timesteps: int) -> int:
    """The train step a timestep names: an integer in [0, T - 1] (a negative one would index from the end)."""
    value = timestep.item() if isinstance(timestep, torch.Tensor) and timestep.numel() == 1 else timestep
    if not (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value) and value == int(value) and 0 <= value < num_train_timesteps):
        raise ValueError(f"timestep must be one integer train step between 0 and {num_train_timesteps - 1}, "
                         f"got {value!r}")
    return int(value)


def spaced_timesteps(spacing: str, num_train_timesteps: int, n: int, steps_offset: int = 0) -> np.ndarray:
    """The n timesteps of a DDIM-style sampler, whose last step lands on alpha_bar of timestep 0 or 1."""
    if spacing == "leading":
        return _within_train_steps(lambda k: leading_timesteps(num_train_timesteps, k, steps_offset),
                                   num_train_timesteps, n, steps_offset)
    if spacing == "trailing":
        return trailing_timesteps(num_train_timesteps, n)
    return linspace_timesteps(num_train_timesteps, n)


def solver_timesteps(spacing: str, num_train_timesteps: int, n: int, steps_offset: int = 0,
                     last_timestep: int | None = None) -> np.ndarray:
    """The n timesteps of a multistep solver (DPM-Solver, UniPC), whose last step goes on to the final sigma (0 or
    sigma_min) instead of a train step: leading and linspace space n + 1 points and drop the last. `last_timestep`
    (default T) is where lambda_min_clipped cuts the schedule."""
    last = num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "leading":
        return _within_train_steps(lambda k: leading_timesteps(last, k + 1, steps_offset)[:-1],
                                   num_train_timesteps, n, steps_offset)
    if spacing == "trailing":
        return trailing_timesteps(num_train_timesteps, n, start=last)
    return linspace_timesteps(last, n + 1)[:-1]


# ---- sigma form ----

def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise-to-signal ratio (Karras et al. 2022's sigma)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigmas_at(timesteps: np.ndarray, alphas_cumprod: torch.Tensor, final_sigma: float) -> torch.Tensor:
    """sigma at each timestep (linearly interpolated in float64, as the reference) plus a final sigma, in float32."""
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).numpy()
    return with_final(np.interp(timesteps, np.arange(len(sigmas)), sigmas), final_sigma)


def with_final(sigmas: np.ndarray, final_sigma: float) -> torch.Tensor:
    """The step schedule's sigmas: `sigmas` then where the last step ends, in float32."""
    return torch.from_numpy(np.concatenate([sigmas, [final_sigma]]).astype(np.float32))


def final_sigma(c, alphas_cumprod: torch.Tensor) -> float:
    """Where the last step ends: 0 (the clean sample) or the sigma of train step 0."""
    return 0.0 if c.final_sigmas_type == "zero" else float(sigmas_from_alphas_cumprod(alphas_cumprod[0]))


def alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = 1 / sqrt(sigma^2 + 1) and sigma_t = sigma alpha_t: x_t = alpha_t x0 + sigma_t eps."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def log_snr(alpha_t: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """lambda_t = log(alpha_t) - log(sigma_t) (DPM-Solver sec. 3.1); +inf at sigma_t = 0."""
    return torch.log(alpha_t) - torch.log(sigma_t)


def alpha_sigma_lambda(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t, lambda_t) of a point sigma of the step schedule."""
    alpha_t, sigma_t = alpha_sigma(sigma)
    return alpha_t, sigma_t, log_snr(alpha_t, sigma_t)


def x0_and_eps(model_output, x_t, alpha_t, sigma_t, prediction_type: str) -> tuple:
    """The one place the prediction type matters: the model output as the pair (x0, eps), from
    x_t = alpha_t x0 + sigma_t eps and, for v-prediction, v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022, sec. 4).
    DDIM passes alpha_t = sqrt(alpha_bar), the solvers alpha_t = 1 / sqrt(sigma^2 + 1), Euler (in Karras' variables,
    x = x0 + sigma eps) alpha_t = 1. A sampler that needs only one of the pair pays one elementwise op for the other."""
    if prediction_type == "epsilon":
        eps = model_output
        return (x_t - sigma_t * eps) / alpha_t, eps
    if prediction_type == "v_prediction":
        v = model_output
        return alpha_t * x_t - sigma_t * v, alpha_t * v + sigma_t * x_t
    x0 = model_output  # "sample"
    return x0, (x_t - alpha_t * x0) / sigma_t


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, sec. 2.3): per sample, s = the ratio-quantile of |x0|,
    clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s. Done in float32 at least."""
    flat = x0.flatten(1).float() if x0.dtype not in (torch.float32, torch.float64) else x0.flatten(1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(1, max_value)[:, None]
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with ndim dimensions, to broadcast per-sample scalars."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def sigmas_of(timesteps, schedule: torch.Tensor, sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The sigma of each of a batch of timesteps (where each sits in the schedule, as first_step_index finds it), in
    like's dtype and broadcastable to it: for add_noise."""
    timesteps = torch.as_tensor(timesteps).reshape(-1)
    positions = [first_step_index(schedule, t) for t in timesteps]
    return append_dims(sigmas.to(like.device, like.dtype)[positions].flatten(), like.ndim)


def first_step_index(timesteps: torch.Tensor, timestep) -> int:
    """Where sampling starts: the position of `timestep` in the schedule (the second one if it appears twice, so
    that a schedule restarted mid-way does not repeat a step, as the reference; the last if absent)."""
    matches = (timesteps == torch.as_tensor(timestep).to(timesteps.device)).nonzero()
    if len(matches) == 0:
        return len(timesteps) - 1
    return int(matches[1 if len(matches) > 1 else 0])
