"""DPM-Solver++ multistep sampler (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), its SDE variant, and the original noise-prediction DPM-Solver (Lu et al. 2022a).

The probability-flow ODE in the log-SNR lambda_t = log(alpha_t / sigma_t), written for the data prediction x0_theta:

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_theta(x_lambda) dlambda   (eq. 9)

or for the noise prediction eps_theta ("dpmsolver", DPM-Solver eq. 3.4):

    x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^-lambda eps_theta(x_lambda) dlambda

Each step integrates it exactly for a polynomial of x0_theta (or eps_theta) in lambda through the last 1, 2 or 3
model outputs ("multistep": one model evaluation per step). h = lambda_t - lambda_s is the step in log-SNR.

Same config keys, timesteps and numbers as diffusers' DPMSolverMultistepScheduler (float32 step math), for the
algorithm types "dpmsolver++", "sde-dpmsolver++", "dpmsolver" and "sde-dpmsolver".
"""

from dataclasses import dataclass

import numpy as np
import torch

from i2vgen.noise import randn_tensor
from i2vgen.schedulers.base import (MultistepConfig, SchedulerMixin, SchedulerOutput, check_choice,
                                     check_step_shapes)
from i2vgen.schedulers.schedule import (alpha_sigma, as_numpy, alpha_sigma_lambda, check_num_inference_steps,
                                        dynamic_threshold, final_sigma,  log_snr, make_betas,
                                        sigmas_at, sigmas_from_alphas_cumprod, sigmas_of, solver_alphas_cumprod,
                                        solver_timesteps, with_final, x0_and_eps)
from i2vgen.schedulers.sigmas import formula_sigmas, lu_sigmas, sigma_to_t

ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
SOLVER_TYPES = ("midpoint", "heun")
VARIANCE_TYPES = (None, "learned", "learned_range")


@dataclass
class DPMSolverMultistepSchedulerConfig(MultistepConfig):
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"  # how the second-order term is formed (DPM-Solver sec. 3.3 / appendix)
    euler_at_final: bool = False  # first order on the very last step
    use_lu_lambdas: bool = False  # steps evenly spaced in lambda (DPM-Solver sec. 3.4)
    lambda_min_clipped: float = -float("inf")  # cut the schedule where lambda falls below this
    variance_type: str | None = None  # "learned(_range)": the model also predicts a variance, dropped here


class DPMSolverMultistepScheduler(SchedulerMixin):
    """The reference's DPMSolverMultistepScheduler. Usage, as DDIM's:

        scheduler.set_timesteps(20)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample

    With the "sde-" types every step adds fresh noise: `variance_noise`, or drawn from `generator`.
    """

    config_class = DPMSolverMultistepSchedulerConfig
    init_noise_sigma = 1.0

    @classmethod
    def _translate(cls, keys: dict) -> dict:
        """As the reference: another solver family's solver_type becomes "midpoint", DEIS's algorithm "dpmsolver++"."""
        if keys.get("solver_type") in ("logrho", "bh1", "bh2"):
            keys = {**keys, "solver_type": "midpoint"}
        return {**keys, "algorithm_type": "dpmsolver++"} if keys.get("algorithm_type") == "deis" else keys

    def _setup(self):
        c = self.config
        check_choice("algorithm_type", c.algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", c.solver_type, SOLVER_TYPES)
        check_choice("solver_order", c.solver_order, (1, 2, 3))
        check_choice("variance_type", c.variance_type, VARIANCE_TYPES)
        if not self.data_prediction and c.final_sigmas_type == "zero":
            raise ValueError(f"final_sigmas_type 'zero' needs algorithm_type dpmsolver++ or sde-dpmsolver++, not "
                             f"{c.algorithm_type!r}: use final_sigmas_type='sigma_min'")
        if c.algorithm_type == "sde-dpmsolver" and c.solver_order == 3:
            raise ValueError("algorithm_type 'sde-dpmsolver' has solver_order 1 or 2, not 3")
        self.betas = make_betas(c)
        self.alphas_cumprod = solver_alphas_cumprod(c, self.betas)  # alpha_bar_t; the zero-SNR last one is 2**-24
        alpha_t, sigma_t = self.alphas_cumprod**0.5, (1 - self.alphas_cumprod) ** 0.5
        self.lambda_t = log_snr(alpha_t, sigma_t)
        self.num_inference_steps = None
        self.timesteps = self.sigmas = None

    @property
    def stochastic(self) -> bool:
        """Whether each step draws fresh noise (the SDE variants)."""
        return self.config.algorithm_type.startswith("sde-")

    @property
    def data_prediction(self) -> bool:
        """Whether the solver integrates x0 predictions (DPM-Solver++) rather than noise predictions."""
        return self.config.algorithm_type.endswith("++")

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None) -> None:
        """The step schedule: num_inference_steps spaced as the config says, or the given `timesteps`."""
        c = self.config
        formula = c.use_karras_sigmas or c.use_exponential_sigmas or c.use_beta_sigmas or c.use_lu_lambdas
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("set_timesteps takes either num_inference_steps or timesteps")
        if timesteps is not None and formula:
            raise ValueError("timesteps cannot be given with use_karras_sigmas, use_exponential_sigmas, "
                             "use_beta_sigmas or use_lu_lambdas, which place the steps themselves")
        train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()
        last = final_sigma(c, self.alphas_cumprod)
        if formula:
            n = check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
            sigmas = self._formula_sigmas(train_sigmas, n)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
            if (c.use_karras_sigmas or c.use_lu_lambdas) and c.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()  # the reference rounds these two only (and not for cosine)
            self.sigmas = with_final(sigmas, last)
        else:
            if timesteps is None:
                n = check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
                # lambda_min_clipped: drop the train steps whose log-SNR is below it from the end of the schedule.
                clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), c.lambda_min_clipped))
                timesteps = solver_timesteps(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset,
                                             last_timestep=c.num_train_timesteps - clipped)
            timesteps = as_numpy(timesteps, np.int64)
            self.sigmas = sigmas_at(timesteps, self.alphas_cumprod, last)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = []  # converted outputs of the last solver_order steps, oldest first
        self.lower_order_nums = 0  # steps taken so far (up to solver_order): the warm-up uses lower orders
        self.step_index = self.begin_index = None

    def _formula_sigmas(self, train_sigmas: np.ndarray, n: int) -> np.ndarray:
        """Karras / exponential / beta sigmas (sigmas.py), or Lu's evenly spaced log-SNR."""
        if self.config.use_lu_lambdas:
            log_sigmas = np.log(train_sigmas)
            return lu_sigmas(log_sigmas[0].item(), log_sigmas[-1].item(), n)
        return formula_sigmas(self.config, np.flip(train_sigmas).copy(), n)

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample  # the solver feeds x_t to the model unscaled

    def add_noise(self, original_samples, noise, timesteps) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps at each sample's timestep of the step schedule (call set_timesteps first)."""
        alpha_t, sigma_t = alpha_sigma(sigmas_of(timesteps, self.timesteps, self.sigmas, original_samples))
        return alpha_t * original_samples + sigma_t * noise

    def convert_model_output(self, model_output, sample) -> torch.Tensor:
        """What the solver integrates: the x0 prediction (DPM-Solver++) or the noise prediction (DPM-Solver), with
        dynamic thresholding applied to x0. A learned variance (channels after the first 3, as in the reference,
        whose learned-variance models predict 3 noise channels) is dropped."""
        c = self.config
        if c.variance_type in ("learned", "learned_range") and c.prediction_type == "epsilon":
            model_output = model_output[:, :3]
        alpha_s, sigma_s = alpha_sigma(self.sigmas[self.step_index])
        x0, eps = x0_and_eps(model_output, sample, alpha_s, sigma_s, c.prediction_type)
        if not c.thresholding:
            return x0 if self.data_prediction else eps
        if not self.data_prediction:  # x0 recomputed from eps, as the reference does
            x0 = x0_and_eps(eps, sample, alpha_s, sigma_s, "epsilon")[0]
        x0 = dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        return x0 if self.data_prediction else x0_and_eps(x0, sample, alpha_s, sigma_s, "sample")[1]

    def step(self, model_output, timestep, sample, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """One step x_s -> x_t of DPM-Solver++(kM) (Lu et al. 2022, Algorithm 2 for k = 2; sec. 4 for the SDE).

        With x0_0, x0_1, x0_2 the data predictions at this and the two previous steps, r_i the ratios of the
        previous log-SNR steps to h, D0 = x0_0 and D1, D2 the first and second divided differences scaled by h:

            ODE: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D0 [+ second- and third-order terms in D1, D2]
            SDE: x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D0 [+ ...] + sigma_t sqrt(1 - e^-2h) z

        (DPM-Solver: the same with eps predictions, alpha and sigma swapped and h negated.) The order is
        min(solver_order, steps so far + 1), lowered on the last steps as the config says.
        """
        c = self.config
        check_step_shapes(model_output, sample)
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self.step_index is None:
            self._init_step_index(timestep)
        i, n = self.step_index, len(self.timesteps)
        final = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        second_last = i == n - 2 and c.lower_order_final and n < 15

        self.model_outputs = (self.model_outputs + [self.convert_model_output(model_output, sample)])[-c.solver_order:]
        x_s = sample.to(torch.float32)
        z = None
        if self.stochastic:
            z = (variance_noise.to(model_output.device, torch.float32) if variance_noise is not None else
                 randn_tensor(model_output.shape, generator, model_output.device, torch.float32))
        order = min(c.solver_order, self.lower_order_nums + 1)
        if final:
            order = 1
        elif second_last:
            order = min(order, 2)
        x_t = (self._first_order, self._second_order, self._third_order)[order - 1](x_s, z)

        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index += 1
        x_t = x_t.to(model_output.dtype)
        return SchedulerOutput(prev_sample=x_t) if return_dict else (x_t,)

    def _first_order(self, x_s, z):
        """DPM-Solver++1 = DDIM in the log-SNR (DPM-Solver++ eq. 10); the SDE one is its noisy counterpart.
        DPM-Solver-1 (noise form): x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_s."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[i + 1])
        alpha_s, sigma_s, lambda_s = alpha_sigma_lambda(self.sigmas[i])
        h = lambda_t - lambda_s
        D0 = self.model_outputs[-1]
        if not self.data_prediction:
            x_t = (alpha_t / alpha_s) * x_s - (1.0 if z is None else 2.0) * (sigma_t * (torch.exp(h) - 1.0)) * D0
            return x_t if z is None else x_t + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * z
        if z is None:
            return (sigma_t / sigma_s) * x_s - (alpha_t * (torch.exp(-h) - 1.0)) * D0
        return ((sigma_t / sigma_s * torch.exp(-h)) * x_s + (alpha_t * (1 - torch.exp(-2.0 * h))) * D0
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * z)

    def _differences(self, order: int):
        """(alpha_t, sigma_t, alpha_s0, sigma_s0, h, r0, r1) for the step from position i: h the log-SNR step, r_k
        the previous log-SNR steps over h (r1 only for order 3)."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[i + 1])
        alpha_s0, sigma_s0, lambda_s0 = alpha_sigma_lambda(self.sigmas[i])
        _, _, lambda_s1 = alpha_sigma_lambda(self.sigmas[i - 1])
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r1 = None
        if order == 3:
            r1 = (lambda_s1 - alpha_sigma_lambda(self.sigmas[i - 2])[2]) / h
        return alpha_t, sigma_t, alpha_s0, sigma_s0, h, h_0 / h, r1

    def _second_order(self, x_s, z):
        """DPM-Solver++(2M) (Algorithm 2): D1 = (x0_0 - x0_1) / r0, r0 = h_prev / h. "midpoint" weighs D1 by
        -(e^-h - 1) / 2, "heun" by the exact phi_2 coefficient ((e^-h - 1) / h + 1)."""
        alpha_t, sigma_t, alpha_s0, sigma_s0, h, r0, _ = self._differences(2)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        if not self.data_prediction:
            return self._noise_second_order(x_s, z, alpha_t, sigma_t, alpha_s0, h, D0, D1)
        midpoint = self.config.solver_type == "midpoint"
        if z is None:
            x_t = (sigma_t / sigma_s0) * x_s - (alpha_t * (torch.exp(-h) - 1.0)) * D0
            if midpoint:
                return x_t - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
            return x_t + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
        x_t = (sigma_t / sigma_s0 * torch.exp(-h)) * x_s + (alpha_t * (1 - torch.exp(-2.0 * h))) * D0
        if midpoint:
            x_t = x_t + 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * D1
        else:
            x_t = x_t + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
        return x_t + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * z

    def _noise_second_order(self, x_s, z, alpha_t, sigma_t, alpha_s0, h, D0, D1):
        """DPM-Solver-2M in the noise form (DPM-Solver++ appendix, eq. for "dpmsolver"); the SDE variant doubles the
        eps terms and adds sigma_t sqrt(e^2h - 1) z."""
        k = 1.0 if z is None else 2.0
        x_t = (alpha_t / alpha_s0) * x_s - k * (sigma_t * (torch.exp(h) - 1.0)) * D0
        if self.config.solver_type == "midpoint":
            x_t = x_t - (0.5 * k) * (sigma_t * (torch.exp(h) - 1.0)) * D1
        else:
            x_t = x_t - k * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
        return x_t if z is None else x_t + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * z

    def _third_order(self, x_s, z):
        """DPM-Solver++(3M): D1 and D2 from the last three x0 predictions by divided differences
        (DPM-Solver, Lu et al. 2022a, Algorithm 3 and appendix B, in the data-prediction form)."""
        alpha_t, sigma_t, alpha_s0, sigma_s0, h, r0, r1 = self._differences(3)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        D0 = m0
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        if not self.data_prediction:  # "dpmsolver" (the SDE variant has no third order)
            return ((alpha_t / alpha_s0) * x_s - (sigma_t * (torch.exp(h) - 1.0)) * D0
                    - (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
                    - (sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)) * D2)
        if z is None:
            return ((sigma_t / sigma_s0) * x_s - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                    + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
                    - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * D2)
        return ((sigma_t / sigma_s0 * torch.exp(-h)) * x_s + (alpha_t * (1.0 - torch.exp(-2.0 * h))) * D0
                + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1
                + (alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * z)
