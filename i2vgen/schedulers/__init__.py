"""Samplers, one per file over the shared schedule math in schedule.py: DDIM (the released model's), UniPC,
DPM-Solver++ and Euler (parity-checked against diffusers), and the recommended few-step sampler (fast.py)."""

from .ddim import DDIMScheduler
from .dpm_solver import DPMSolverMultistepScheduler
from .euler import EulerDiscreteScheduler
from .unipc import UniPCMultistepScheduler

SCHEDULERS = {cls.__name__: cls for cls in (DDIMScheduler, UniPCMultistepScheduler, DPMSolverMultistepScheduler,
                                              EulerDiscreteScheduler)}
