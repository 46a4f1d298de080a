"""Scalar conditioning (diffusion timestep, frames per second) as vectors.

A scalar is first written as a bank of sinusoids (Vaswani et al. 2017, sec. 3.5; DDPM, Ho et al. 2020,
appendix B), then passed through a small MLP.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) scalars (integer or fractional) -> (N, dim) float32 features [cos(t w_k), sin(t w_k)].

    Frequencies w_k = max_period^(-k / (dim // 2)), k = 0 .. dim//2 - 1: cosines first, then sines
    (the reference's `flip_sin_to_cos=True, downscale_freq_shift=0`). An odd `dim` gets a zero last column.
    Always float32, whatever the model's dtype; the caller casts.
    """
    half = dim // 2
    # Same operation order as the reference, so the float32 frequencies agree bit for bit.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedding(nn.Module):
    """Two-layer MLP on the sinusoidal features: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
