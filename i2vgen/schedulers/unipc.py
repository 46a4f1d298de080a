"""UniPC multistep sampler (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), in its data-prediction form.

Like DPM-Solver++ it integrates x_t = (sigma_t / sigma_s) x_s + sigma_t int e^lambda x0_theta dlambda over the
log-SNR step h = lambda_t - lambda_s with a polynomial through previous x0 predictions. Two things are new:
- B(h): the paper shows any B(h) = O(h) gives the same order; "bh1" is B(h) = h, "bh2" is B(h) = e^h - 1
  (sec. 3.2, Table 1), the latter better at few steps;
- the corrector UniC (sec. 3.1): once the model has been evaluated at the new point x_t (which the next step needs
  anyway), x_t is recomputed with that evaluation included, raising the order by one at no extra model cost.

Same config keys, timesteps and numbers as diffusers' UniPCMultistepScheduler (float32 step math), with
predict_x0 = True (the data-prediction form the paper recommends for guided sampling).
"""

from dataclasses import dataclass

import numpy as np
import torch

from i2vgen.schedulers.base import (MultistepConfig, SchedulerMixin, SchedulerOutput, check_choice,
                                     check_step_shapes)
from i2vgen.schedulers.schedule import (alpha_sigma, alpha_sigma_lambda, check_num_inference_steps,
                                        dynamic_threshold, final_sigma,  make_betas, sigmas_at,
                                        sigmas_from_alphas_cumprod, sigmas_of, solver_alphas_cumprod,
                                        solver_timesteps, with_final, x0_and_eps)
from i2vgen.schedulers.sigmas import formula_sigmas, sigma_to_t

SOLVER_TYPES = ("bh1", "bh2")


@dataclass
class UniPCMultistepSchedulerConfig(MultistepConfig):
    predict_x0: bool = True
    solver_type: str = "bh2"
    disable_corrector: tuple[int, ...] = ()  # step indices whose result is not corrected
    solver_p: object = None  # the reference's optional helper solver; only None (none) is accepted


class UniPCMultistepScheduler(SchedulerMixin):
    """The reference's UniPCMultistepScheduler. Usage, as DDIM's:

        scheduler.set_timesteps(15)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t), t, x).prev_sample

    The corrector of step k runs at the start of step k + 1, when the model output at x_t is known; so the
    sample a step returns is the predictor's, and the final one is uncorrected.
    """

    config_class = UniPCMultistepSchedulerConfig
    init_noise_sigma = 1.0
    stochastic = False

    @classmethod
    def _translate(cls, keys: dict) -> dict:
        """As the reference: another solver family's solver_type becomes UniPC's default "bh2"."""
        if keys.get("solver_type") in ("midpoint", "heun", "logrho"):
            return {**keys, "solver_type": "bh2"}
        return keys

    def _setup(self):
        c = self.config
        check_choice("solver_type", c.solver_type, SOLVER_TYPES)
        check_choice("solver_order", c.solver_order, (1, 2, 3))
        check_choice("predict_x0", c.predict_x0, (True,))
        self.betas = make_betas(c)
        self.alphas_cumprod = solver_alphas_cumprod(c, self.betas)  # alpha_bar_t; the zero-SNR last one is 2**-24
        self.num_inference_steps = None
        self.timesteps = self.sigmas = None

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        c = self.config
        num_inference_steps = check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
        train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()
        sigmas = formula_sigmas(c, np.flip(train_sigmas).copy(), num_inference_steps)
        if sigmas is None:
            timesteps = solver_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps,
                                         c.steps_offset)
            self.sigmas = sigmas_at(timesteps, self.alphas_cumprod, final_sigma(c, self.alphas_cumprod))
        else:  # "sigma_min" ends at the formula's last sigma here, not at train step 0's (as the reference)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
            if c.use_karras_sigmas:
                timesteps = timesteps.round()  # the reference rounds Karras timesteps only
            self.sigmas = with_final(sigmas, 0.0 if c.final_sigmas_type == "zero" else sigmas[-1])
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = []  # x0 predictions of the last solver_order steps, oldest first
        self.lower_order_nums = 0  # steps taken so far (up to solver_order): the warm-up uses lower orders
        self.last_sample = None  # x_s of the previous step, for its corrector
        self.this_order = None  # the order of the previous step's predictor
        self.step_index = self.begin_index = None

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample  # the solver feeds x_t to the model unscaled

    def add_noise(self, original_samples, noise, timesteps) -> torch.Tensor:
        """x_t = alpha_t x0 + sigma_t eps at each sample's timestep of the step schedule (call set_timesteps first)."""
        alpha_t, sigma_t = alpha_sigma(sigmas_of(timesteps, self.timesteps, self.sigmas, original_samples))
        return alpha_t * original_samples + sigma_t * noise

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        """Correct the previous step's result with this model output (UniC), then predict the next sample (UniP)."""
        c = self.config
        check_step_shapes(model_output, sample)
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        alpha, sigma, _ = alpha_sigma_lambda(self.sigmas[i])
        x0, _ = x0_and_eps(model_output, sample, alpha, sigma, c.prediction_type)
        if c.thresholding:
            x0 = dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)

        if i > 0 and i - 1 not in c.disable_corrector and self.last_sample is not None:
            sample = self._corrector(x0, self.last_sample, sample, self.this_order)
        self.model_outputs = (self.model_outputs + [x0])[-c.solver_order:]
        order = min(c.solver_order, len(self.timesteps) - i) if c.lower_order_final else c.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: as many as there are
        self.last_sample = sample
        x_t = self._predictor(sample, self.this_order)

        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.step_index += 1
        return SchedulerOutput(prev_sample=x_t) if return_dict else (x_t,)

    def _coefficients(self, h: torch.Tensor, rks: list, order: int):
        """The B(h) and the order conditions of UniPC (Algorithm 2 / eq. 8 with B(h)): with hh = -h (data
        prediction), h phi_1 = e^hh - 1, phi_{k+1} = (phi_k - 1/k!) / hh, the right-hand side
        b_k = (h phi_{k+1} k! / B(h)) and the Vandermonde rows R_k = r^(k-1) over r = (r_1, .., r_{p-1}, 1)."""
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        rks = torch.tensor([*rks, 1.0])
        R, b, factorial_i = [], [], 1
        for k in range(1, order + 1):
            R.append(torch.pow(rks, k - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        return h_phi_1, B_h, torch.stack(R), torch.tensor(b)

    def _differences(self, i_s0: int, lambda_s0, h, order: int):
        """r_k = (lambda_{s_k} - lambda_{s0}) / h and D_k = (x0_k - x0_0) / r_k over the previous x0 predictions
        (x0_0 is the newest stored one, at schedule position i_s0; the k-th older one is at i_s0 - k)."""
        m0 = self.model_outputs[-1]
        rks, D1s = [], []
        for k in range(1, order):
            _, _, lambda_sk = alpha_sigma_lambda(self.sigmas[i_s0 - k])
            rk = (lambda_sk - lambda_s0) / h
            rks.append(rk)
            D1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        return m0, rks, D1s

    def _predictor(self, x_s, order: int):
        """UniP-p (sec. 3.2, eq. 8): x_t = (sigma_t / sigma_s) x_s - alpha_t h phi_1 x0_s - alpha_t B(h) sum_k
        a_k D_k, with a solving the first p - 1 order conditions (a = 1/2 for p = 2)."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s0, lambda_s0 = alpha_sigma_lambda(self.sigmas[i])
        h = lambda_t - lambda_s0
        m0, rks, D1s = self._differences(i, lambda_s0, h, order)
        h_phi_1, B_h, R, b = self._coefficients(h, rks, order)
        x_t = sigma_t / sigma_s0 * x_s - alpha_t * h_phi_1 * m0
        if D1s:
            rhos_p = (torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])).to(x_s.dtype)
            x_t = x_t - alpha_t * B_h * torch.einsum("k,bkc...->bc...", rhos_p, torch.stack(D1s, dim=1))
        return x_t.to(x_s.dtype)

    def _corrector(self, x0_t, x_s, x_t, order: int):
        """UniC-p (sec. 3.1, eq. 6): the same update from x_s, now with the model output at x_t as one more point:
        x_t^c = (sigma_t / sigma_s) x_s - alpha_t h phi_1 x0_s - alpha_t B(h) (sum_k c_k D_k + c_p (x0_t - x0_s)),
        c solving all p order conditions (c = 1/2 for p = 1)."""
        i = self.step_index  # the corrected point x_t is at position i, x_s at i - 1
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(self.sigmas[i])
        _, sigma_s0, lambda_s0 = alpha_sigma_lambda(self.sigmas[i - 1])
        h = lambda_t - lambda_s0
        m0, rks, D1s = self._differences(i - 1, lambda_s0, h, order)
        h_phi_1, B_h, R, b = self._coefficients(h, rks, order)
        rhos_c = (torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)).to(x_s.dtype)
        correction = rhos_c[-1] * (x0_t - m0)
        if D1s:
            correction = torch.einsum("k,bkc...->bc...", rhos_c[:-1], torch.stack(D1s, dim=1)) + correction
        x_t = sigma_t / sigma_s0 * x_s - alpha_t * h_phi_1 * m0 - alpha_t * B_h * correction
        return x_t.to(x_s.dtype)
