"""Samplers, one per file over the shared schedule math in schedule.py: DDIM (the released model's), UniPC,
DPM-Solver++ and Euler (parity-checked against diffusers), and the recommended few-step sampler (fast.py)."""

from i2vgen.schedulers.ddim import DDIMScheduler
from i2vgen.schedulers.dpm_solver import DPMSolverMultistepScheduler
from i2vgen.schedulers.euler import EulerDiscreteScheduler
from i2vgen.schedulers.unipc import UniPCMultistepScheduler

SCHEDULERS = {cls.__name__: cls for cls in (DDIMScheduler, UniPCMultistepScheduler, DPMSolverMultistepScheduler,
                                              EulerDiscreteScheduler)}
