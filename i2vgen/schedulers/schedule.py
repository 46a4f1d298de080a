"""Noise-schedule math shared by every sampler: betas, zero-terminal-SNR rescale, timestep spacings,
and the conversions between alpha_bar, sigma = sqrt((1 - alpha_bar) / alpha_bar) and the log-SNR lambda.

Notation: alpha_bar_t is the cumulative product of (1 - beta) (DDIM's alpha_t); for the solvers in sigma form
x_t = alpha_t x0 + sigma_t eps with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), and the
log-SNR lambda_t = log(alpha_t / sigma_t) (DPM-Solver, Lu et al. 2022, sec. 2). The arithmetic reproduces diffusers'
schedulers bit for bit (betas and sigmas in float32), because a released model was trained on those numbers.

Also here, so that each scheduler file holds only its step: the config checks, from_config / from_pretrained /
save_pretrained, dynamic thresholding and the data prediction x0 from a model output.
"""

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from i2vgen.loading import Config, read_config, write_config

CONFIG_NAME = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# alpha_bar given to the last train step when a zero-terminal-SNR schedule is used by a solver in sigma form:
# alpha_bar = 0 would make sigma infinite, so the reference uses 2**-24 (sigma_max ~ 4096), as do we.
ZERO_SNR_LAST_ALPHA_BAR = 2.0**-24

# Options the reference's configs may carry that i2vgen does not implement, with the value that means "off".
# A config with the neutral value loads silently; any other value is refused in one line (check_config).
UNSUPPORTED_KEYS = {
    "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
    "use_flow_sigmas": False, "use_dynamic_shifting": False, "variance_type": None, "solver_p": None,
    "timestep_type": "discrete", "interpolation_type": "linear", "sigma_min": None, "sigma_max": None,
}
IGNORED_KEYS = ("flow_shift", "time_shift_type")  # only read by the unsupported flow options above


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


def solver_alphas_cumprod(c) -> torch.Tensor:
    """alpha_bar_t for the solvers in sigma form: with zero terminal SNR the last one is 2**-24, not 0."""
    alphas_cumprod = torch.cumprod(1.0 - make_betas(c), dim=0)
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
    sigmas = np.interp(timesteps, np.arange(len(sigmas)), sigmas)
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


def data_prediction(model_output, x_t, alpha_t, sigma_t, prediction_type: str) -> torch.Tensor:
    """x0 from the model output, with x_t = alpha_t x0 + sigma_t eps and v = alpha_t eps - sigma_t x0
    (Salimans & Ho 2022, sec. 4): the quantity DPM-Solver++ and UniPC integrate."""
    if prediction_type == "epsilon":
        return (x_t - sigma_t * model_output) / alpha_t
    if prediction_type == "v_prediction":
        return alpha_t * x_t - sigma_t * model_output
    return model_output  # "sample"


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, sec. 2.3): per sample, s = the ratio-quantile of |x0|,
    clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s. Done in float32 at least."""
    flat = x0.flatten(1).float() if x0.dtype not in (torch.float32, torch.float64) else x0.flatten(1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(1, max_value)[:, None]
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)


def first_step_index(timesteps: torch.Tensor, timestep) -> int:
    """Where sampling starts: the position of `timestep` in the schedule (the second one if it appears twice, so
    that a schedule restarted mid-way does not repeat a step, as the reference; the last if absent)."""
    matches = (timesteps == torch.as_tensor(timestep).to(timesteps.device)).nonzero()
    if len(matches) == 0:
        return len(timesteps) - 1
    return int(matches[1 if len(matches) > 1 else 0])


# ---- configs and folders ----

def check_choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of {allowed}")


@dataclasses.dataclass
class ScheduleConfig(Config):
    """The config keys every scheduler shares: the training noise schedule, what the model predicts, and how
    inference timesteps are placed on it. Each scheduler's config adds its own keys after these."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None  # overrides beta_schedule when given
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False


def check_config(c) -> None:
    """The checks every scheduler config gets (each scheduler adds its own choices)."""
    if c.trained_betas is None:
        check_choice("beta_schedule", c.beta_schedule, BETA_SCHEDULES)
    check_choice("timestep_spacing", c.timestep_spacing, TIMESTEP_SPACINGS)
    check_choice("prediction_type", c.prediction_type, PREDICTION_TYPES)
    if not (isinstance(c.num_train_timesteps, int) and c.num_train_timesteps >= 2):
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {c.num_train_timesteps!r}")
    check_betas(c)


def check_betas(c) -> None:
    """Betas lie in [0, 1]: one above 1 makes alpha_bar negative (and its square root NaN), a negative one makes it
    grow. Read from the config's numbers, not a tensor, so that schedulers can be built under FakeTensorMode."""
    if c.trained_betas is not None:
        values, names = c.trained_betas, "trained_betas"
    elif c.beta_schedule in ("linear", "scaled_linear"):  # every beta lies between these two
        values, names = (c.beta_start, c.beta_end), "beta_start and beta_end"
    else:
        return  # squaredcos_cap_v2 is capped at 0.999 by construction
    bad = [b for b in values if not (math.isfinite(b) and 0 <= b <= 1)]
    if bad:
        raise ValueError(f"{names} must be finite and in [0, 1]; got {bad[0]}")


def config_dict(config) -> dict:
    """A scheduler config (ours, or a dict as diffusers' `scheduler.config` is) as a plain dict."""
    return config.to_dict() if dataclasses.is_dataclass(config) else dict(config)


class SchedulerFolders:
    """from_config / from_pretrained / save_pretrained for a scheduler whose `config_class` is a Config dataclass.
    Keys meant for another scheduler (e.g. DDIM's clip_sample when building UniPC from DDIM's config) are dropped,
    as diffusers does; an override that no scheduler knows, or an unsupported option turned on, is an error."""

    config_class: type

    @classmethod
    def from_config(cls, config, **overrides):
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        bad = sorted(k for k in overrides if k not in names and k not in UNSUPPORTED_KEYS)
        if bad:
            raise ValueError(f"{cls.__name__} has no option {bad[0]!r}; its options are {sorted(names)}")
        d = {**config_dict(config), **overrides}
        for key, off in UNSUPPORTED_KEYS.items():
            if key in d and d[key] != off:
                raise ValueError(f"{cls.__name__}: {key}={d[key]!r} is not supported by i2vgen (use {off!r})")
        return cls(cls.config_class.from_dict({k: v for k, v in d.items() if k in names}))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None):
        folder = Path(pretrained_model_name_or_path, subfolder or "")
        config = read_config(folder, CONFIG_NAME)
        try:
            return cls.from_config(config)
        except (ValueError, TypeError) as error:  # a value of the wrong type, or one no schedule can use
            raise ValueError(f"{folder / CONFIG_NAME}: {error}") from None

    def save_pretrained(self, save_directory) -> None:
        write_config(save_directory, type(self).__name__, self.config.to_dict(), CONFIG_NAME)
