"""Multi-head attention and the transformer feed-forward.

Both are shared by the UNet's spatial and temporal transformers and by the VAE's mid-block attention.
Attribute names equal the checkpoint keys (`to_q`, `to_k`, `to_v`, `to_out.0`, `group_norm`, `net.0.proj`,
`net.2`), so released weights load by a straight match.

The attention step itself, softmax(q k^T / sqrt(d)) v, is the layer's `processor`: by default one
`scaled_dot_product_attention` call (AttnProcessor); research code swaps in its own (docs/research.md).
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from i2vgen.models.chunking import feed_forward_rows


class AttnProcessor:
    """The default attention step: processor(attn, query, key, value) -> out, all (B, heads, N, head_dim).

    softmax(q k^T / sqrt(d)) v as one F.scaled_dot_product_attention call. In half precision the tensors stay
    half, as in the reference; the kernel sums the softmax in float32 (test_blocks: 1e5 keys, whose sum of
    exponentials overflows float16)."""

    def __call__(self, attn: "Attention", query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, key, value)


class Attention(nn.Module):
    """Scaled dot-product attention (Vaswani et al. 2017, sec. 3.2) over token sequences.

    Self-attention when `encoder_hidden_states` is None, cross-attention to it otherwise.
    The VAE variant normalises the tokens with a GroupNorm first and adds the input back at the end
    (`residual_connection`).
    `processor` computes the attention from the split heads (AttnProcessor unless set otherwise);
    `fuse_projections` computes q, k, v (self-attention) or k, v (cross-attention) with one matrix product.
    """

    def __init__(
        self,
        query_dim: int,
        *,  # the head arguments by name only: the reference's positional, swapped naming is a known pitfall
        cross_attention_dim: int | None = None,
        heads: int = 8,
        head_dim: int = 64,
        bias: bool = False,
        out_bias: bool = True,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        residual_connection: bool = False,
    ):
        super().__init__()
        inner_dim = heads * head_dim
        context_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.heads = heads
        self.is_cross_attention = cross_attention_dim is not None
        self.residual_connection = residual_connection

        self.group_norm = nn.GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups else None
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias)])  # key: to_out.0
        self.processor = AttnProcessor()
        # fuse_projections() fills these; non-persistent, so the state dict (and saved files) never hold them
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)

    def fuse_projections(self):
        """Concatenate the q, k, v weights (self-attention) or the k, v weights (cross-attention) into one matrix:
        the same products in one kernel. The fused copy is not updated by training the separate weights."""
        parts = [self.to_k, self.to_v] if self.is_cross_attention else [self.to_q, self.to_k, self.to_v]
        self.fused_weight = torch.cat([p.weight for p in parts]).detach()
        self.fused_bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts]).detach()

    def unfuse_projections(self):
        self.fused_weight = self.fused_bias = None

    def _project(self, x: torch.Tensor, context: torch.Tensor | None):
        """q from the tokens x; k, v from the context, or from x itself when there is none."""
        if self.fused_weight is None or self.is_cross_attention != (context is not None):  # unfused, or unusual use
            context = x if context is None else context
            return self.to_q(x), self.to_k(context), self.to_v(context)
        if self.is_cross_attention:
            return self.to_q(x), *F.linear(context, self.fused_weight, self.fused_bias).chunk(2, dim=-1)
        return F.linear(x, self.fused_weight, self.fused_bias).chunk(3, dim=-1)

    frame_windows = None  # a FrameWindows on the attentions across frames of a long video (frame_windows.py)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C) tokens, optional (B, M, C_ctx) context -> (B, N, C). With `frame_windows` set (self-attention
        across the N frames of a long video), attention within overlapping windows of frames, fused."""
        if self.frame_windows is not None:
            return self.frame_windows.fuse(self._attend, hidden_states)
        return self._attend(hidden_states, encoder_hidden_states)

    def _attend(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        if self.group_norm is not None:
            # GroupNorm wants channels second: (B, N, C) -> (B, C, N) and back.
            hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = self._project(hidden_states, encoder_hidden_states)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = self.processor(self, q, k, v)  # softmax(q k^T / sqrt(d)) v, by default (AttnProcessor)
        del q, k, v  # dead from here: freed before the output projection, not after it
        out = rearrange(out, "b h n d -> b n (h d)")
        out = self.to_out[0](out)
        return out + residual if self.residual_connection else out


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020, "GLU Variants Improve Transformer"): x W * gelu(x V)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)  # value and gate in one matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GELU(nn.Module):
    """Linear projection followed by the exact (erf) GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """Position-wise MLP: activation projection to 4 * dim, linear back to dim.

    `activation_fn` is "geglu" (spatial and temporal transformer blocks) or "gelu" (the image-latent
    temporal encoder). Keys: `net.0.proj`, `net.2`.
    """

    def __init__(self, dim: int, activation_fn: str = "geglu"):
        super().__init__()
        activations = {"geglu": GEGLU, "gelu": GELU}
        if activation_fn not in activations:
            raise ValueError(f"activation_fn must be one of {sorted(activations)}, got {activation_fn!r}")
        self.net = nn.Sequential(
            activations[activation_fn](dim, 4 * dim),
            nn.Identity(),  # the reference's dropout (p = 0) in this slot, so the output projection is net.2
            nn.Linear(4 * dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return feed_forward_rows(self.net, x, self.net[0].proj.out_features)  # row chunks: chunking.py
