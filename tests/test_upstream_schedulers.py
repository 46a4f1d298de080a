"""diffusers' UniPC, DPM-Solver++ and Euler scheduler tests (v0.35.2: tests/schedulers/test_scheduler_unipc.py,
test_scheduler_dpm_multi.py, test_scheduler_euler.py) and the common checks of test_schedulers.py, rewritten for our
classes with their configs (tests/conftest.py UPSTREAM_CONFIGS), expected values and tolerances. DDIM's own tests
are in test_upstream_ddim.py; the common checks here cover DDIM too. The unmodified upstream files run as a developer
step (tests/upstream/README.md).

Upstream's test classes are "cases" here: UniPC (samples (4, 3, 8, 8)), UniPC-1D (UniPCMultistepScheduler1DTest,
samples (4, 3, 8)), DPM and Euler (and DDIM for the common checks). Upstream's check_over_configs /
check_over_forward become same_after_save_load: a scheduler and its saved-and-reloaded copy step alike (sum of
|difference| < 1e-5); the "no NaN" and "stays float16" loops and the full-loop values keep their assertions. The
comments name the upstream test each row comes from; a config upstream checks twice is checked once.

Ported: 103 of the 108 tests of the four classes (UniPC 24, UniPC-1D 26, DPM 32, Euler 26), and DDIM's common
checks; with test_upstream_ddim.py, 130 of the 143 upstream tests (13 not ported; the 50 empty SchedulerCommonTest
collections left out of both counts). Not ported:
- test_getattr_is_correct (UniPC, UniPC-1D, DPM, Euler; DDIM): diffusers' deprecation of config keys read as
  scheduler attributes (a FutureWarning on scheduler.key); i2vgen reads config keys from scheduler.config only.
- DPM's test_from_save_pretrained: upstream skips it ("Test not supported").
- test_schedulers.py's SchedulerBaseTests: three need diffusers' ConfigMixin / register_to_config for user-defined
  classes, not part of i2vgen; test_default_arguments_not_in_config and test_default_solver_type_after_switch load a
  hub pipeline and need LMS / DEIS (their rules on our classes: tests/test_switching.py,
  test_defaults_are_not_carried_over and test_solver_type_maps_between_families).
- SchedulerPushToHubTester (2 tests): they push to the Hugging Face Hub.
Ported in part: test_switch (UniPC, UniPC-1D, DPM) chains through DPMSolverSinglestepScheduler and DEIS, which i2vgen
does not have; test_full_loop_after_switching keeps its value after switching to DPM (UniPC) or UniPC (DPM) and back.
Where this port checks more than upstream: upstream's UniPC / DPM check_over_forward drops the num_inference_steps it
is given (test_inference_steps always runs 25 steps; UniPC's steps once at t = 0), here each count is run as
check_over_configs runs; UniPC's full_loop(scheduler=...) rebuilds the scheduler it is handed, here it is used.
"""

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch
from conftest import UPSTREAM_CONFIGS, ramp, seeded, toy_loop

from i2vgen import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler


@dataclasses.dataclass(frozen=True)
class Case:
    """One of upstream's test classes: its scheduler, sample shape and forward_default num_inference_steps."""

    name: str
    cls: type
    shape: tuple = (4, 3, 8, 8)
    steps: int | None = None  # None: check_over_configs sets no timesteps, the common checks use 50

    def make(self, **config):
        return self.cls(**{**UPSTREAM_CONFIGS[self.cls.__name__], **config})

    def sample(self) -> torch.Tensor:
        return torch.rand(self.shape)  # upstream's dummy_sample

    @property
    def multistep(self) -> bool:
        return self.cls in (UniPCMultistepScheduler, DPMSolverMultistepScheduler)

    def __repr__(self):
        return self.name


UNIPC = Case("UniPC", UniPCMultistepScheduler, steps=25)
UNIPC_1D = Case("UniPC-1D", UniPCMultistepScheduler, shape=(4, 3, 8), steps=25)
DPM = Case("DPM", DPMSolverMultistepScheduler, steps=25)
EULER = Case("Euler", EulerDiscreteScheduler)
DDIM = Case("DDIM", DDIMScheduler)
COMMON = (UNIPC, UNIPC_1D, DPM, EULER, DDIM)


def label(value) -> str:
    """Test ids: a case's or class's name, a config's keys and values."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "defaults"
    return getattr(value, "__name__", repr(value))


def unique(configs: list) -> list:
    """Upstream's loops repeat some configs (e.g. prediction_type="epsilon" in three tests): each is checked once."""
    return [c for i, c in enumerate(configs) if c not in configs[:i]]


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.sum(torch.abs(a - b)) < 1e-5, "scheduler outputs are not identical"


def reloaded(scheduler, tmp_path):
    scheduler.save_config(tmp_path)
    return type(scheduler).from_pretrained(tmp_path)


def primed(scheduler, residual: torch.Tensor, steps: int):
    """set_timesteps, then upstream's dummy past residuals as the multistep history."""
    scheduler.set_timesteps(steps)
    scheduler.model_outputs = [residual + 0.2, residual + 0.15, residual + 0.10][:scheduler.config.solver_order]
    return scheduler


# ---- a scheduler and its saved-and-reloaded copy step alike (check_over_configs / check_over_forward) ----

def same_after_save_load(case: Case, tmp_path, config: dict, steps: int | None = None) -> None:
    sample = case.sample()
    residual = 0.1 * sample
    first = case.make(**config)
    second = reloaded(first, tmp_path)
    if case.multistep:  # solver_order + 1 steps from the first timestep, each compared
        first, second = (primed(s, residual, steps or case.steps) for s in (first, second))
        outputs = [sample, sample]
        for t in first.timesteps[:first.config.solver_order + 1]:
            outputs = [s.step(residual, t, x).prev_sample for s, x in zip((first, second), outputs)]
            assert_same(*outputs)
    else:  # Euler: one step at t = 0.0 on the train schedule, after scale_model_input at the last timestep
        outputs = []
        for s in (first, second):
            s.scale_model_input(sample, first.timesteps[-1])
            outputs.append(s.step(residual, 0.0, sample, generator=torch.manual_seed(0)).prev_sample)
        assert_same(*outputs)


UNIPC_CONFIGS = unique([
    *[dict(num_train_timesteps=n) for n in (25, 50, 100, 999, 1000)],                     # test_timesteps
    dict(thresholding=False),                                                             # test_thresholding
    *[dict(thresholding=True, prediction_type=p, sample_max_value=m, solver_order=o, solver_type=s)
      for o in (1, 2, 3) for s in ("bh1", "bh2") for m in (0.5, 1.0, 2.0) for p in ("epsilon", "sample")],
    *[dict(prediction_type=p) for p in ("epsilon", "v_prediction")],                      # test_prediction_type
    *[dict(rescale_betas_zero_snr=r) for r in (True, False)],                             # test_rescale_betas_zero_snr
    *[dict(solver_order=o, solver_type=s, prediction_type=p)                              # test_solver_order_and_type
      for s in ("bh1", "bh2") for o in (1, 2, 3) for p in ("epsilon", "sample")],
    *[dict(lower_order_final=b) for b in (True, False)],                                  # test_lower_order_final
])
SIGMA_FORMULAS = [dict(use_beta_sigmas=True), dict(use_exponential_sigmas=True)]  # test_beta/exponential_sigmas
DPM_CONFIGS = unique([
    *[dict(num_train_timesteps=n) for n in (25, 50, 100, 999, 1000)],                     # test_timesteps
    dict(thresholding=False),                                                             # test_thresholding
    *[dict(thresholding=True, prediction_type=p, sample_max_value=m, algorithm_type="dpmsolver++", solver_order=o,
           solver_type=s)
      for o in (1, 2, 3) for s in ("midpoint", "heun") for m in (0.5, 1.0, 2.0) for p in ("epsilon", "sample")],
    *[dict(prediction_type=p) for p in ("epsilon", "v_prediction")],                      # test_prediction_type
    *[dict(solver_order=o, solver_type=s, prediction_type=p, algorithm_type=a)            # test_solver_order_and_type
      for a in ("dpmsolver", "dpmsolver++") for s in ("midpoint", "heun") for o in (1, 2, 3)
      for p in ("epsilon", "sample")],  # upstream does not save and reload the SDE variants
    *[dict(lower_order_final=b) for b in (True, False)],                                  # test_lower_order_final
    *[dict(euler_at_final=b) for b in (True, False)],                                     # test_euler_at_final
    *[dict(lambda_min_clipped=x) for x in (-math.inf, -5.1)],                             # test_lambda_min_clipped
    *[dict(variance_type=v) for v in (None, "learned_range")],                            # test_variance_type
    *[dict(rescale_betas_zero_snr=r) for r in (True, False)],                             # test_rescale_betas_zero_snr
    *SIGMA_FORMULAS,
])
EULER_CONFIGS = unique([
    *[dict(num_train_timesteps=n) for n in (10, 50, 100, 1000)],                          # test_timesteps
    *[dict(beta_start=a, beta_end=b) for a, b in zip((0.00001, 0.0001, 0.001), (0.0002, 0.002, 0.02))],  # test_betas
    *[dict(beta_schedule=s) for s in ("linear", "scaled_linear")],                        # test_schedules
    *[dict(prediction_type=p) for p in ("epsilon", "v_prediction")],                      # test_prediction_type
    *[dict(timestep_type=t) for t in ("discrete", "continuous")],                         # test_timestep_type
    dict(use_karras_sigmas=True, sigma_min=0.02, sigma_max=700.0),                        # test_karras_sigmas
    *[dict(rescale_betas_zero_snr=r) for r in (True, False)],                             # test_rescale_betas_zero_snr
    *SIGMA_FORMULAS,
])


@pytest.mark.parametrize("case, config", [
    *[(UNIPC, c) for c in UNIPC_CONFIGS],
    *[(UNIPC_1D, c) for c in UNIPC_CONFIGS + SIGMA_FORMULAS],  # the sigma formulas are upstream's 1-D class's only
    *[(DPM, c) for c in DPM_CONFIGS],
    *[(EULER, c) for c in EULER_CONFIGS],
], ids=label)
def test_same_after_save_load(case, config, tmp_path):
    same_after_save_load(case, tmp_path, config)


@pytest.mark.parametrize("case", [UNIPC, UNIPC_1D, DPM], ids=label)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 50, 100, 999, 1000])
def test_inference_steps(case, steps, tmp_path):
    """test_inference_steps, with the steps passed on (upstream's check_over_forward uses 25 whatever it is given)."""
    same_after_save_load(case, tmp_path, {}, steps)


# ---- full loops: upstream's expected values (sum within 1e-2, mean within 1e-3, as upstream); marked parity,
# values recorded from the reference, so scripts/test.sh reruns them on other kernels ----

def full_loop(case: Case, scheduler=None, device=None, **config) -> torch.Tensor:
    """Ten steps of the stand-in denoiser from upstream's deterministic sample (times init_noise_sigma)."""
    scheduler = scheduler or case.make(**config)
    scheduler.set_timesteps(10, device=device)
    return toy_loop(scheduler, ramp(case.shape) * scheduler.init_noise_sigma)


def assert_sum_and_mean(sample: torch.Tensor, total: float | None, mean: float) -> None:
    if total is not None:
        assert abs(sample.abs().sum().item() - total) < 1e-2, sample.abs().sum().item()
    assert abs(sample.abs().mean().item() - mean) < 1e-3, sample.abs().mean().item()


KARRAS, V = dict(use_karras_sigmas=True), dict(prediction_type="v_prediction")


@pytest.mark.parity
@pytest.mark.parametrize("case, config, total, mean", [
    (UNIPC, {}, None, 0.2464),                                            # test_full_loop_no_noise
    (UNIPC, KARRAS, None, 0.2925),                                        # test_full_loop_with_karras
    (UNIPC, V, None, 0.1014),                                             # test_full_loop_with_v_prediction
    (UNIPC, {**V, **KARRAS}, None, 0.1966),                               # test_full_loop_with_karras_and_v_prediction
    (UNIPC_1D, {}, None, 0.2441),                                         # the same four, 1-D samples
    (UNIPC_1D, KARRAS, None, 0.2898),
    (UNIPC_1D, V, None, 0.1014),
    (UNIPC_1D, {**V, **KARRAS}, None, 0.1944),
    (DPM, {}, None, 0.3301),                                              # test_full_loop_no_noise
    (DPM, dict(thresholding=True, dynamic_thresholding_ratio=0.87, sample_max_value=0.5), None, 1.1364),  # ..._thres
    (DPM, V, None, 0.2251),                                               # test_full_loop_with_v_prediction
    (DPM, {**V, **KARRAS}, None, 0.2096),                                 # test_full_loop_with_karras_and_v_prediction
    (DPM, {**V, "use_lu_lambdas": True}, None, 0.1554),                   # test_full_loop_with_lu_and_v_prediction
    (EULER, {}, 10.0807, 0.0131),                                         # test_full_loop_no_noise
    (EULER, V, 0.0002, 2.2676e-06),                                       # test_full_loop_with_v_prediction
    (EULER, dict(device="cpu"), 10.0807, 0.0131),                         # test_full_loop_device
    (EULER, dict(device="cpu", **KARRAS), 124.52299499511719, 0.16213932633399963),  # ..._device_karras_sigmas
], ids=label)
def test_full_loop(case, config, total, mean):
    assert_sum_and_mean(full_loop(case, **config), total, mean)


@pytest.mark.parity
@pytest.mark.parametrize("case, t_start, total, mean", [
    (UNIPC, 8, 315.5757, 0.4109), (UNIPC_1D, 8, 39.0870, 0.4072), (DPM, 5, 318.4111, 0.4146),
    (EULER, 8, 57062.9297, 74.3007),
], ids=label)
def test_full_loop_with_noise(case, t_start, total, mean):
    """Noise added at the t_start-th of ten steps (add_noise), then the rest of the loop."""
    scheduler = case.make()
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    sample = scheduler.add_noise(ramp(case.shape) * scheduler.init_noise_sigma, ramp(case.shape, flip=True),
                                 timesteps[:1])
    assert_sum_and_mean(toy_loop(scheduler, sample, timesteps), total, mean)


@pytest.mark.parity
@pytest.mark.parametrize("case, other, mean", [
    (UNIPC, DPMSolverMultistepScheduler, 0.2464), (UNIPC_1D, DPMSolverMultistepScheduler, 0.2441),
    (DPM, UniPCMultistepScheduler, 0.3301),
], ids=label)
def test_full_loop_after_switching(case, other, mean):
    """test_switch without the classes i2vgen lacks: switched away and back, the defaults' full-loop value."""
    switched = case.cls.from_config(other.from_config(case.make().config).config)
    assert_sum_and_mean(full_loop(case, switched), None, mean)


@pytest.mark.parametrize("case, config", [
    *[(c, dict(solver_order=o, solver_type=s, prediction_type=p))
      for c in (UNIPC, UNIPC_1D) for s in ("bh1", "bh2") for o in (1, 2, 3) for p in ("epsilon", "sample")],
    *[(DPM, dict(solver_order=o, solver_type=s, prediction_type=p, algorithm_type=a))
      for a in ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++") for s in ("midpoint", "heun")
      for o in (1, 2, 3) for p in ("epsilon", "sample") if not (a.startswith("sde") and o == 3)],
], ids=label)
def test_solver_order_and_type_loop_has_no_nan(case, config):
    assert not torch.isnan(full_loop(case, **config)).any()


@pytest.mark.parametrize("case, config", [
    *[(c, dict(solver_order=o, solver_type=s, prediction_type=p))
      for c in (UNIPC, UNIPC_1D) for o in (1, 2, 3) for s in ("bh1", "bh2")
      for p in ("epsilon", "sample", "v_prediction")],
    (DPM, {}),
], ids=label)
def test_fp16_support(case, config):
    """A float16 loop (thresholding on, ratio 0) stays float16."""
    scheduler = case.make(thresholding=True, dynamic_thresholding_ratio=0, **config)
    scheduler.set_timesteps(10)
    assert toy_loop(scheduler, ramp(case.shape).half()).dtype == torch.float16


# ---- given timesteps or sigmas sample as the schedule they came from ----

@pytest.mark.parametrize("case, given, config", [
    *[(DPM, "timesteps", dict(algorithm_type=a, prediction_type=p, final_sigmas_type=f))   # test_custom_timesteps
      for a in ("dpmsolver++", "sde-dpmsolver++") for p in ("epsilon", "sample", "v_prediction")
      for f in ("sigma_min", "zero")],
    *[(EULER, "timesteps", dict(prediction_type=p, interpolation_type=i, final_sigmas_type=f))
      for p in ("epsilon", "sample", "v_prediction") for i in ("linear", "log_linear") for f in ("sigma_min", "zero")],
    *[(EULER, "sigmas", dict(prediction_type=p, final_sigmas_type=f))                     # test_custom_sigmas
      for p in ("epsilon", "sample", "v_prediction") for f in ("sigma_min", "zero")],
], ids=label)
def test_custom_schedule(case, given, config):
    planned = case.make(**config)
    planned.set_timesteps(10)
    custom = case.make(**config)
    custom.set_timesteps(num_inference_steps=None, **{given: getattr(planned, given)})
    assert_same(full_loop(case, planned), toy_loop(custom, ramp(case.shape) * custom.init_noise_sigma))


def test_duplicated_timesteps():
    """DPM with as many steps as train steps: num_inference_steps counts the timesteps. (Despite the name, one
    timestep does repeat here, in diffusers 0.35.2 as in ours: 999 distinct of 1000.)"""
    scheduler = DPM.make()
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    assert len(scheduler.timesteps) == scheduler.num_inference_steps


# ---- the common checks (test_schedulers.py SchedulerCommonTest), on every case ----

def schedule(case: Case, scheduler) -> None:
    scheduler.set_timesteps(case.steps or 50)  # upstream's forward_default num_inference_steps, or 50


def timestep(case: Case, scheduler, index: int):
    t = scheduler.timesteps[index]
    return float(t) if case is EULER else t  # upstream gives Euler float timesteps


@pytest.mark.parametrize("case", [c for c in COMMON if c is not DPM], ids=label)
def test_from_save_pretrained(case, tmp_path):
    first = case.make()
    second = reloaded(first, tmp_path)
    sample = case.sample()
    outputs = []
    for s in (first, second):
        schedule(case, s)
        outputs.append(s.step(0.1 * sample, timestep(case, s, 0), sample, **seeded(s)).prev_sample)
    assert_same(*outputs)


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_compatibles(case):
    """Every compatible class builds from the config; back from the last one, the config is the same, and any key
    the round trip added is none of this class's constructor keys."""
    scheduler = case.make()
    assert scheduler.compatibles and all(c is not None for c in scheduler.compatibles)
    for other in scheduler.compatibles:
        last = other.from_config(scheduler.config)
    back = case.cls.from_config(last.config)
    assert {k: v for k, v in back.config.items() if k in scheduler.config} == dict(scheduler.config)
    added = set(back.config) - set(scheduler.config)
    assert not added & set(inspect.signature(case.cls.__init__).parameters)


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_from_pretrained(case, tmp_path):
    scheduler = case.make()
    scheduler.save_pretrained(tmp_path)
    assert case.cls.from_pretrained(tmp_path).config == scheduler.config


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_step_shape(case):
    """Two steps in a row: at the first two timesteps, or for the multistep solvers, with the dummy history, at the
    sixth and seventh (their own test_step_shape)."""
    scheduler = case.make()
    sample = case.sample()
    residual = 0.1 * sample
    if case.multistep:
        primed(scheduler, residual, case.steps)
    else:
        schedule(case, scheduler)
    first = 5 if case.multistep else 0
    outputs = [scheduler.step(residual, timestep(case, scheduler, i), sample).prev_sample for i in (first, first + 1)]
    assert outputs[0].shape == outputs[1].shape == sample.shape


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_scheduler_outputs_equivalence(case):
    """The step's record and its tuple (return_dict=False) hold the same tensors (NaN read as 0, atol 1e-5)."""
    scheduler = case.make()
    sample = case.sample()
    outputs = []
    for return_dict in (True, False):
        schedule(case, scheduler)
        t = timestep(case, scheduler, 0)
        outputs.append(scheduler.step(0.1 * sample, t, sample, return_dict=return_dict, **seeded(scheduler)))
    as_record, as_tuple = outputs
    for a, b in zip(as_tuple, as_record.values()):
        if a is not None:
            assert torch.allclose(a.masked_fill(a.isnan(), 0), b.masked_fill(b.isnan(), 0), atol=1e-5)


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_scheduler_public_api(case):
    scheduler = case.make()
    assert hasattr(scheduler, "init_noise_sigma") and hasattr(scheduler, "step")
    sample = case.sample()
    assert scheduler.scale_model_input(sample, 0.0).shape == sample.shape


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_add_noise_device(case):
    scheduler = case.make()
    scheduler.set_timesteps(50)
    sample = scheduler.scale_model_input(case.sample(), 0.0)
    assert scheduler.add_noise(sample, torch.randn(sample.shape), scheduler.timesteps[5][None]).shape == sample.shape


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_deprecated_kwargs(case):
    """A constructor takes **kwargs exactly when the class lists deprecated keys (_deprecated_kwargs)."""
    takes_kwargs = "kwargs" in inspect.signature(case.cls.__init__).parameters
    assert takes_kwargs == bool(case.cls._deprecated_kwargs)


@pytest.mark.parametrize("case", COMMON, ids=label)
def test_trained_betas(case, tmp_path):
    scheduler = case.make(trained_betas=np.array([0.1, 0.3]))
    scheduler.save_pretrained(tmp_path)
    assert scheduler.betas.tolist() == case.cls.from_pretrained(tmp_path).betas.tolist()
