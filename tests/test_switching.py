"""Switching samplers and the rest of diffusers' scheduler API (issue 27), beyond diffusers' own tests
(ported in test_upstream_schedulers.py): the switching chain, the rules it follows, the config as a mapping, the constructor taking the
reference's saved configs, and the options through `i2vgen generate`.

Expected values are diffusers' documented behaviour (configuration_utils.py, the schedulers' __init__) or follow from
the math (a scheduler switched away and back is the same scheduler)."""

import ast
import copy
import inspect
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from i2vgen.models.unet import UNet3DConditionOutput
from i2vgen.schedulers import (RELEASED_SCHEDULER_CONFIG, SCHEDULERS, DDIMScheduler, DPMSolverMultistepScheduler,
                               EulerDiscreteScheduler, UniPCMultistepScheduler, by_name)

ROOT = Path(__file__).resolve().parent.parent
FOUR = (UniPCMultistepScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, DDIMScheduler)


def released(**overrides):
    return DDIMScheduler(**{**RELEASED_SCHEDULER_CONFIG, **overrides})


def run(scheduler, steps: int = 6) -> torch.Tensor:
    """A short sampling loop on a stand-in denoiser (the x0 prediction is a fixed function of the input)."""
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)
    x = torch.linspace(-1, 1, 2 * 4 * 3 * 3).reshape(2, 4, 3, 3) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(0.5 * torch.tanh(scheduler.scale_model_input(x, t)), t, x).prev_sample
    return x


def test_switching_chain_unipc_dpm_euler_ddim_unipc():
    """The documented way (Cls.from_config(scheduler.config)) around all four and back: each builds, the shared
    keys carry over, and the UniPC at the end samples exactly as the one at the start."""
    start = UniPCMultistepScheduler.from_config(released().config, timestep_spacing="trailing", solver_order=3)
    chain = [start]
    for cls in (DPMSolverMultistepScheduler, EulerDiscreteScheduler, DDIMScheduler, UniPCMultistepScheduler):
        chain.append(cls.from_config(chain[-1].config))
    for scheduler in chain:
        for key in ("beta_schedule", "prediction_type", "rescale_betas_zero_snr", "timestep_spacing", "steps_offset"):
            assert scheduler.config[key] == start.config[key], (type(scheduler).__name__, key)
    dpm, euler, ddim, end = chain[1:]
    assert dpm.config.solver_type == "midpoint" and dpm.config.solver_order == 3  # bh2 mapped, the order kept
    assert ddim.config.clip_sample is False  # the released DDIM's own value, carried through UniPC, DPM and Euler
    assert end.config == start.config
    assert torch.equal(run(end), run(start))


@pytest.mark.parametrize("first", FOUR, ids=lambda c: c.__name__)
@pytest.mark.parametrize("second", FOUR, ids=lambda c: c.__name__)
def test_every_pair_switches_there_and_back(first, second):
    a = first.from_config(released().config, timestep_spacing="trailing")
    back = first.from_config(second.from_config(a.config).config)
    assert back.config == a.config
    assert torch.equal(run(back), run(a))


def test_defaults_are_not_carried_over():
    """diffusers' test_default_arguments_not_in_config, on our classes: a key the first class left at its default
    takes the new class's default; one set explicitly (or as an override) sticks."""
    assert EulerDiscreteScheduler.from_config(DDIMScheduler().config).config.timestep_spacing == "linspace"
    euler = EulerDiscreteScheduler.from_config(DDIMScheduler().config, timestep_spacing="trailing")
    assert DPMSolverMultistepScheduler.from_config(euler.config).config.timestep_spacing == "trailing"
    assert released().config.timestep_spacing == "leading"  # explicit in the released config: it carries
    assert EulerDiscreteScheduler.from_config(released().config).config.timestep_spacing == "leading"


def test_solver_type_maps_between_families():
    """As the reference's constructors: UniPC's bh1/bh2 become DPM's "midpoint", DPM's midpoint/heun UniPC's
    "bh2"; and DEIS's algorithm "deis" is DPM's "dpmsolver++"."""
    unipc = UniPCMultistepScheduler(solver_type="bh1")
    assert DPMSolverMultistepScheduler.from_config(unipc.config).config.solver_type == "midpoint"
    dpm = DPMSolverMultistepScheduler(solver_type="heun")
    assert UniPCMultistepScheduler.from_config(dpm.config).config.solver_type == "bh2"
    assert by_name("unipc", dpm.config).config.solver_type == "bh2"
    assert by_name("dpm++", unipc.config).config.solver_type == "midpoint"
    assert DPMSolverMultistepScheduler(solver_type="logrho", algorithm_type="deis").config.algorithm_type == \
        "dpmsolver++"


def test_config_reads_like_a_dict_and_is_read_only():
    config = released().config
    assert dict(config)["beta_schedule"] == {**config}["beta_schedule"] == config["beta_schedule"] == \
        config.beta_schedule == "squaredcos_cap_v2"
    assert ("prediction_type", "v_prediction") in config.items() and "clip_sample" in config.keys()
    assert copy.deepcopy(config) == config and pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(TypeError, match="read-only; build a new scheduler with"):
        config["beta_schedule"] = "linear"
    with pytest.raises(TypeError, match="read-only"):
        config.beta_schedule = "linear"
    with pytest.raises(AttributeError, match="no key 'nope'"):
        config.nope


@pytest.mark.parametrize("folder", sorted((ROOT / "tests" / "fixtures" / "sampler_options").glob("*/")) +
                         sorted((ROOT / "tests" / "fixtures" / "samplers").glob("*/")), ids=lambda p: p.name)
def test_constructor_takes_the_references_saved_config(folder):
    """Every constructor key diffusers 0.35.2 saved for the class (defaults included, e.g. variance_type=None,
    use_flow_sigmas=False) is one of our constructor's keys and builds the same scheduler as from_pretrained (which
    also keeps the keys carried over from the DDIM config it was switched from)."""
    saved = json.loads((folder / "scheduler_config.json").read_text())
    cls = SCHEDULERS[saved["_class_name"]]
    ours = inspect.signature(cls.__init__).parameters
    keys = {k: v for k, v in saved.items() if k in ours}
    assert set(saved) - set(keys) <= {"_class_name", "_diffusers_version", *DDIMScheduler.config_class.__annotations__}
    built, loaded = cls(**keys), cls.from_pretrained(folder)
    assert {k: v for k, v in loaded.config.items() if k in ours} == {k: v for k, v in built.config.items() if k in ours}


@pytest.mark.parametrize("cls", FOUR, ids=lambda c: c.__name__)
def test_save_config_register_to_config_and_numpy_trained_betas(cls, tmp_path):
    scheduler = cls(trained_betas=np.linspace(1e-4, 0.02, 1000))
    scheduler.register_to_config(note="kept")
    scheduler.save_config(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.config == scheduler.config and loaded.config.note == "kept"
    assert torch.equal(loaded.betas, scheduler.betas)
    assert set(scheduler.compatibles) >= set(FOUR)


@pytest.mark.parametrize("cls", FOUR, ids=lambda c: c.__name__)
def test_step_outputs_and_add_noise(cls):
    scheduler = cls(prediction_type="v_prediction", timestep_spacing="trailing")  # timesteps on train steps
    scheduler.set_timesteps(5)
    x, noise = torch.ones(2, 3, 2, 2), torch.full((2, 3, 2, 2), 0.5)
    out = scheduler.step(0.1 * x, scheduler.timesteps[0], x)
    assert out[0] is out.prev_sample is out["prev_sample"] and out.values()[0] is out.prev_sample
    t = scheduler.timesteps[[1, 3]]
    noisy = scheduler.add_noise(x, noise, t)
    alpha_bar = scheduler.alphas_cumprod[t.long()].reshape(2, 1, 1, 1)
    expected = alpha_bar**0.5 * x + (1 - alpha_bar) ** 0.5 * noise  # q(x_t | x0), in each sampler's variables
    if cls is EulerDiscreteScheduler:
        expected = expected / alpha_bar**0.5  # Karras' x = x_vp sqrt(sigma^2 + 1)
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-6)  # float32 rounding of two routes to one value


def test_unet_output_is_subscriptable():
    sample = torch.zeros(1)
    out = UNet3DConditionOutput(sample=sample)
    assert out[0] is sample and out["sample"] is sample


def test_euler_steps_before_set_timesteps_on_the_train_schedule():
    """As the reference (whose tests call it so): the train steps' sigmas are the schedule until set_timesteps."""
    scheduler = EulerDiscreteScheduler()
    x = torch.ones(1, 2)
    out = scheduler.step(torch.ones(1, 2), float(scheduler.timesteps[0]), x).prev_sample
    sigma, next_sigma = scheduler.sigmas[0], scheduler.sigmas[1]  # the largest train sigma, then the next one
    # eps = 1: x0 = x - sigma, d = (x - x0) / sigma = 1, x' = x + (sigma' - sigma) d
    torch.testing.assert_close(out, x + (next_sigma - sigma), rtol=0, atol=1e-5)  # float32 at |x'| ~ 157


def test_custom_timesteps_and_sigmas_give_the_same_schedule():
    dpm = DPMSolverMultistepScheduler.from_config(released().config, timestep_spacing="trailing")
    dpm.set_timesteps(7)
    other = DPMSolverMultistepScheduler.from_config(dpm.config)
    other.set_timesteps(timesteps=dpm.timesteps)
    assert torch.equal(other.sigmas, dpm.sigmas) and torch.equal(other.timesteps, dpm.timesteps)
    euler = EulerDiscreteScheduler(use_karras_sigmas=True)
    euler.set_timesteps(7)
    other = EulerDiscreteScheduler(use_karras_sigmas=True)
    other.set_timesteps(sigmas=euler.sigmas)
    assert torch.equal(other.sigmas, euler.sigmas)
    torch.testing.assert_close(other.timesteps, euler.timesteps, rtol=0, atol=1e-3)  # sigma -> t from float32


@pytest.mark.parametrize("build, message", [
    (lambda: DDIMScheduler(beta_end=2.0), "beta_start and beta_end must be finite and in [0, 1]; got 2.0"),
    (lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True), "use_flow_sigmas=True is not supported by i2vgen"),
    (lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", solver_order=3,
                                         final_sigmas_type="sigma_min"), "'sde-dpmsolver' has solver_order 1 or 2"),
    (lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver"), "final_sigmas_type 'zero' needs algorithm_type"),
    (lambda: EulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True), "use at most one of"),
    (lambda: UniPCMultistepScheduler(solver_oder=3), "UniPCMultistepScheduler has no option 'solver_oder'"),
])
def test_refusals_are_one_line(build, message):
    with pytest.raises((ValueError, TypeError)) as error:
        build()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_karras_on_the_released_schedule_runs_through_repeated_timesteps():
    """On the zero-terminal-SNR schedule Karras sigmas repeat t = 998 (the reference then overruns its schedule);
    with the begin index the pipeline sets, every step runs once."""
    dpm = by_name("dpm++", released().config, use_karras_sigmas=True)
    dpm.set_timesteps(5)
    assert dpm.timesteps.tolist().count(998) == 2
    assert torch.isfinite(run(dpm, 5)).all() and dpm.step_index == 5


def test_generate_with_karras_sigmas(tmp_path):
    from i2vgen.apps.cli import main

    image = ROOT / "assets" / "landscape.png"
    assert main(["generate", "--image", str(image), "--prompt", "a house", "--steps", "5", "--frames", "2",
                 "--height", "32", "--width", "32", "--seed", "1", "--scheduler", "dpm++:use_karras_sigmas=true",
                 "--out", str(tmp_path / "k.gif")]) == 0
    assert (tmp_path / "k.gif").is_file()


def test_one_released_config():
    """The recording scripts run in the reference's venv, without i2vgen: their copies must equal ours."""
    def dict_call(path: Path, name: str) -> dict:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
                return {k.arg: ast.literal_eval(k.value) for k in node.value.keywords}
        raise AssertionError(f"{name} not in {path}")

    assert dict_call(ROOT / "scripts" / "make_reference.py", "RELEASED_DDIM") == RELEASED_SCHEDULER_CONFIG
    assert dict_call(ROOT / "scripts" / "_bench_worker.py", "scheduler") == RELEASED_SCHEDULER_CONFIG
