"""diffusers' DDIM scheduler tests (tests/schedulers/test_scheduler_ddim.py, v0.35.2), rewritten for our DDIMScheduler
with their expected values and tolerances; the common scheduler checks it inherits (test_schedulers.py), DDIM's
test_from_save_pretrained included, run on all four samplers in test_upstream_schedulers.py.

Not ported: upstream's test_betas pair (0.1, 2), since betas above 1 are refused here (tests/test_bad_input.py), and
test_getattr_is_correct (see test_upstream_schedulers.py's docstring). The unmodified upstream file runs as a
developer step (tests/upstream/README.md).
"""

import pytest
import torch
from conftest import UPSTREAM_CONFIGS, ramp, toy_loop

from i2vgen import DDIMScheduler

BASE = UPSTREAM_CONFIGS["DDIMScheduler"]
STEPS = 50  # upstream's default num_inference_steps


def scheduler(**config) -> DDIMScheduler:
    return DDIMScheduler(**{**BASE, **config})


def random_sample() -> torch.Tensor:
    return torch.rand(4, 3, 8, 8)


def same_after_save_load(tmp_path, time_step=0, num_inference_steps=STEPS, eta=0.0, **config):
    """Upstream's check_over_configs / check_over_forward: a scheduler and its saved-and-reloaded copy give
    the same step (sum of |difference| < 1e-5)."""
    first = scheduler(**config)
    first.save_pretrained(tmp_path)
    second = DDIMScheduler.from_pretrained(tmp_path)
    sample = random_sample()
    outputs = []
    for s in (first, second):
        s.set_timesteps(num_inference_steps)
        assert s.scale_model_input(sample, s.timesteps[-1]).shape == sample.shape
        outputs.append(s.step(0.1 * sample, time_step, sample, eta=eta, generator=torch.manual_seed(0)).prev_sample)
    assert torch.sum(torch.abs(outputs[0] - outputs[1])) < 1e-5


@pytest.mark.parametrize("config", [
    *[dict(num_train_timesteps=n) for n in (100, 500, 1000)],                              # test_timesteps
    *[dict(steps_offset=n) for n in (0, 1)],                                               # test_steps_offset
    # test_betas, less upstream's (0.1, 2): betas above 1 are refused here (tests/test_bad_input.py)
    *[dict(beta_start=a, beta_end=b) for a, b in zip([0.0001, 0.001, 0.01], [0.002, 0.02, 0.2])],
    *[dict(beta_schedule=s) for s in ("linear", "squaredcos_cap_v2")],                     # test_schedules
    *[dict(prediction_type=p) for p in ("epsilon", "v_prediction")],                       # test_prediction_type
    *[dict(clip_sample=c) for c in (True, False)],                                         # test_clip_sample
    *[dict(timestep_spacing=s) for s in ("trailing", "leading")],                          # test_timestep_spacing
    *[dict(rescale_betas_zero_snr=r) for r in (True, False)],                              # test_rescale_betas_zero_snr
    dict(thresholding=False),                                                              # test_thresholding
    *[dict(thresholding=True, prediction_type=p, sample_max_value=m)
      for m in (0.5, 1.0, 2.0) for p in ("epsilon", "v_prediction")],
])
def test_over_configs(tmp_path, config):
    same_after_save_load(tmp_path, **config)


@pytest.mark.parametrize("time_step, num_inference_steps, eta", [
    (1, STEPS, 0.0), (10, STEPS, 0.0), (49, STEPS, 0.0),      # test_time_indices
    (1, 10, 0.0), (10, 50, 0.0), (50, 500, 0.0),              # test_inference_steps
    (1, STEPS, 0.0), (10, STEPS, 0.5), (49, STEPS, 1.0),      # test_eta
])
def test_over_forward(tmp_path, time_step, num_inference_steps, eta):
    same_after_save_load(tmp_path, time_step, num_inference_steps, eta)


def test_steps_offset_timesteps():
    s = scheduler(steps_offset=1)
    s.set_timesteps(5)
    assert torch.equal(s.timesteps, torch.LongTensor([801, 601, 401, 201, 1]))


@pytest.mark.parity  # upstream's values, recorded from the reference: scripts/test.sh reruns on other kernels
@pytest.mark.parametrize("t, t_prev, expected", [
    (0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979), (999, 998, 0.02)])
def test_variance(t, t_prev, expected):
    """Upstream reads the private _get_variance(t, t_prev); we read the same quantity off a step: with eta = 1,
    a zero sample and model output and unit noise, x_{t-1} = sigma_t exactly, and sigma_t^2 is the variance."""
    s = scheduler()
    s.set_timesteps(1000 // (t - t_prev) if t > t_prev else 1000)  # t_prev = t - 1000 // steps
    zero = torch.zeros(1, 1, 1, 1)
    sigma = s.step(zero, t, zero, eta=1.0, variance_noise=torch.ones(1, 1, 1, 1)).prev_sample
    assert abs(sigma.item() ** 2 - expected) < 1e-5


def full_loop(**config) -> torch.Tensor:
    s = scheduler(**config)
    s.set_timesteps(10)
    return toy_loop(s, ramp())


@pytest.mark.parity  # upstream's values, recorded from the reference: scripts/test.sh reruns on other kernels
@pytest.mark.parametrize("config, total, mean", [
    (dict(), 172.0067, 0.223967),                                         # test_full_loop_no_noise
    (dict(prediction_type="v_prediction"), 52.5302, 0.0684),              # test_full_loop_with_v_prediction
    (dict(set_alpha_to_one=True, beta_start=0.01), 149.8295, 0.1951),     # test_full_loop_with_set_alpha_to_one
    (dict(set_alpha_to_one=False, beta_start=0.01), 149.0784, 0.1941),    # test_full_loop_with_no_set_alpha_to_one
])
def test_full_loop(config, total, mean):
    sample = full_loop(**config)
    assert abs(sample.abs().sum().item() - total) < 1e-2
    assert abs(sample.abs().mean().item() - mean) < 1e-3


@pytest.mark.parity  # upstream's values, recorded from the reference: scripts/test.sh reruns on other kernels
def test_full_loop_with_noise():
    s = scheduler()
    s.set_timesteps(10)
    timesteps = s.timesteps[8 * s.order:]
    sample = toy_loop(s, s.add_noise(ramp(), ramp(flip=True), timesteps[:1]), timesteps)
    assert abs(sample.abs().sum().item() - 354.5418) < 1e-2
    assert abs(sample.abs().mean().item() - 0.4616) < 1e-3
