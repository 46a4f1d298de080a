"""DDIM sampler (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

Notation follows the paper: alpha_bar_t is the cumulative product of (1 - beta) up to step t (the paper's
alpha_t), x_t the noisy sample, x0 the predicted clean sample, eps the predicted noise, eta the
stochasticity (eta = 0: deterministic DDIM; eta = 1: DDPM's posterior variance).

The schedule arithmetic reproduces diffusers' DDIMScheduler bit for bit (betas in float32), because a
released model was trained, and its sampler tuned, on those exact numbers.
"""

from dataclasses import dataclass

import numpy as np
import torch

from i2vgen.checks import check_real
from i2vgen.noise import randn_tensor
from i2vgen.schedulers.base import ScheduleConfig, SchedulerMixin, SchedulerOutput, check_step_shapes
from i2vgen.schedulers.schedule import (append_dims, check_num_inference_steps, dynamic_threshold, make_betas,
                                        spaced_timesteps, train_step, x0_and_eps)


@dataclass
class DDIMSchedulerConfig(ScheduleConfig):
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"


@dataclass
class DDIMSchedulerOutput(SchedulerOutput):
    pred_original_sample: torch.Tensor  # x0 predicted at step t (prev_sample: x_{t-1})


class DDIMScheduler(SchedulerMixin):
    """The reference's DDIMScheduler: same config keys, same timesteps, same numbers. Usage:

        scheduler.set_timesteps(50)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x, eta=eta, generator=generator).prev_sample
    """

    config_class = DDIMSchedulerConfig
    init_noise_sigma = 1.0  # x_T ~ N(0, I): the initial noise is not scaled

    def _setup(self):
        c = self.config
        betas = make_betas(c)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # alpha_bar_t, float32
        # alpha_bar before the first train step: 1 (clean data) or, as some models were tuned, alpha_bar_0.
        self.final_alpha_cumprod = torch.tensor(1.0) if c.set_alpha_to_one else self.alphas_cumprod[0]

        self.num_inference_steps = None
        self.timesteps = torch.arange(c.num_train_timesteps - 1, -1, -1)

    # ---- sampling ----

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        c = self.config
        num_inference_steps = check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
        if len(self.alphas_cumprod) != c.num_train_timesteps:
            raise ValueError(f"trained_betas has {len(self.alphas_cumprod)} values but num_train_timesteps is "
                             f"{c.num_train_timesteps}: sampling needs one beta per train step")
        timesteps = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps, c.steps_offset)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(timesteps.astype(np.int64)).to(device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample  # DDIM feeds x_t to the model unscaled

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True):
        """One DDIM update x_t -> x_{t-1} (DDIM eq. 12, sigma from eq. 16):

            x_{t-1} = sqrt(alpha_bar_prev) x0 + sqrt(1 - alpha_bar_prev - sigma_t^2) eps + sigma_t z,
            sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev).

        z ~ N(0, I) is `variance_noise`, or drawn from `generator` with model_output's shape and dtype (on the
        generator's device, then moved), exactly as the reference draws it; only when eta > 0.
        """
        c = self.config
        check_step_shapes(model_output, sample)
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        check_real("eta", eta, 0.0, 1.0)
        # The previous step is t - T // n for every spacing, as in the reference (exact for "leading").
        t = train_step(timestep, c.num_train_timesteps)
        t_prev = t - c.num_train_timesteps // self.num_inference_steps
        alpha_bar_t, alpha_bar_prev = self._alpha_bars(t, t_prev)

        x_t = sample
        # x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps (DDIM eq. 4)
        x0, eps = x0_and_eps(model_output, x_t, alpha_bar_t**0.5, (1 - alpha_bar_t) ** 0.5, c.prediction_type)
        if c.thresholding:
            x0 = dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        elif c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        if use_clipped_model_output:  # eps consistent with the clipped x0
            eps = (x_t - alpha_bar_t**0.5 * x0) / (1 - alpha_bar_t) ** 0.5

        sigma_t = eta * self._get_variance(t, t_prev) ** 0.5
        x_prev = alpha_bar_prev**0.5 * x0 + (1 - alpha_bar_prev - sigma_t**2) ** 0.5 * eps  # eq. 12
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            x_prev = x_prev + sigma_t * variance_noise

        if not return_dict:
            return x_prev, x0
        return DDIMSchedulerOutput(prev_sample=x_prev, pred_original_sample=x0)

    def _alpha_bars(self, t: int, t_prev: int):
        """alpha_bar at t and at the previous step (final_alpha_cumprod before the first train step)."""
        return self.alphas_cumprod[t], self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_cumprod

    def _get_variance(self, t: int, t_prev: int) -> torch.Tensor:
        """sigma_t^2 / eta^2 of DDIM eq. 16: (1 - alpha_bar_prev) / (1 - alpha_bar_t) (1 - alpha_bar_t / alpha_bar_prev)
        (the reference's name)."""
        alpha_bar_t, alpha_bar_prev = self._alpha_bars(t, t_prev)
        return (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)

    # ---- training-side helpers ----

    def _sqrt_alpha_bars(self, like: torch.Tensor, timesteps: torch.Tensor):
        """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) per sample, in like's dtype, broadcastable to like."""
        timesteps = torch.as_tensor(timesteps, device=like.device)
        alpha_bar = self.alphas_cumprod.to(like.device, like.dtype)[timesteps].flatten()
        return append_dims(alpha_bar**0.5, like.ndim), append_dims((1 - alpha_bar) ** 0.5, like.ndim)

    def add_noise(self, original_samples, noise, timesteps) -> torch.Tensor:
        """Sample q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I) (DDIM eq. 4)."""
        a, s = self._sqrt_alpha_bars(original_samples, timesteps)
        return a * original_samples + s * noise

    def get_velocity(self, sample, noise, timesteps) -> torch.Tensor:
        """The v-prediction target v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)."""
        a, s = self._sqrt_alpha_bars(sample, timesteps)
        return a * noise - s * sample
