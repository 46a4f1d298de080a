"""Euler sampler in the sigma parametrisation (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithm 2 with its optional churn).

In Karras' variables the sample is x = x_vp sqrt(sigma^2 + 1) (noise of standard deviation sigma added to the
data, sigma = sqrt((1 - alpha_bar) / alpha_bar)) and the probability-flow ODE is dx/dsigma = (x - D(x)) / sigma,
D the denoised prediction (eq. 3 with sigma(t) = t). One Euler step per model evaluation; the model sees
x / sqrt(sigma^2 + 1) (`scale_model_input`), the variance-preserving sample it was trained on, and the initial
noise is scaled by the first sigma (`init_noise_sigma`: 4096 with zero terminal SNR, where the last alpha_bar is
2**-24).

Same config keys, (float) timesteps and numbers as diffusers' EulerDiscreteScheduler (float32 step math).
Without churn it is the same update as deterministic DDIM on the same timesteps.
"""

from dataclasses import dataclass

import numpy as np
import torch

from i2vgen.noise import randn_tensor
from i2vgen.schedulers.schedule import (FINAL_SIGMAS_TYPES, ScheduleConfig, SchedulerFolders, check_choice,
                                        check_config, check_num_inference_steps, final_sigma, first_step_index,
                                        sigmas_at, sigmas_from_alphas_cumprod, solver_alphas_cumprod,
                                        spaced_timesteps)


@dataclass
class EulerDiscreteSchedulerConfig(ScheduleConfig):
    final_sigmas_type: str = "zero"


@dataclass
class EulerDiscreteSchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor  # D(x), the denoised prediction


class EulerDiscreteScheduler(SchedulerFolders):
    """The reference's EulerDiscreteScheduler. Usage:

        x = noise * scheduler.init_noise_sigma   (after set_timesteps)
        for t in scheduler.timesteps:
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    """

    config_class = EulerDiscreteSchedulerConfig
    order = 1
    stochastic = False  # churn (s_churn > 0) draws noise only when asked for in step()

    def __init__(self, config: EulerDiscreteSchedulerConfig | None = None, **kwargs):
        if config is not None and kwargs:
            raise TypeError("pass either a config or config keys, not both")
        self.config = c = config if config is not None else self.config_class(**kwargs)
        check_config(c)
        check_choice("final_sigmas_type", c.final_sigmas_type, FINAL_SIGMAS_TYPES)
        self.alphas_cumprod = solver_alphas_cumprod(c)  # alpha_bar_t; the zero-SNR last one is 2**-24
        # Before set_timesteps: every train step, as the reference (init_noise_sigma reads the largest sigma).
        self.sigmas = torch.cat([sigmas_from_alphas_cumprod(self.alphas_cumprod).flip(0), torch.zeros(1)])
        self.timesteps = torch.from_numpy(np.arange(c.num_train_timesteps - 1, -1, -1, dtype=np.float32))
        self.num_inference_steps = None
        self.step_index = None

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The scale of x_T: sigma_max, or sqrt(sigma_max^2 + 1) for leading spacing, as the reference (where the
        first step's sigma is below sigma_max)."""
        max_sigma = self.sigmas.max()
        return max_sigma if self.config.timestep_spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        c = self.config
        num_inference_steps = check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
        if c.timestep_spacing == "linspace":  # not rounded: Euler takes fractional timesteps
            timesteps = np.linspace(0, c.num_train_timesteps - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
        else:
            timesteps = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps,
                                         c.steps_offset).astype(np.float32)
        self.sigmas = sigmas_at(timesteps, self.alphas_cumprod, final_sigma(c, self.alphas_cumprod))
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self.num_inference_steps = num_inference_steps
        self.step_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1): Karras' c_in (Table 1, VP column), the sample the model was trained on."""
        if self.step_index is None:
            self.step_index = first_step_index(self.timesteps, timestep)
        sigma = self.sigmas[self.step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator: torch.Generator | None = None,
             return_dict: bool = True):
        """One Euler step from sigma to the next sigma' (Karras et al. 2022, Algorithm 2, lines 5-8):

            sigma_hat = sigma (1 + gamma),  x_hat = x + sqrt(sigma_hat^2 - sigma^2) s_noise z   (churn, if gamma > 0)
            d = (x_hat - D(x_hat)) / sigma_hat,  x' = x_hat + (sigma' - sigma_hat) d

        gamma = min(s_churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax], else 0. D from the model output by
        the prediction type (v: D = -sigma / sqrt(sigma^2 + 1) v + x / (sigma^2 + 1)).
        """
        c = self.config
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self.step_index is None:
            self.step_index = first_step_index(self.timesteps, timestep)
        x = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            z = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            x = x + z * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        if c.prediction_type == "epsilon":
            denoised = x - sigma_hat * model_output
        elif c.prediction_type == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
        else:  # "sample"
            denoised = model_output
        d = (x - denoised) / sigma_hat
        dt = self.sigmas[self.step_index + 1] - sigma_hat
        x_next = (x + d * dt).to(model_output.dtype)

        self.step_index += 1
        return EulerDiscreteSchedulerOutput(x_next, denoised) if return_dict else (x_next, denoised)
