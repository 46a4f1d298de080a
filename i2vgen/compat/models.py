"""diffusers' model API aliases: `I2VGenXLUNet` and `AutoencoderKL` as the core models (i2vgen/models/) plus the
ModelMixin methods that ported code calls and the core does not need (sizes, the xformers switches).

`i2vgen.I2VGenXLUNet` and `i2vgen.AutoencoderKL` are these classes, and `I2VGenXLPipeline` builds them; the core
classes of the same name in i2vgen/models/ are their bases.
"""

import warnings

from torch import nn

from i2vgen.models import unet, vae


class DiffusersModelAPI:
    """Mixin for an nn.Module model."""

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (only those with requires_grad if `only_trainable`; without nn.Embedding weights
        if `exclude_embeddings`, which changes nothing here: the timestep embeddings are Linear layers)."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (and buffers, such as fused projections, if `return_buffers`)."""
        tensors = [*self.parameters(), *(self.buffers() if return_buffers else [])]
        return sum(t.numel() * t.element_size() for t in tensors)

    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        """Has no effect, and warns: attention already is one `scaled_dot_product_attention` call, which picks a
        flash or memory-efficient kernel by itself (the job xformers did before PyTorch 2). No xformers needed."""
        warnings.warn("enable_xformers_memory_efficient_attention has no effect: attention already runs through "
                      "torch's scaled_dot_product_attention (flash / memory-efficient kernels); xformers is not used",
                      stacklevel=3)

    def disable_xformers_memory_efficient_attention(self):
        """Nothing to disable (see enable_xformers_memory_efficient_attention)."""


class I2VGenXLUNet(DiffusersModelAPI, unet.I2VGenXLUNet):
    __doc__ = unet.I2VGenXLUNet.__doc__


class AutoencoderKL(DiffusersModelAPI, vae.AutoencoderKL):
    __doc__ = vae.AutoencoderKL.__doc__

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None):
        """The reference's VAE has this switch; ours recomputes nothing (only the UNet trains here)."""
        raise ValueError("AutoencoderKL does not support gradient checkpointing")
