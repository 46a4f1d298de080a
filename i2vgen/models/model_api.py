"""What I2VGenXLUNet and AutoencoderKL share about their attention layers (diffusers' names):

- attention hooks (see docs/research.md): `attn_processors`, `set_attn_processor`, `set_default_attn_processor`;
- fused projections: `fuse_qkv_projections`, `unfuse_qkv_projections`.
The rest of diffusers' model API (sizes, the xformers switches) is in i2vgen/compat/models.py.
"""

from i2vgen.models.attention import Attention, AttnProcessor

PROCESSOR_SUFFIX = ".processor"


class ModelAPIMixin:
    """Mixin for an nn.Module model."""

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

    # ---- fused projections ----

    def fuse_qkv_projections(self):
        """Compute q, k and v with one matrix product in self-attention, k and v with one in cross-attention
        (same maths: outputs change by float rounding only)."""
        for layer in self._attention_layers().values():
            layer.fuse_projections()

    def unfuse_qkv_projections(self):
        for layer in self._attention_layers().values():
            layer.unfuse_projections()
