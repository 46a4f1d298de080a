"""UniPC, DPM-Solver++ and Euler against diffusers 0.35.2, step by step and in the whole tiny pipeline.

tests/fixtures/samplers (scripts/make_reference.py --only samplers), and tests/fixtures/sampler_options for the
options of issue 27 (Karras / exponential / beta sigmas, Lu lambdas, DPM-Solver's noise-prediction algorithms,
Euler's log-linear interpolation and continuous timesteps; --only sampler_options): per case the reference's saved
scheduler_config.json, and in steps.safetensors its timesteps, sigmas, init_noise_sigma, the initial sample, and per
step the model input (after scale_model_input), the model output fed to it and the sample it returned. Most cases
are the released config (squaredcos_cap_v2, zero terminal SNR, v-prediction) with the overrides users write.
"""

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from conftest import frame_atol, rel_error

from i2vgen import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, I2VGenXLPipeline,
                    PowerUniPCScheduler, UniPCMultistepScheduler, fast_scheduler)
from i2vgen.schedulers import SCHEDULERS, by_name, load_scheduler
from i2vgen.schedulers.fast import FAST_OPTIONS, FAST_STEPS, power_timesteps
from i2vgen.schedulers.schedule import solver_timesteps

pytestmark = pytest.mark.parity  # recorded reference outputs: scripts/test.sh reruns these on other kernels
FIXTURES = Path(os.environ.get("I2VGEN_FIXTURES", Path(__file__).parent / "fixtures"))
SAMPLERS = FIXTURES / "samplers"
CASES = json.loads((SAMPLERS / "cases.json").read_text())
OPTIONS = FIXTURES / "sampler_options"
OPTION_CASES = json.loads((OPTIONS / "cases.json").read_text())
PIPELINE_CALLS = json.loads((SAMPLERS / "pipeline_calls.json").read_text())

# Steps: we do the reference's float32 arithmetic in the same order, so the sequences are bit-identical on the
# recording machine (and on AVX2 CPUs with their own kernels). The slack is for other kernels: with torch's scalar
# kernels (ATEN_CPU_CAPABILITY=default) the reference's own replay of the recorded model outputs moves by up to
# 1.7e-6 of the scale (unipc_bh1_o3_trailing, step 11), as ours does (tests/fixtures/README.md); 3e-6 is 1.8x that.
STEP_RTOL = 3e-6
# Sigmas (exp/log/interp of the schedule), and the float timesteps Euler derives from them: the scalar kernels move
# the reference's sigmas by up to 1.9e-7 element-wise (unipc_eps_threshold), ours Euler's Karras/continuous
# timesteps by up to 1.4e-7 (euler_karras_default: 733.8502 vs 733.8501); 5e-7 (~4 ulps) is 2.6x the larger.
SIGMA_RTOL = 5e-7


@pytest.fixture(scope="module")
def recorded():
    return load_file(SAMPLERS / "steps.safetensors")


@pytest.fixture(scope="module")
def recorded_options():
    return load_file(OPTIONS / "steps.safetensors")


def replay(name: str, recorded: dict, folder: Path = SAMPLERS) -> list[tuple[str, float]]:
    """Run our scheduler (loaded from the reference's saved config) on the recorded model outputs, feeding it its
    own samples; return (what, relative error) for every compared tensor."""
    case = json.loads((folder / "cases.json").read_text())[name]
    scheduler = SCHEDULERS[case["cls"]].from_pretrained(folder / name)
    scheduler.set_timesteps(case["num_inference_steps"])
    timesteps = recorded[f"{name}/timesteps"]
    assert scheduler.timesteps.dtype == timesteps.dtype
    if timesteps.is_floating_point():  # Euler's Karras / continuous timesteps come from sigmas: their tolerance,
        # plus for continuous t = log(sigma) / 4 the absolute error a sigma's relative error becomes (near sigma = 1)
        torch.testing.assert_close(scheduler.timesteps, timesteps, rtol=SIGMA_RTOL, atol=SIGMA_RTOL / 4)
    else:
        assert torch.equal(scheduler.timesteps, timesteps)
    torch.testing.assert_close(scheduler.sigmas, recorded[f"{name}/sigmas"], rtol=SIGMA_RTOL, atol=0)
    assert float(scheduler.init_noise_sigma) == recorded[f"{name}/init_noise_sigma"].item()
    kwargs = dict(case["step_kwargs"])
    if case["generator_seed"] is not None:
        kwargs["generator"] = torch.Generator().manual_seed(case["generator_seed"])
    sample, errors = recorded[f"{name}/sample"], []
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(sample, t)
        errors.append((f"model_input/{i}", rel_error(model_input, recorded[f"{name}/model_input/{i}"])))
        sample = scheduler.step(recorded[f"{name}/model_output/{i}"], t, sample, **kwargs).prev_sample
        errors.append((f"prev_sample/{i}", rel_error(sample, recorded[f"{name}/prev_sample/{i}"])))
    return errors


@pytest.mark.parametrize("name", sorted(CASES))
def test_step_sequence_matches_reference(name, recorded):
    worst = max(replay(name, recorded), key=lambda e: e[1])
    assert worst[1] <= STEP_RTOL, f"{name}: {worst[0]} relative error {worst[1]:.2e}"


@pytest.mark.parametrize("name", sorted(OPTION_CASES))
def test_option_step_sequence_matches_reference(name, recorded_options):
    """Integer timesteps exactly, float timesteps and sigmas to SIGMA_RTOL; steps to STEP_RTOL (the Beta quantile is ours, sigmas.beta_ppf, within 1e-15
    of scipy's: its sigmas still come out identical in float32)."""
    worst = max(replay(name, recorded_options, OPTIONS), key=lambda e: e[1])
    assert worst[1] <= STEP_RTOL, f"{name}: {worst[0]} relative error {worst[1]:.2e}"


# ---- the whole tiny pipeline with each scheduler swapped in ----

@pytest.fixture(scope="module")
def fixture_pipe():
    pipe = I2VGenXLPipeline.from_pretrained(FIXTURES / "pipeline" / "model")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", sorted(PIPELINE_CALLS["calls"]))
def test_pipeline_with_scheduler_matches_reference(name, fixture_pipe):
    call = PIPELINE_CALLS["calls"][name]
    released = fixture_pipe.scheduler
    fixture_pipe.scheduler = SCHEDULERS[call["cls"]].from_config(released.config, **call["overrides"])
    try:
        with PIL.Image.open(FIXTURES / "pipeline" / call["image"]) as image:
            image = image.convert("RGB")
        torch.manual_seed(call["global_seed"])
        frames = fixture_pipe(image=image, generator=torch.Generator().manual_seed(call["generator_seed"]),
                              **call["kwargs"]).frames
    finally:
        fixture_pipe.scheduler = released
    expected = load_file(SAMPLERS / "pipeline_frames.safetensors")[f"{name}/frames"]
    atol = frame_atol(PIPELINE_CALLS["two_thread_max_abs_diff"][name])  # the reason: conftest.frame_atol
    assert np.abs(frames - expected.numpy()).max() <= atol


# ---- behaviour beyond the recordings ----

def test_from_config_takes_the_pipeline_config_and_rejects_unknown_options():
    ddim = DDIMScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
                         prediction_type="v_prediction", clip_sample=False, steps_offset=1)
    unipc = UniPCMultistepScheduler.from_config(ddim.config, timestep_spacing="trailing")
    assert unipc.config.beta_schedule == "squaredcos_cap_v2" and unipc.config.prediction_type == "v_prediction"
    assert unipc.config.timestep_spacing == "trailing" and unipc.config.solver_type == "bh2"
    back = DDIMScheduler.from_config(unipc.config)  # diffusers' rule: DDIM's own clip_sample rode along in UniPC's
    assert back.config.rescale_betas_zero_snr and not back.config.clip_sample
    with pytest.raises(ValueError, match="has no option 'solver_oder'"):
        UniPCMultistepScheduler.from_config(ddim.config, solver_oder=3)
    with pytest.raises(ValueError, match="use_flow_sigmas=True is not supported"):
        DPMSolverMultistepScheduler.from_config(ddim.config, use_flow_sigmas=True)
    with pytest.raises(ValueError, match="unknown algorithm_type 'dpm'"):
        DPMSolverMultistepScheduler.from_config(ddim.config, algorithm_type="dpm")
    with pytest.raises(ValueError, match="unknown solver_order 4"):
        UniPCMultistepScheduler.from_config(ddim.config, solver_order=4)


def test_save_and_load_roundtrip(tmp_path):
    for cls in (UniPCMultistepScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler):
        scheduler = cls(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", rescale_betas_zero_snr=True)
        scheduler.save_pretrained(tmp_path / cls.__name__)
        assert cls.from_pretrained(tmp_path, subfolder=cls.__name__).config == scheduler.config


def test_unipc_bh1_to_sigma_zero_ends_on_the_data_prediction():
    """The reference returns NaN here (B(h) = -inf times a zero correction); the limit sigma_t -> 0 of the
    last, first-order step is x0 itself."""
    scheduler = UniPCMultistepScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
                                        prediction_type="v_prediction", timestep_spacing="trailing", solver_type="bh1")
    scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 3, generator=gen)
    for t in scheduler.timesteps:
        v = torch.randn(x.shape, generator=gen)
        alpha_bar = scheduler.alphas_cumprod[t]
        x0 = alpha_bar**0.5 * x - (1 - alpha_bar) ** 0.5 * v
        x = scheduler.step(v, t, x).prev_sample
    assert torch.allclose(x, x0, rtol=0, atol=1e-6)


def test_solver_trailing_keeps_n_steps():
    """At 61 of 1000 steps np.arange's float step yields one extra timestep (-1) in the reference; we keep n."""
    timesteps = solver_timesteps("trailing", 1000, 61)
    assert len(timesteps) == 61 and timesteps.min() >= 0


def test_eta_only_where_it_applies(fixture_pipe):
    released = fixture_pipe.scheduler
    fixture_pipe.scheduler = UniPCMultistepScheduler.from_config(released.config, timestep_spacing="trailing")
    try:
        with pytest.raises(ValueError, match="eta applies only to DDIMScheduler; UniPCMultistepScheduler has no eta"):
            fixture_pipe(prompt="a cat", image=PIL.Image.new("RGB", (32, 32)), height=32, width=32, num_frames=2,
                         num_inference_steps=2, eta=0.5)
    finally:
        fixture_pipe.scheduler = released


# ---- the fast sampler (new: no reference) and loading by name ----

def released_ddim():
    return DDIMScheduler(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True,
                         prediction_type="v_prediction", clip_sample=False, steps_offset=1)


def test_power_timesteps_at_rho_1_are_trailing_unipc():
    config = released_ddim().config
    power = PowerUniPCScheduler.from_config(config, timestep_power=1.0)
    trailing = UniPCMultistepScheduler.from_config(config, timestep_spacing="trailing")
    for n in (5, 15, 50):
        power.set_timesteps(n)
        trailing.set_timesteps(n)
        assert torch.equal(power.timesteps, trailing.timesteps) and torch.equal(power.sigmas, trailing.sigmas)


@pytest.mark.parametrize("rho", [0.5, 1.5, 3.0])
def test_power_timesteps_start_at_pure_noise_and_all_move(rho):
    timesteps = power_timesteps(1000, 40, rho)
    assert timesteps[0] == 999 and len(timesteps) == 40 and np.all(np.diff(timesteps) < 0) and timesteps[-1] >= 0


def test_fast_scheduler_is_built_from_the_pipeline_config():
    scheduler = fast_scheduler(released_ddim().config)
    assert isinstance(scheduler, PowerUniPCScheduler)
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.rescale_betas_zero_snr
    assert {k: getattr(scheduler.config, k) for k in FAST_OPTIONS} == FAST_OPTIONS
    scheduler.set_timesteps(FAST_STEPS)
    assert len(scheduler.timesteps) == FAST_STEPS and scheduler.timesteps[0] == 999 and scheduler.sigmas[-1] == 0
    assert scheduler.timesteps.tolist() == list(FAST_OPTIONS["fitted_timesteps"])
    scheduler.set_timesteps(10)  # other step counts: the power law
    assert scheduler.timesteps.tolist() == power_timesteps(1000, 10, FAST_OPTIONS["timestep_power"]).tolist()


def test_by_name_and_unknown_names():
    assert isinstance(by_name("dpm++", released_ddim().config), DPMSolverMultistepScheduler)
    assert by_name("sde-dpm++", released_ddim().config).stochastic
    with pytest.raises(ValueError, match="unknown scheduler 'plms'"):
        by_name("plms", released_ddim().config)


def test_pipeline_saved_with_another_sampler_loads_with_it(fixture_pipe, tmp_path):
    released = fixture_pipe.scheduler
    fixture_pipe.scheduler = fast_scheduler(released.config)
    try:
        fixture_pipe.save_pretrained(tmp_path / "saved")
    finally:
        fixture_pipe.scheduler = released
    reloaded = load_scheduler(tmp_path / "saved" / "scheduler")
    assert isinstance(reloaded, PowerUniPCScheduler) and reloaded.config == fast_scheduler(released.config).config
    assert isinstance(load_scheduler(FIXTURES / "pipeline" / "model" / "scheduler"), DDIMScheduler)
