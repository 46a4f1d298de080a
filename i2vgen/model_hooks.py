"""Model hooks: a research change to a model (an added module, causal temporal attention, ...) named in its
config so that it is never silently lost.

    from i2vgen.model_hooks import model_hook

    @model_hook
    def add_motion_strength(unet):          # in my_research/hooks.py
        unet.motion_strength = torch.nn.Linear(1, unet.config.block_out_channels[0] * 4)
        ...                                 # and whatever forward hooks or module swaps use it

A training config names it, `"model_hook": "my_research.hooks:add_motion_strength"`. Training applies it after
loading the model; a saved UNet records it in its config.json as `_model_hook`, and `from_pretrained` applies it
again, before loading the parameters it added (`loading.ModelMixin.from_pretrained`), so validation,
`I2VGenXLPipeline.from_pretrained` and `i2vgen generate` all run the changed model. Only functions marked with
`@model_hook` are applied: a config names code to run, and this keeps it to code written for the purpose.
"""

import importlib
import warnings

import torch


def model_hook(function):
    """Mark `function(model)` (it changes the model in place) as a model hook."""
    function.__i2vgen_model_hook__ = True
    return function


def resolve(spec: str):
    """The hook named "package.module:function"; anything else is one ValueError naming `spec`."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"model_hook {spec!r} must be 'package.module:function'")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"model_hook {spec!r} cannot be imported: {error}") from None
    if not getattr(function, "__i2vgen_model_hook__", False):
        raise ValueError(f"model_hook {spec!r} is not marked with @i2vgen.model_hooks.model_hook")
    return function


def apply(model: torch.nn.Module, spec: str) -> list[str]:
    """Apply the hook `spec` to `model` and record it there (saved as `_model_hook`); returns the names of the
    parameters and buffers it added."""
    recorded = getattr(model, "_model_hook", None)
    if recorded is not None and recorded != spec:
        raise ValueError(f"the model already has model_hook {recorded!r}; cannot apply {spec!r} as well")
    if recorded == spec:
        return []
    before = set(model.state_dict())
    resolve(spec)(model)
    model._model_hook = spec
    return sorted(set(model.state_dict()) - before)


def warn_new(spec: str, names: list[str]) -> None:
    """One warning naming the parameters a hook added that the loaded weights do not have."""
    if names:
        warnings.warn(f"model_hook {spec!r} added {len(names)} tensors that the loaded weights do not have; they "
                      f"keep their initialisation: {names}", stacklevel=3)
