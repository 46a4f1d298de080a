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
from i2vgen.schedulers.base import (SchedulerMixin, SchedulerOutput, SigmaScheduleConfig, check_choice,
                                     check_step_shapes)
from i2vgen.schedulers.schedule import (as_numpy, check_num_inference_steps, final_sigma, make_betas,
                                        sigmas_from_alphas_cumprod, sigmas_of, solver_alphas_cumprod,
                                        spaced_timesteps, with_final, x0_and_eps)
from i2vgen.schedulers.sigmas import formula_sigmas, sigma_to_t


@dataclass
class EulerDiscreteSchedulerConfig(SigmaScheduleConfig):
    interpolation_type: str = "linear"  # sigmas between train steps: "linear" in t, or "log_linear" (see below)
    sigma_min: float | None = None  # the ends of Karras / exponential / beta sigmas (default: the schedule's)
    sigma_max: float | None = None
    timestep_type: str = "discrete"  # "continuous": with v-prediction the model is told 0.25 log sigma


@dataclass
class EulerDiscreteSchedulerOutput(SchedulerOutput):
    pred_original_sample: torch.Tensor  # D(x), the denoised prediction


class EulerDiscreteScheduler(SchedulerMixin):
    """The reference's EulerDiscreteScheduler. Usage:

        x = noise * scheduler.init_noise_sigma   (after set_timesteps)
        for t in scheduler.timesteps:
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    """

    config_class = EulerDiscreteSchedulerConfig
    stochastic = False  # churn (s_churn > 0) draws noise only when asked for in step()

    def _setup(self):
        c = self.config
        check_choice("interpolation_type", c.interpolation_type, ("linear", "log_linear"))
        check_choice("timestep_type", c.timestep_type, ("discrete", "continuous"))
        self.betas = make_betas(c)
        self.alphas_cumprod = solver_alphas_cumprod(c, self.betas)  # alpha_bar_t; the zero-SNR last one is 2**-24
        # Before set_timesteps: every train step, as the reference (init_noise_sigma reads the largest sigma).
        sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).flip(0)
        timesteps = torch.from_numpy(np.arange(c.num_train_timesteps - 1, -1, -1, dtype=np.float32))
        self.timesteps = self._model_timesteps(sigmas, timesteps)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        self.num_inference_steps = None
        self.step_index = self.begin_index = None

    def _model_timesteps(self, sigmas: torch.Tensor, timesteps) -> torch.Tensor:
        """What the model is told at each step: the timestep, or with continuous timesteps and v-prediction
        c_noise = log(sigma) / 4 (Karras et al. 2022, Table 1), as the reference."""
        c = self.config
        if c.timestep_type == "continuous" and c.prediction_type == "v_prediction":
            return torch.Tensor([0.25 * sigma.log() for sigma in sigmas])
        return timesteps

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The scale of x_T: sigma_max, or sqrt(sigma_max^2 + 1) for leading spacing, as the reference (where the
        first step's sigma is below sigma_max)."""
        max_sigma = self.sigmas.max()
        return max_sigma if self.config.timestep_spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None,
                      sigmas=None) -> None:
        """The step schedule: num_inference_steps spaced as the config says, or the given `timesteps` (sigmas
        interpolated at them), or the given `sigmas` (ending with the final one; timesteps interpolated)."""
        c = self.config
        if sum(x is not None for x in (num_inference_steps, timesteps, sigmas)) != 1:
            raise ValueError("set_timesteps takes exactly one of num_inference_steps, timesteps and sigmas")
        if timesteps is not None and (c.use_karras_sigmas or c.use_exponential_sigmas or c.use_beta_sigmas
                                      or (c.timestep_type == "continuous" and c.prediction_type == "v_prediction")):
            raise ValueError("timesteps cannot be given with use_karras/exponential/beta_sigmas, which place the "
                             "steps themselves, nor with continuous timesteps and v-prediction")
        train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()
        if sigmas is not None:
            sigmas = as_numpy(sigmas, np.float32)
            timesteps = sigma_to_t(sigmas[:-1], np.log(train_sigmas))
            self.num_inference_steps = len(sigmas) - 1
            self.sigmas = torch.from_numpy(sigmas)
        else:
            timesteps = self._spaced(num_inference_steps) if timesteps is None else as_numpy(timesteps, np.float32)
            self.num_inference_steps = n = len(timesteps)
            if c.interpolation_type == "linear":
                sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
            else:  # evenly in log sigma from the largest to the smallest, n + 1 of them, as the reference
                sigmas = torch.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]), n + 1).exp().numpy()
            formula = formula_sigmas(c, sigmas, n)
            if formula is not None:
                sigmas, timesteps = formula, sigma_to_t(formula, np.log(train_sigmas))
            self.sigmas = with_final(sigmas, final_sigma(c, self.alphas_cumprod))
        timesteps = torch.from_numpy(timesteps.astype(np.float32))
        self.timesteps = self._model_timesteps(self.sigmas[:-1], timesteps).to(device=device)
        self.step_index = self.begin_index = None

    def _spaced(self, num_inference_steps: int) -> np.ndarray:
        """The config's timestep spacing, as float32: linspace is not rounded (Euler takes fractional timesteps)."""
        c = self.config
        n = check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
        if c.timestep_spacing == "linspace":
            return np.linspace(0, c.num_train_timesteps - 1, n, dtype=np.float32)[::-1].copy()
        return spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset).astype(np.float32)

    def add_noise(self, original_samples, noise, timesteps) -> torch.Tensor:
        """x = x0 + sigma eps (Karras' variables) at each sample's timestep of the schedule."""
        return original_samples + noise * sigmas_of(timesteps, self.timesteps, self.sigmas, original_samples)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1): Karras' c_in (Table 1, VP column), the sample the model was trained on."""
        if self.step_index is None:
            self._init_step_index(timestep)
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
        check_step_shapes(model_output, sample)
        if self.step_index is None:  # before set_timesteps: on the train steps' schedule, as the reference
            self._init_step_index(timestep)
        x = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            z = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            x = x + z * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        if c.prediction_type == "v_prediction":  # v is defined on x_vp = alpha_t x, alpha_t = 1 / sqrt(sigma^2 + 1);
            # alpha_t x_vp is passed as x / (sigma^2 + 1), the reference's rounding, and sigma_t = sigma alpha_t
            denoised, _ = x0_and_eps(model_output, x / (sigma**2 + 1), 1, sigma / (sigma**2 + 1) ** 0.5, "v_prediction")
        else:  # x = x0 + sigma_hat eps
            denoised, _ = x0_and_eps(model_output, x, 1, sigma_hat, c.prediction_type)
        d = (x - denoised) / sigma_hat
        dt = self.sigmas[self.step_index + 1] - sigma_hat
        x_next = (x + d * dt).to(model_output.dtype)

        self.step_index += 1
        return EulerDiscreteSchedulerOutput(x_next, denoised) if return_dict else (x_next, denoised)
