"""Samplers, one per file over the shared schedule math in schedule.py: DDIM (the released model's), UniPC,
DPM-Solver++ and Euler (parity-checked against diffusers), and the recommended few-step sampler (fast.py, new).

`by_name(name, config, **options)` builds one from a pipeline's scheduler config the way the CLI's --scheduler
names them: the released DDIM as configured, the others with trailing spacing (the zero-SNR model's pure-noise
start, t = 999) and the given config options on top.
"""

from i2vgen.loading import read_config

from i2vgen.schedulers.base import CONFIG_NAME, RELEASED_SCHEDULER_CONFIG, SCHEDULERS  # noqa: F401
from i2vgen.schedulers.ddim import DDIMScheduler
from i2vgen.schedulers.dpm_solver import DPMSolverMultistepScheduler
from i2vgen.schedulers.euler import EulerDiscreteScheduler
from i2vgen.schedulers.fast import FAST_OPTIONS, PowerUniPCScheduler
from i2vgen.schedulers.unipc import UniPCMultistepScheduler
TRAILING = {"timestep_spacing": "trailing"}
# name -> (class, options over the pipeline's config)
NAMED = {
    "ddim": (DDIMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, TRAILING),
    "dpm++": (DPMSolverMultistepScheduler, {**TRAILING, "final_sigmas_type": "zero"}),
    "sde-dpm++": (DPMSolverMultistepScheduler, {**TRAILING, "final_sigmas_type": "zero",
                                               "algorithm_type": "sde-dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, TRAILING),
    "fast": (PowerUniPCScheduler, FAST_OPTIONS),
}


def by_name(name: str, config, **options):
    """The scheduler called `name` (a key of NAMED) built from `config` with `options` on top."""
    if name not in NAMED:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(NAMED)}")
    cls, defaults = NAMED[name]
    return cls.from_config(config, **{**defaults, **options})


def load_scheduler(folder):
    """The scheduler saved in `folder`, of the class its scheduler_config.json names (DDIM unless it names one of
    ours), so that a pipeline saved with another sampler loads with it."""
    name = read_config(folder, CONFIG_NAME).get("_class_name")
    return SCHEDULERS.get(name, DDIMScheduler).from_pretrained(folder)
