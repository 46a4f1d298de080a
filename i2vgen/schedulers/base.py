"""What every scheduler shares besides its math: the config keys and their checks, how a scheduler is built from
keys or from another scheduler's config (switching samplers), saved and loaded, and the record a step returns.

`scheduler.config` reads like diffusers' (a read-only dict with attribute access: `config["beta_schedule"]`,
`config.beta_schedule`, `dict(config)`, `{**config}`). Switching follows diffusers' rules (configuration_utils.py,
`extract_init_dict`), so that `B.from_config(A.config)` and back gives A's config again:
- keys the config's own class left at their defaults (listed in `_use_default_values`) are not carried over: the
  new class uses its own defaults (DDIM's "leading" spacing does not become Euler's);
- keys the new class does not have are kept in its config, unused, for the next switch (DDIM's clip_sample
  survives a trip through UniPC);
- a solver_type of another solver family maps to this one's default (UniPC's "bh2" -> DPM's "midpoint", and back).
"""

import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np

from i2vgen.checks import check_int
from i2vgen.loading import Config, _listify, _tuplify, read_config, write_config
from i2vgen.outputs import BaseOutput
from i2vgen.schedulers.schedule import first_step_index

CONFIG_NAME = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# The released checkpoint's scheduler (ali-vilab/i2vgen-xl, scheduler/scheduler_config.json; REFERENCE.md).
RELEASED_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="squaredcos_cap_v2",
    clip_sample=False, set_alpha_to_one=True, steps_offset=1, prediction_type="v_prediction",
    rescale_betas_zero_snr=True, timestep_spacing="leading",
)
# Keys of the reference's schedulers that i2vgen accepts only at the value that turns them off (flow matching and a
# UniPC helper solver are for other model families); any other value is refused in one line.
OFF_ONLY = {"use_flow_sigmas": False, "use_dynamic_shifting": False, "solver_p": None}
SCHEDULERS = {}  # class name -> class, filled as the scheduler classes are defined


# ---- config keys ----

@dataclasses.dataclass
class ScheduleConfig(Config):
    """The config keys every scheduler shares: the training noise schedule, what the model predicts, and how
    inference timesteps are placed on it. Each scheduler's config adds its own keys after these."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None  # overrides beta_schedule when given
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False


@dataclasses.dataclass
class SigmaScheduleConfig(ScheduleConfig):
    """Keys of the samplers in sigma form (DPM-Solver, UniPC, Euler): where the last step ends, and inference sigmas
    spaced by a formula instead of by timestep (at most one: Karras et al. 2022 eq. 5, evenly in log sigma, or
    Lee et al. 2024's beta distribution; schedule.py)."""

    final_sigmas_type: str = "zero"  # the last step ends at sigma = 0 ("zero") or at train step 0 ("sigma_min")
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False


@dataclasses.dataclass
class MultistepConfig(SigmaScheduleConfig):
    """Keys the multistep solvers (DPM-Solver++, UniPC) share; the flow-matching keys are accepted switched off."""

    solver_order: int = 2
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    lower_order_final: bool = True  # lower orders on the last steps (DPM: when there are fewer than 15)
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"


def check_choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of {allowed}")


def check_step_shapes(model_output, sample) -> None:
    """A step's model output and sample must have one shape (otherwise they would broadcast into a wrong sample
    or fail deep in the step's math)."""
    if tuple(model_output.shape) != tuple(sample.shape):
        raise ValueError(f"step: model_output has shape {tuple(model_output.shape)} but sample has "
                         f"{tuple(sample.shape)}; they must match")


def check_config(c) -> None:
    """The checks every scheduler config gets (each scheduler adds its own choices)."""
    if c.trained_betas is None:
        check_choice("beta_schedule", c.beta_schedule, BETA_SCHEDULES)
    check_choice("timestep_spacing", c.timestep_spacing, TIMESTEP_SPACINGS)
    check_choice("prediction_type", c.prediction_type, PREDICTION_TYPES)
    if not (isinstance(c.num_train_timesteps, int) and c.num_train_timesteps >= 2):
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {c.num_train_timesteps!r}")
    check_int("steps_offset", c.steps_offset, 0, c.num_train_timesteps - 1)
    check_betas(c)
    for key, off in OFF_ONLY.items():
        if getattr(c, key, off) != off:
            raise ValueError(f"{key}={getattr(c, key)!r} is not supported by i2vgen (use {off!r})")
    if isinstance(c, SigmaScheduleConfig):
        check_choice("final_sigmas_type", c.final_sigmas_type, FINAL_SIGMAS_TYPES)
        if c.use_karras_sigmas + c.use_exponential_sigmas + c.use_beta_sigmas > 1:
            raise ValueError("use at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas")


def check_betas(c) -> None:
    """Betas lie in [0, 1]: one above 1 makes alpha_bar negative (and its square root NaN), a negative one makes it
    grow. Read from the config's numbers, not a tensor, so that schedulers can be built under FakeTensorMode."""
    if c.trained_betas is not None:
        values, names = c.trained_betas, "trained_betas"
    elif c.beta_schedule in ("linear", "scaled_linear"):  # every beta lies between these two
        values, names = (c.beta_start, c.beta_end), "beta_start and beta_end"
    else:
        return  # squaredcos_cap_v2 is capped at 0.999 by construction
    bad = [b for b in values if not (math.isfinite(b) and 0 <= b <= 1)]
    if bad:
        raise ValueError(f"{names} must be finite and in [0, 1]; got {bad[0]}")


class FrozenConfig(dict):
    """A scheduler's config: a read-only dict whose keys also read as attributes. Which keys were left at their
    defaults (`_use_default_values`) is bookkeeping for switching, not part of the value: equality ignores it."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no key {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("a scheduler's config is read-only; build a new scheduler with "
                        "Scheduler.from_config(scheduler.config, key=value)")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _read_only
    update = pop = popitem = setdefault = clear = _read_only

    def __eq__(self, other):
        if not isinstance(other, dict):
            return NotImplemented
        return _value(self) == _value(other)

    __hash__ = None

    def __reduce__(self):  # copy and pickle without going through the refused __setitem__
        return FrozenConfig, (dict(self),)

    def to_dict(self) -> dict:
        """The config as saved: JSON values, without the bookkeeping key."""
        return {k: _listify(v) for k, v in self.items() if k != "_use_default_values"}


def _value(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "_use_default_values"}


def _plain(value):
    """Config values as JSON would give them back (lists and arrays as tuples), so configs compare after saving."""
    if isinstance(value, np.ndarray) or (hasattr(value, "tolist") and not np.isscalar(value)):
        value = value.tolist()
    return _tuplify(value)


# ---- construction, switching, saving ----

@dataclasses.dataclass
class SchedulerOutput(BaseOutput):
    """A step's result: x_{t-1}, by attribute, key or position (`out.prev_sample`, `out[0]`)."""

    prev_sample: object


class SchedulerMixin:
    """Builds a scheduler from config keys (`Cls(**keys)`, or `Cls(config_dataclass)`), then calls its `_setup()`
    (the tables its math needs). Each subclass names its `config_class` (a Config dataclass of its keys)."""

    config_class: type
    config_name = CONFIG_NAME
    order = 1  # model evaluations per step
    recommended_steps = 50  # what a pipeline call without num_inference_steps uses (the released DDIM's 50)
    _deprecated_kwargs = ()  # diffusers' name for constructor keys kept only for old configs: none here
    begin_index = None

    def __init_subclass__(cls, **kwargs):
        """Registers the class (for `compatibles` and loading by `_class_name`) and gives its constructor the
        signature of its config keys, so that help() and inspect list them."""
        super().__init_subclass__(**kwargs)
        SCHEDULERS[cls.__name__] = cls
        build = SchedulerMixin.__init__

        def __init__(self, config=None, **keys):
            build(self, config, **keys)

        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                  inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
                   for f in dataclasses.fields(cls.config_class)]
        __init__.__signature__ = inspect.Signature(params)
        __init__.__doc__ = f"{cls.__name__} from its config keys (or a {cls.config_class.__name__})."
        cls.__init__ = __init__

    def __init__(self, config=None, _hidden: dict | None = None, **keys):
        if config is not None and keys:
            raise TypeError("pass either a config or config keys, not both")
        if config is not None:
            keys = config if isinstance(config, dict) else dataclasses.asdict(config)
        keys = self._translate(dict(keys))
        names = [f.name for f in dataclasses.fields(self.config_class)]
        unknown = sorted(k for k in keys if k not in names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no option {unknown[0]!r}; its options are {sorted(names)}")
        values = self.config_class.from_dict({k: _plain(v) for k, v in keys.items()})
        check_config(values)
        defaulted = sorted(set(names) - set(keys))
        self.config = FrozenConfig({**(_hidden or {}), **dataclasses.asdict(values),
                                    **({"_use_default_values": defaulted} if defaulted else {})})
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Where in the step schedule sampling starts (a pipeline sets 0 before its loop; set_timesteps clears it).
        Without it, a sigma-form sampler finds its place from the first timestep it is given (first_step_index):
        ambiguous when the schedule repeats a timestep, as Karras sigmas on a zero-terminal-SNR schedule do."""
        self.begin_index = begin_index

    def _init_step_index(self, timestep) -> None:
        self.step_index = self.begin_index
        if self.step_index is None:
            self.step_index = first_step_index(self.timesteps, timestep)

    def register_to_config(self, **keys) -> None:
        """Adds or replaces config keys (saved with the config; the tables built from it are not rebuilt)."""
        self.config = FrozenConfig({**self.config, **{k: _plain(v) for k, v in keys.items()}})

    @property
    def compatibles(self) -> list:
        """The scheduler classes this one's config can build (all of i2vgen's: they share the schedule keys)."""
        return list(SCHEDULERS.values())

    @classmethod
    def from_config(cls, config, **overrides):
        """This scheduler from another one's config (ours, or a dict such as diffusers' `scheduler.config` or a
        scheduler_config.json), with `overrides` on top; diffusers' switching rules (module docstring)."""
        d = dict(config.to_dict() if isinstance(config, Config) else config)
        defaulted = set(d.pop("_use_default_values", ()))
        d = {k: v for k, v in d.items() if k not in defaulted and not k.startswith("_")}
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        known = set().union(*({f.name for f in dataclasses.fields(c.config_class)} for c in SCHEDULERS.values()))
        bad = sorted(k for k in overrides if k not in names and k not in known)
        if bad:
            raise ValueError(f"{cls.__name__} has no option {bad[0]!r}; its options are {sorted(names)}")
        d.update(overrides)
        own = {k: v for k, v in d.items() if k in names}
        return cls(**own, _hidden={k: _plain(v) for k, v in d.items() if k not in names})

    @classmethod
    def _translate(cls, keys: dict) -> dict:
        """Another solver family's values of this class's keys, mapped as the reference maps them (none here)."""
        return keys

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None):
        folder = Path(pretrained_model_name_or_path, subfolder or "")
        config = read_config(folder, CONFIG_NAME)
        try:
            return cls.from_config(config)
        except (ValueError, TypeError) as error:  # a value of the wrong type, or one no schedule can use
            raise ValueError(f"{folder / CONFIG_NAME}: {error}") from None

    def save_pretrained(self, save_directory) -> None:
        write_config(save_directory, type(self).__name__, self.config.to_dict(), CONFIG_NAME)

    save_config = save_pretrained  # diffusers' name for the same file
