"""CPU offload: the models live on the CPU and visit the accelerator only while they run.

- Model offload (`enable_model_cpu_offload`): each whole model moves to the execution device for its part of
  the call (`_on_execution_device`) and back to the CPU after it.
- Sequential offload (`enable_sequential_cpu_offload`): every module that owns tensors (parameters or buffers
  of its own, not its children's) gets a forward pre-hook that moves them to the execution device and a forward
  hook that moves them back. The peak accelerator memory is then the activations plus the largest single
  layer; each step pays a host-to-device copy of all weights, so this is far slower than model offload.
"""

import contextlib

import torch
from torch import nn

from i2vgen.checks import check_device


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


class OffloadMixin:
    """For the pipeline: needs `self.models` (the torch modules), `self.device`, `self.to`, and
    `_offload_device = None`, `_sequential_hooks = []` set in its constructor."""

    def enable_model_cpu_offload(self, device=None):
        """Keep every model on the CPU and move each to `device` (default: the accelerator, e.g. cuda) only while
        it runs. Also switches on the UNet's forward chunking (`unet.enable_forward_chunking()`: its layers run on
        slices of frames, same output)."""
        if device is None:
            device = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
            if device is None:
                raise ValueError("enable_model_cpu_offload moves models to an accelerator between uses, and this "
                                 "machine has none; run on the CPU without it, or pass device=")
        device = check_device(device)
        detach(self._sequential_hooks)
        self._offload_device = device
        self.to("cpu")
        self.unet.enable_forward_chunking()

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str = "cuda"):
        """Keep every weight on the CPU and move each layer's weights to `device` only while that layer runs:
        the least accelerator memory, and by far the slowest; prefer `enable_model_cpu_offload`. `gpu_id` picks
        the GPU, as in the reference."""
        device = torch.device(device)
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        device = check_device(device)
        self._offload_device = device
        detach(self._sequential_hooks)
        self._sequential_hooks = [handle for model in self.models for handle in attach(model, device)]

    @property
    def execution_device(self) -> torch.device:
        """Where the call computes: the offload device when offloading, else where the UNet is."""
        return self._offload_device or self.device

    @contextlib.contextmanager
    def _on_execution_device(self, model: torch.nn.Module):
        """Place `model` on the execution device for the block (a no-op without model CPU offload)."""
        if self._offload_device is None or self._sequential_hooks:  # none, or per layer
            yield model
            return
        model.to(self._offload_device)
        try:
            yield model
        finally:
            model.to("cpu")
