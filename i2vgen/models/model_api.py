"""The model methods of diffusers' ModelMixin that users call, for I2VGenXLUNet and AutoencoderKL.

- size: `num_parameters`, `get_memory_footprint`;
- attention hooks (see docs/research.md): `attn_processors`, `set_attn_processor`, `set_default_attn_processor`
  (and the xformers switches, which only say that attention already is one SDPA call);
- fused projections: `fuse_qkv_projections`, `unfuse_qkv_projections`;
- training memory: `enable_gradient_checkpointing`, `disable_gradient_checkpointing` (models that name their
  checkpointed blocks in `_checkpointed_blocks`).
"""

import functools
import warnings

import torch
import torch.utils.checkpoint
from torch import nn

from i2vgen.models.attention import Attention, AttnProcessor

PROCESSOR_SUFFIX = ".processor"


def _checkpointed(checkpoint, forward, *args, **kwargs):
    """Run `forward` under activation checkpointing when gradients are being recorded, plainly otherwise."""
    return checkpoint(forward, *args, **kwargs) if torch.is_grad_enabled() else forward(*args, **kwargs)


class ModelAPIMixin:
    """Mixin for an nn.Module model."""

    # ---- size ----

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

    # ---- attention processors ----

    def _attention_layers(self) -> dict[str, Attention]:
        return {name + PROCESSOR_SUFFIX: m for name, m in self.named_modules() if isinstance(m, Attention)}

    @property
    def attn_processors(self) -> dict:
        """{"<module path>.processor": processor} for every attention layer, named as in the reference, e.g.
        "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1.processor"."""
        return {name: layer.processor for name, layer in self._attention_layers().items()}

    def set_attn_processor(self, processor):
        """Give attention layers a processor: one callable for all, or a dict {name: callable} for some (names
        as in `attn_processors`). A processor is called as processor(attn, query, key, value) with (B, heads, N,
        head_dim) tensors and returns the attended values in that shape; see AttnProcessor and docs/research.md."""
        layers = self._attention_layers()
        processors = processor if isinstance(processor, dict) else dict.fromkeys(layers, processor)
        unknown = sorted(set(processors) - set(layers))
        if unknown:
            raise ValueError(f"set_attn_processor: no attention layer named {unknown[:3]}; names are those of "
                             f"attn_processors, e.g. {next(iter(layers))!r}")
        for name, p in processors.items():
            if not callable(p):
                raise TypeError(f"set_attn_processor: the processor for {name} is a {type(p).__name__}, not a callable")
            layers[name].processor = p

    def set_default_attn_processor(self):
        """Back to one scaled_dot_product_attention call everywhere."""
        self.set_attn_processor(AttnProcessor())

    def enable_xformers_memory_efficient_attention(self, attention_op=None):
        """Has no effect, and warns: attention already is one `scaled_dot_product_attention` call, which picks a
        flash or memory-efficient kernel by itself (the job xformers did before PyTorch 2). No xformers needed."""
        warnings.warn("enable_xformers_memory_efficient_attention has no effect: attention already runs through "
                      "torch's scaled_dot_product_attention (flash / memory-efficient kernels); xformers is not used",
                      stacklevel=3)

    def disable_xformers_memory_efficient_attention(self):
        """Nothing to disable (see enable_xformers_memory_efficient_attention)."""

    # ---- fused projections ----

    def fuse_qkv_projections(self):
        """Compute q, k and v with one matrix product in self-attention, k and v with one in cross-attention
        (same maths: outputs change by float rounding only)."""
        for layer in self._attention_layers().values():
            layer.fuse_projections()

    def unfuse_qkv_projections(self):
        for layer in self._attention_layers().values():
            layer.unfuse_projections()

    # ---- gradient checkpointing ----

    def _checkpointed_blocks(self) -> list[nn.Module]:
        raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any("forward" in vars(block) for block in self._checkpointed_blocks())

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None):
        """Keep only each block's inputs during training and recompute its activations in the backward pass:
        activation memory drops to about the blocks' inputs, for about one more forward pass of time. Same
        outputs and gradients. `gradient_checkpointing_func(function, *args)` replaces
        torch.utils.checkpoint.checkpoint (non-reentrant) if given. No effect without autograd (sampling)."""
        checkpoint = gradient_checkpointing_func or functools.partial(torch.utils.checkpoint.checkpoint,
                                                                      use_reentrant=False)
        for block in self._checkpointed_blocks():
            block.forward = functools.partial(_checkpointed, checkpoint, type(block).forward.__get__(block))

    def disable_gradient_checkpointing(self):
        for block in self._checkpointed_blocks():
            vars(block).pop("forward", None)
