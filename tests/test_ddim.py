"""DDIM: pure schedule functions, then every fixture case against the reference's recorded run.

Fixtures (tests/fixtures/README.md, "DDIM cases"): ddim/cases.json, ddim/<case>/scheduler_config.json written
by the reference's save_pretrained, ddim/ddim.safetensors with timesteps, alphas_cumprod and every step's
model_output / prev_sample / pred_original_sample.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import rel_error

from i2vgen.schedulers.ddim import DDIMScheduler, DDIMSchedulerConfig
from i2vgen.schedulers.schedule import (
    leading_timesteps,
    linear_betas,
    linspace_timesteps,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    squaredcos_cap_v2_betas,
    trailing_timesteps,
)

pytestmark = pytest.mark.parity  # recorded reference outputs: scripts/test.sh reruns these on other kernels
FIXTURES = Path(os.environ.get("I2VGEN_FIXTURES", Path(__file__).parent / "fixtures")) / "ddim"
CASES = json.loads((FIXTURES / "cases.json").read_text())

# Step outputs: a few float32 ulps relative to the tensor's scale. Our step does the reference's arithmetic in
# the same order (bit-identical on the recording machine, and on AVX2 CPUs with their own kernels); the slack covers
# CPU-dependent code paths. Measured (tests/fixtures/README.md): the reference's own step on the recorded inputs
# moves by up to 1.2e-6 of the scale (epsilon_clip's pred_original_sample) with torch's scalar kernels
# (ATEN_CPU_CAPABILITY=default), as ours does; 3e-6 (~25 ulps) is 2.5x that.
STEP_RTOL = 3e-6
# Schedules: computed as the reference does; the slack covers the kernels' last bits in cos / sqrt / cumprod.
# Measured: with the scalar kernels both the reference's and our alphas_cumprod move by up to 5.5e-7 element-wise
# (zero_snr_trailing, ~4.6 ulps); 1e-6 is 1.8x that.
SCHEDULE_RTOL = 1e-6


@pytest.fixture(scope="module")
def recorded():
    return load_file(FIXTURES / "ddim.safetensors")


# ---- pure functions ----

def test_linear_and_scaled_linear_endpoints():
    betas = linear_betas(1e-4, 0.02, 1000)
    assert betas.dtype == torch.float32 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-7) and betas[-1].item() == pytest.approx(0.02, rel=1e-7)
    scaled = scaled_linear_betas(0.00085, 0.012, 1000)
    assert scaled[0].item() == pytest.approx(0.00085, rel=1e-6) and scaled[-1].item() == pytest.approx(0.012, rel=1e-6)
    assert torch.all(scaled.sqrt().diff() > 0)  # linear in sqrt(beta)


def test_squaredcos_cap_v2_follows_alpha_bar():
    """alpha_bar_t = prod(1 - beta) equals f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2) (Nichol & Dhariwal
    eq. 17), until the 0.999 cap bites at the very end."""
    n = 1000
    betas = squaredcos_cap_v2_betas(n)
    f = lambda t: math.cos((t / n + 0.008) / 1.008 * math.pi / 2) ** 2
    alpha_bar = torch.cumprod(1 - betas.double(), 0)
    expected = torch.tensor([f(t + 1) / f(0) for t in range(n)], dtype=torch.float64)
    # float32 betas: each carries ~6e-8 relative error, accumulated over the 900 products
    torch.testing.assert_close(alpha_bar[:900], expected[:900], rtol=1e-5, atol=0)
    assert betas[-1].item() == pytest.approx(0.999)  # capped


def test_rescale_zero_terminal_snr():
    betas = scaled_linear_betas(0.00085, 0.012, 1000)
    rescaled = rescale_zero_terminal_snr(betas)
    alpha_bar = torch.cumprod(1 - rescaled, 0)
    assert alpha_bar[-1].item() == 0.0  # zero SNR at the last step: pure noise
    # first step kept (up to float32 rounding of the shift-and-scale)
    assert alpha_bar[0].item() == pytest.approx(1 - betas[0].item(), rel=1e-6)
    assert torch.all(alpha_bar.diff() <= 0)


def test_spacings_table_2():
    """T = 1000, 10 steps: Lin et al. 2024, Table 2."""
    assert leading_timesteps(1000, 10).tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert leading_timesteps(1000, 10, steps_offset=1).tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert trailing_timesteps(1000, 10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert linspace_timesteps(1000, 10).tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_trailing_never_yields_extra_step():
    """The reference's float-step arange yields n + 1 values (the last being timestep -1) for some n, e.g. 61;
    we keep exactly n."""
    for n in (61, 103, 121):
        timesteps = trailing_timesteps(1000, n)
        assert len(timesteps) == n and timesteps.min() >= 0


def test_dynamic_thresholding():
    """Imagen's dynamic thresholding, hand-computed: |x0| takes the values 0.00, 0.01, ..., 2.00 (201 values), so the
    0.995 quantile sits exactly on index 199 of the sorted values: s = 1.99, then x0 -> clip(x0, -s, s) / s."""
    x0 = (torch.arange(201, dtype=torch.float32) / 100 * torch.tensor([1.0, -1.0]).repeat(101)[:201]).reshape(1, 1, 201)
    for max_value, s in ((3.0, 1.99), (1.5, 1.5)):
        scheduler = DDIMScheduler(prediction_type="sample", thresholding=True, sample_max_value=max_value)
        scheduler.set_timesteps(10)
        out = scheduler.step(x0, scheduler.timesteps[0], torch.zeros_like(x0)).pred_original_sample
        torch.testing.assert_close(out, x0.clamp(-s, s) / s, rtol=1e-6, atol=1e-7)  # float32 quantile interpolation


# ---- parity with the reference ----

@pytest.mark.parametrize("case", list(CASES))
def test_case_matches_reference(case, recorded):
    settings = CASES[case]
    scheduler = DDIMScheduler.from_pretrained(FIXTURES / case)  # the reference's scheduler_config.json
    assert scheduler.config == DDIMScheduler(**settings["config"]).config

    torch.testing.assert_close(scheduler.alphas_cumprod, recorded[f"{case}/alphas_cumprod"], rtol=SCHEDULE_RTOL, atol=0)
    scheduler.set_timesteps(settings["num_inference_steps"])
    assert torch.equal(scheduler.timesteps, recorded[f"{case}/timesteps"])

    generator = None
    if settings["generator_seed"] is not None:
        generator = torch.Generator().manual_seed(settings["generator_seed"])
    sample = recorded[f"{case}/sample"]
    for i, t in enumerate(scheduler.timesteps):
        out = scheduler.step(recorded[f"{case}/model_output/{i}"], t, sample, eta=settings["eta"],
                             use_clipped_model_output=settings["use_clipped_model_output"], generator=generator)
        assert rel_error(out.pred_original_sample, recorded[f"{case}/pred_original_sample/{i}"]) < STEP_RTOL, i
        assert rel_error(out.prev_sample, recorded[f"{case}/prev_sample/{i}"]) < STEP_RTOL, i
        sample = out.prev_sample

    original, noise = recorded[f"{case}/add_noise/original"], recorded[f"{case}/add_noise/noise"]
    timesteps = recorded[f"{case}/add_noise/timesteps"]
    assert rel_error(scheduler.add_noise(original, noise, timesteps), recorded[f"{case}/add_noise/out"]) < STEP_RTOL
    assert rel_error(scheduler.get_velocity(original, noise, timesteps), recorded[f"{case}/velocity/out"]) < STEP_RTOL


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c]["eta"] > 0])
def test_variance_noise_passed_in(case, recorded):
    """Noise drawn outside with the same seeded generator and passed as variance_noise gives the reference's run:
    the scheduler draws randn(model_output.shape) once per step and nothing else."""
    settings = CASES[case]
    scheduler = DDIMScheduler.from_pretrained(FIXTURES / case)
    scheduler.set_timesteps(settings["num_inference_steps"])
    generator = torch.Generator().manual_seed(settings["generator_seed"])
    sample = recorded[f"{case}/sample"]
    for i, t in enumerate(scheduler.timesteps):
        model_output = recorded[f"{case}/model_output/{i}"]
        noise = torch.randn(model_output.shape, generator=generator)
        sample = scheduler.step(model_output, t, sample, eta=settings["eta"], variance_noise=noise,
                                use_clipped_model_output=settings["use_clipped_model_output"]).prev_sample
        assert rel_error(sample, recorded[f"{case}/prev_sample/{i}"]) < STEP_RTOL, i


# ---- API and errors ----

def test_save_and_reload(tmp_path):
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", steps_offset=1)
    scheduler.save_pretrained(tmp_path / "scheduler")
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDIMScheduler" and saved["prediction_type"] == "v_prediction"
    assert DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler").config == scheduler.config


def test_identity_input_scaling_and_constants():
    scheduler = DDIMScheduler()
    x = torch.randn(2, 3)
    assert scheduler.scale_model_input(x, 5) is x
    assert scheduler.init_noise_sigma == 1.0 and scheduler.order == 1


@pytest.mark.parametrize("key", ["beta_schedule", "timestep_spacing", "prediction_type"])
def test_unknown_choices_fail_at_construction(key):
    with pytest.raises(ValueError, match=f"unknown {key} 'bogus'"):
        DDIMScheduler(**{key: "bogus"})


def test_trained_betas_bypass_schedule():
    scheduler = DDIMScheduler(beta_schedule="ignored", trained_betas=[0.1, 0.2, 0.3], num_train_timesteps=3)
    torch.testing.assert_close(scheduler.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504]))  # float32 products


def test_step_errors():
    scheduler = DDIMScheduler(num_train_timesteps=100)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 99, x)
    for n in (0, 101):
        with pytest.raises(ValueError, match="between 1 and num_train_timesteps"):
            scheduler.set_timesteps(n)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="not both"):
        scheduler.step(x, 90, x, eta=1.0, generator=torch.Generator(), variance_noise=x)
    with pytest.raises(TypeError, match="not both"):
        DDIMScheduler(DDIMSchedulerConfig(), steps_offset=1)
