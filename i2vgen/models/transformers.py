"""Spatial and temporal transformers: attention over the pixels of a frame, or over the frames of a pixel.

A video tensor (b, c, f, h, w) enters the UNet's 2D layers as a batch of frames ((b f), c, h, w).
- `Transformer2DModel` attends across the h*w positions of each frame, with cross-attention to the
  conditioning tokens (text, image latent, CLIP image): tokens ((b f), (h w), c).
- `TransformerTemporalModel` attends across the f frames at each position: tokens ((b h w), f, c).
- `ImageLatentTemporalEncoder` is the small temporal transformer that turns the image-latent condition
  into per-frame features before it is concatenated to the noisy input.
Attribute names are the checkpoint keys.
"""

import torch
from einops import rearrange
from torch import nn

from i2vgen.models.attention import Attention, FeedForward
from i2vgen.models.checkpointing import Checkpointable
from i2vgen.models.chunking import Chunkable, per_pixel


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: attention, second attention, GEGLU feed-forward, each with a residual.

        x = x + attn1(norm1(x))             self-attention
        x = x + attn2(norm2(x), context)    cross-attention to `context` if `cross_attention_dim` is set,
                                            otherwise a second self-attention (the temporal transformers)
        x = x + ff(norm3(x))
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int, cross_attention_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, cross_attention_dim=cross_attention_dim, heads=heads, head_dim=head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, num_frames: int = 1) -> torch.Tensor:
        """x ((b f), L, dim) tokens -> same shape; `context` (b, M, cross_attention_dim) has one row per video.

        The f frames of a video share its context, and softmax runs per query, so for the cross-attention
        their queries are folded into one sequence of f * L: keys and values are projected once per video,
        not once per frame, and the result equals attending with the context repeated per frame."""
        x = x + self.attn1(self.norm1(x))
        queries = rearrange(self.norm2(x), "(b f) l c -> b (f l) c", f=num_frames)
        x = x + rearrange(self.attn2(queries, context), "b (f l) c -> (b f) l c", f=num_frames)
        return x + self.ff(self.norm3(x))


def _transformer_parts(channels: int, *, heads: int, head_dim: int, norm_num_groups: int,
                       cross_attention_dim: int | None = None) -> tuple[nn.Module, ...]:
    """GroupNorm, Linear proj_in, [one BasicTransformerBlock] and Linear proj_out, as the two transformers
    below build them (a list of one block: the checkpoint keys it as transformer_blocks.0)."""
    inner_dim = heads * head_dim
    return (nn.GroupNorm(norm_num_groups, channels, eps=1e-6), nn.Linear(channels, inner_dim),
            nn.ModuleList([BasicTransformerBlock(inner_dim, heads=heads, head_dim=head_dim,
                                                 cross_attention_dim=cross_attention_dim)]),
            nn.Linear(inner_dim, channels))


class Transformer2DModel(Checkpointable, nn.Module):
    """Spatial transformer over each frame's pixels, with cross-attention to the conditioning tokens.

    GroupNorm -> Linear proj_in -> one transformer block -> Linear proj_out, added to the input.
    (The UNet's 3D blocks configure linear, not 1x1-conv, projections.)
    """

    def __init__(self, channels: int, *, heads: int, head_dim: int, cross_attention_dim: int, norm_num_groups: int):
        super().__init__()
        self.norm, self.proj_in, self.transformer_blocks, self.proj_out = _transformer_parts(
            channels, heads=heads, head_dim=head_dim, norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """x ((b f), c, h, w), context (b, M, cross_attention_dim), one row per video -> ((b f), c, h, w).
        num_frames defaults to len(x) // len(context) (forward chunking passes a slice of a video's frames)."""
        height, num_frames = x.shape[-2], num_frames or x.shape[0] // context.shape[0]
        h = rearrange(self.norm(x), "n c h w -> n (h w) c")
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, num_frames)
        h = self.proj_out(h)
        return x + rearrange(h, "n (h w) c -> n c h w", h=height)


class TransformerTemporalModel(Checkpointable, Chunkable, nn.Module):
    """Temporal transformer: each pixel's sequence of frames attends to itself (two self-attentions).

    The GroupNorm statistics span all frames of a video (the norm runs on (b, c, f, h, w)), then the
    tokens are folded to ((b h w), f, c). Added to the input.
    """

    def __init__(self, channels: int, *, heads: int, head_dim: int, norm_num_groups: int):
        super().__init__()
        self.norm, self.proj_in, self.transformer_blocks, self.proj_out = _transformer_parts(
            channels, heads=heads, head_dim=head_dim, norm_num_groups=norm_num_groups)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """((b f), c, h, w) -> same shape."""
        _, _, height, width = x.shape
        h = self.norm(rearrange(x, "(b f) c h w -> b c f h w", f=num_frames))
        h = self.proj_in(rearrange(h, "b c f h w -> (b h w) f c"))
        for block in self.transformer_blocks:
            h = per_pixel(block, h, chunk=self.forward_chunk_size, num_frames=num_frames)
        h = self.proj_out(h)
        return x + rearrange(h, "(b h w) f c -> (b f) c h w", h=height, w=width)


class ImageLatentTemporalEncoder(nn.Module):
    """Temporal self-attention and a GELU MLP over the image-latent features of each pixel's frames.

        x = x + attn1(norm1(x))
        x = x + ff(x)              (no norm before the feed-forward, as in the released model)

    Keys: norm1, attn1, ff (the reference's `I2VGenXLTransformerTemporalEncoder`).
    """

    def __init__(self, dim: int, *, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads=heads, head_dim=head_dim)
        self.ff = FeedForward(dim, activation_fn="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """((b h w), f, dim) -> same shape."""
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(x)
