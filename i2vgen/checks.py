"""Checks on values a user hands in, shared by every layer (the models' configs, the schedulers, the pipeline
call, the applications).

Each check raises one ValueError (or TypeError) whose message names the argument, as the caller spells it
("--eta" on the command line, "eta" in Python), and says what is allowed.
"""

import math
import numbers

import torch


# ---- values ----

def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """An integer (not a bool or a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_real(name: str, value, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        allowed = ("a finite number" if (low, high) == (-math.inf, math.inf) else
                   f"a number between {low:g} and {high:g}")
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_text(name: str, value) -> str:
    """A string that is valid Unicode text (a command line in another encoding gives lone surrogates)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8 text") from None
    return value


# ---- devices ----

def check_device(name) -> torch.device:
    """A device that exists on this machine and can hold data: cpu, or an available accelerator (cuda,
    cuda:N, mps, xpu, ...); not meta, which holds shapes only."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "meta":
        raise ValueError("device 'meta' holds no data, so no video can be computed on it; use cpu or cuda")
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"device {str(device)!r} is not available on this machine (torch.{device.type} reports "
                         f"none); use cpu")
    count = backend.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {str(device)!r} does not exist: this machine has {count} {device.type} "
                         f"device(s), {device.type}:0 to {device.type}:{count - 1}")
    return device
