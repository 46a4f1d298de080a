"""Sequential CPU offload: weights live on the CPU and visit the GPU one layer at a time.

Every module that owns tensors (parameters or buffers of its own, not its children's) gets a forward pre-hook
that moves them to the execution device and a forward hook that moves them back. The peak GPU memory is then
the activations plus the largest single layer; each step pays a host-to-device copy of all weights, so this
is far slower than model offload (`enable_model_cpu_offload`), which moves whole models.
"""

import torch
from torch import nn


def _move_own_tensors(module: nn.Module, device: torch.device) -> None:
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    for name, buffer in module.named_buffers(recurse=False):
        module._buffers[name] = buffer.to(device)


def attach(model: nn.Module, device: torch.device) -> list:
    """Offload `model` to the CPU and hook it so each layer runs on `device`; returns the hook handles."""
    model.to("cpu")

    def load(module, args):
        _move_own_tensors(module, device)

    def unload(module, args, output):
        _move_own_tensors(module, torch.device("cpu"))

    handles = []
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is None and next(module.buffers(recurse=False), None) is None:
            continue
        handles += [module.register_forward_pre_hook(load), module.register_forward_hook(unload)]
    return handles


def detach(handles: list) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()
