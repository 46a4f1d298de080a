"""A stand-in `diffusers` for running diffusers' own scheduler tests (tests/upstream/schedulers/, v0.35.2, unmodified)
against i2vgen: the names the tests import map to i2vgen's classes. Test-only; the package never imports it.

Classes i2vgen does not have are placeholders that fail when used (`Absent`): the tests that need them are the
expected failures listed in tests/upstream/conftest.py.
"""

from i2vgen.schedulers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                               UniPCMultistepScheduler)
from diffusers.utils import logging  # noqa: F401  (diffusers.logging)


class Absent:
    """A diffusers class i2vgen does not implement."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} is not implemented by i2vgen")

    @classmethod
    def from_config(cls, *args, **kwargs):
        raise NotImplementedError(f"{cls.__name__} is not implemented by i2vgen")

    from_pretrained = from_config


def _absent(name: str) -> type:
    return type(name, (Absent,), {})


for _name in ("CMStochasticIterativeScheduler", "DEISMultistepScheduler", "DiffusionPipeline", "EDMEulerScheduler",
              "EulerAncestralDiscreteScheduler", "IPNDMScheduler", "LMSDiscreteScheduler", "VQDiffusionScheduler",
              "DPMSolverSinglestepScheduler"):
    globals()[_name] = _absent(_name)
