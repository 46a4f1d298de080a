"""DPM-Solver++ multistep sampler (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), and its SDE variant.

The probability-flow ODE in the log-SNR lambda_t = log(alpha_t / sigma_t), written for the data prediction x0_theta:

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_theta(x_lambda) dlambda   (eq. 9)

Each step integrates it exactly for a polynomial of x0_theta in lambda through the last 1, 2 or 3 model outputs
("multistep": one model evaluation per step). h = lambda_t - lambda_s is the step in log-SNR.

Same config keys, timesteps and numbers as diffusers' DPMSolverMultistepScheduler (float32 step math), for the
algorithm types "dpmsolver++" and "sde-dpmsolver++" (the noise-prediction "dpmsolver" types are deprecated there).
"""

from dataclasses import dataclass

import torch

from i2vgen.noise import randn_tensor
from i2vgen.schedulers.schedule import (FINAL_SIGMAS_TYPES, ScheduleConfig, SchedulerFolders, alpha_sigma_lambda,
                                        check_choice, check_config, check_num_inference_steps, data_prediction,
                                        dynamic_threshold, final_sigma, first_step_index, log_snr, sigmas_at,
                                        solver_alphas_cumprod, solver_timesteps)

ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


@dataclass
class DPMSolverMultistepSchedulerConfig(ScheduleConfig):
    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"  # how the second-order term is formed (DPM-Solver sec. 3.3 / appendix)
    lower_order_final: bool = True  # lower orders on the last steps when there are fewer than 15
    euler_at_final: bool = False  # first order on the very last step
    final_sigmas_type: str = "zero"  # the last step ends at sigma = 0 ("zero") or at train step 0 ("sigma_min")
    lambda_min_clipped: float = -float("inf")  # cut the schedule where lambda falls below this


@dataclass
class DPMSolverMultistepSchedulerOutput:
    prev_sample: torch.Tensor


class DPMSolverMultistepScheduler(SchedulerFolders):
    """The reference's DPMSolverMultistepScheduler. Usage, as DDIM's:

        scheduler.set_timesteps(20)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample

    With "sde-dpmsolver++" every step adds fresh noise: `variance_noise`, or drawn from `generator`.
    """

    config_class = DPMSolverMultistepSchedulerConfig
    order = 1  # one model evaluation per step
    init_noise_sigma = 1.0

    def __init__(self, config: DPMSolverMultistepSchedulerConfig | None = None, **kwargs):
        if config is not None and kwargs:
            raise TypeError("pass either a config or config keys, not both")
        self.config = c = config if config is not None else self.config_class(**kwargs)
        check_config(c)
        check_choice("algorithm_type", c.algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", c.solver_type, SOLVER_TYPES)
        check_choice("solver_order", c.solver_order, (1, 2, 3))
        check_choice("final_sigmas_type", c.final_sigmas_type, FINAL_SIGMAS_TYPES)
        self.alphas_cumprod = solver_alphas_cumprod(c)  # alpha_bar_t; the zero-SNR last one is 2**-24
        alpha_t, sigma_t = self.alphas_cumprod**0.5, (1 - self.alphas_cumprod) ** 0.5
        self.lambda_t = log_snr(alpha_t, sigma_t)
        self.num_inference_steps = None
        self.timesteps = self.sigmas = None

    @property
    def stochastic(self) -> bool:
        """Whether each step draws fresh noise (the SDE variant)."""
        return self.config.algorithm_type == "sde-dpmsolver++"

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        c = self.config
        num_inference_steps = check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
        # lambda_min_clipped: drop the train steps whose log-SNR is below it from the end of the schedule.
        clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), c.lambda_min_clipped))
        timesteps = solver_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps, c.steps_offset,
                                     last_timestep=c.num_train_timesteps - clipped)
        self.sigmas = sigmas_at(timesteps, self.alphas_cumprod, final_sigma(c, self.alphas_cumprod))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = []  # x0 predictions of the last solver_order steps, oldest first
        self.step_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample  # the solver feeds x_t to the model unscaled

    def step(self, model_output, timestep, sample, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """One step x_s -> x_t of DPM-Solver++(kM) (Lu et al. 2022, Algorithm 2 for k = 2; sec. 4 for the SDE).

        With x0_0, x0_1, x0_2 the data predictions at this and the two previous steps, r_i the ratios of the
        previous log-SNR steps to h, D0 = x0_0 and D1, D2 the first and second divided differences scaled by h:

            ODE: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D0 [+ second- and third-order terms in D1, D2]
            SDE: x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D0 [+ ...] + sigma_t sqrt(1 - e^-2h) z

        The order is min(solver_order, steps so far + 1), lowered on the last steps as the config says.
        """
        c = self.config
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self.step_index is None:
            self.step_index = first_step_index(self.timesteps, timestep)
        i, n = self.step_index, len(self.timesteps)
        final = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        second_last = i == n - 2 and c.lower_order_final and n < 15

        alpha_s, sigma_s, _ = alpha_sigma_lambda(self.sigmas[i])
        x0 = data_prediction(model_output, sample, alpha_s, sigma_s, c.prediction_type)
        if c.thresholding:
            x0 = dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        self.model_outputs = (self.model_outputs + [x0])[-c.solver_order:]

        x_s = sample.to(torch.float32)
        z = None
        if self.stochastic:
            z = (variance_noise.to(model_output.device, torch.float32) if variance_noise is not None else
                 randn_tensor(model_output.shape, generator, model_output.device, torch.float32))
        order = min(c.solver_order, len(self.model_outputs))
        if final:
            order = 1
        elif second_last:
            order = min(order, 2)
        x_t = (self._first_order, self._second_order, self._third_order)[order - 1](x_s, z)

        self.step_index += 1
        x_t = x_t.to(model_output.dtype)
        return DPMSolverMultistepSchedulerOutput(prev_sample=x_t) if return_dict else (x_t,)

    def _first_order(self, x_s, z):
        """DPM-Solver++1 = DDIM in the log-SNR (DPM-Solver++ eq. 10); the SDE one is its noisy counterpart."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s, lambda_s = alpha_sigma_lambda(self.sigmas[i])
        h = lambda_t - lambda_s
        D0 = self.model_outputs[-1]
        if z is None:
            return (sigma_t / sigma_s) * x_s - (alpha_t * (torch.exp(-h) - 1.0)) * D0
        return ((sigma_t / sigma_s * torch.exp(-h)) * x_s + (alpha_t * (1 - torch.exp(-2.0 * h))) * D0
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * z)

    def _second_order(self, x_s, z):
        """DPM-Solver++(2M) (Algorithm 2): D1 = (x0_0 - x0_1) / r0, r0 = h_prev / h. "midpoint" weighs D1 by
        -(e^-h - 1) / 2, "heun" by the exact phi_2 coefficient ((e^-h - 1) / h + 1)."""
        i, solver_type = self.step_index, self.config.solver_type
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s0, lambda_s0 = alpha_sigma_lambda(self.sigmas[i])
        _, _, lambda_s1 = alpha_sigma_lambda(self.sigmas[i - 1])
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        if z is None:
            x_t = (sigma_t / sigma_s0) * x_s - (alpha_t * (torch.exp(-h) - 1.0)) * D0
            if solver_type == "midpoint":
                return x_t - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
            return x_t + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
        x_t = (sigma_t / sigma_s0 * torch.exp(-h)) * x_s + (alpha_t * (1 - torch.exp(-2.0 * h))) * D0
        if solver_type == "midpoint":
            x_t = x_t + 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * D1
        else:
            x_t = x_t + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
        return x_t + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * z

    def _third_order(self, x_s, z):
        """DPM-Solver++(3M): D1 and D2 from the last three x0 predictions by divided differences
        (DPM-Solver, Lu et al. 2022a, Algorithm 3 and appendix B, in the data-prediction form)."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s0, lambda_s0 = alpha_sigma_lambda(self.sigmas[i])
        _, _, lambda_s1 = alpha_sigma_lambda(self.sigmas[i - 1])
        _, _, lambda_s2 = alpha_sigma_lambda(self.sigmas[i - 2])
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D0 = m0
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        if z is None:
            return ((sigma_t / sigma_s0) * x_s - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                    + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
                    - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2)
        return ((sigma_t / sigma_s0 * torch.exp(-h)) * x_s + (alpha_t * (1.0 - torch.exp(-2.0 * h))) * D0
                + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
                + (alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * z)

