"""Activation (gradient) checkpointing of the UNet: a checkpointed module keeps only its inputs while autograd
records, and runs again in the backward pass to rebuild its intermediates (Chen et al. 2016, "Training Deep
Nets with Sublinear Memory Cost"). Same outputs and gradients, for about one more forward pass of time.

Two granularities (`I2VGenXLUNet.enable_gradient_checkpointing(granularity=...)`):
- "block": each down, mid and up block. Least recompute bookkeeping, but a block's backward rebuilds all of
  its layers' intermediates at once, which at 1280x704x16 is tens of GiB.
- "layer": each resnet, temporal conv, spatial transformer and temporal transformer (transformer_in among
  them). The backward holds the saved inputs of every layer plus the intermediates of one layer; with forward
  chunking on, one slice of one layer (each slice of a per-frame layer is its own checkpointed call).
"""

import torch


class Checkpointable:
    """A module whose calls run under `gradient_checkpointing` (a checkpoint function, fn(function, *args,
    **kwargs)) while it is set and autograd records; None (the default): plain calls. Put before nn.Module in
    the bases, so that this __call__ wraps nn.Module's (and with it the module's hooks)."""

    gradient_checkpointing = None

    def __call__(self, *args, **kwargs):
        if self.gradient_checkpointing is not None and torch.is_grad_enabled():
            return self.gradient_checkpointing(super().__call__, *args, **kwargs)
        return super().__call__(*args, **kwargs)
