"""Runs diffusers' own scheduler tests (v0.35.2, in schedulers/, unmodified: see README.md) against i2vgen through
the stand-in `diffusers` package in shim/.

The tests that cannot pass are marked as expected failures (strict: one that starts passing fails the run, so the
list stays true), each with its reason. Hub tests are skipped by shim's others/test_utils.py.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "shim"))

ABSENT = "needs a diffusers scheduler class i2vgen does not have ({})"
CONFIG_MACHINERY = "diffusers' ConfigMixin / register_to_config for user-defined classes, not part of i2vgen"
EXPECTED_FAILURES = {
    # test_schedulers.py
    "SchedulerBaseTests::test_save_load_from_different_config": CONFIG_MACHINERY,
    "SchedulerBaseTests::test_save_load_compatible_schedulers": CONFIG_MACHINERY,
    "SchedulerBaseTests::test_save_load_from_different_config_comp_schedulers": CONFIG_MACHINERY,
    "SchedulerBaseTests::test_default_arguments_not_in_config":
        "hub-only (hf-internal-testing/tiny-stable-diffusion-pipe) and LMS; the same rule is tested in "
        "tests/test_switching.py::test_defaults_are_not_carried_over",
    "SchedulerBaseTests::test_default_solver_type_after_switch":
        "hub-only and DEIS; the same rule is tested in tests/test_switching.py::test_solver_type_maps_between_families",
    "test_getattr_is_correct":
        "diffusers' deprecation of config keys read as scheduler attributes (FutureWarning on scheduler.key); "
        "i2vgen's config keys are read from scheduler.config only",
    # per scheduler
    "DDIMSchedulerTest::test_betas":
        "beta_end = 2 is refused (a beta above 1 makes alpha_bar negative and the schedule NaN): a deliberate "
        "difference, tests/test_bad_input.py",
    "DPMSolverMultistepSchedulerTest::test_switch": ABSENT.format("DPMSolverSinglestepScheduler, DEIS"),
    "UniPCMultistepSchedulerTest::test_switch": ABSENT.format("DPMSolverSinglestepScheduler, DEIS"),
    "UniPCMultistepScheduler1DTest::test_switch": ABSENT.format("DPMSolverSinglestepScheduler, DEIS"),
}


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents or not getattr(item.cls, "scheduler_classes", True):
            continue  # another folder's test, or the common base class collected with no scheduler (vacuous)
        for key, reason in EXPECTED_FAILURES.items():
            if item.nodeid.endswith(key):
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
