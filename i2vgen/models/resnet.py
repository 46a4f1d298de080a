"""Convolutional building blocks: the 2D residual block, the 2x down/up samplers, and the temporal conv.

The 2D modules see frames as a batch of images, ((b f) c h w); only `TemporalConvLayer` mixes frames.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from i2vgen.models.checkpointing import Checkpointable


class ResnetBlock2D(Checkpointable, nn.Module):
    """Pre-activation residual block (He et al. 2016) with an additive timestep embedding (DDPM, Ho et al. 2020).

    x -> GroupNorm -> SiLU -> conv1 (+ Linear(SiLU(temb))) -> GroupNorm -> SiLU -> conv2, added to the input
    (through a 1x1 `conv_shortcut` when the channel count changes). `temb_channels=None` drops the embedding
    (the VAE). (The reference's dropout before conv2 and output_scale_factor are 0 and 1 in both models.)
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, temb_channels: int | None = 512,
                 groups: int = 32, eps: float = 1e-6):
        super().__init__()
        out_channels = out_channels or in_channels

        # In float16/bfloat16 the norms' statistics are still computed in float32, inside PyTorch's kernel
        # (see the unet.py docstring on half precision); the tensors are not upcast, as in the reference.
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # 1x1 projection of the input when the channel count changes.
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C_in, H, W), optional temb (N, T) -> (N, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(input_tensor)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))

        # .contiguous(): after attention the map can be channels-last; the reference feeds the shortcut conv a
        # contiguous copy, and the conv kernel (so the last bit of the result) depends on the memory layout.
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor.contiguous())
        return shortcut + h


class Downsample2D(nn.Module):
    """Halve the spatial size with a stride-2 3x3 conv.

    `padding=1` pads symmetrically (UNet); `padding=0` pads one zero row and column at the bottom and right
    only (the VAE encoder, as in the original LDM code), which gives the same output size for even inputs.
    """

    def __init__(self, channels: int, out_channels: int | None = None, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Double the spatial size (or resize to `output_size`) by nearest-neighbour, then a 3x3 conv.

    The UNet passes the skip connection's size as `output_size` so that odd sizes round-trip.
    """

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=output_size, mode="nearest")
        return self.conv(x)


class FrameConv(nn.Conv3d):
    """A Conv3d with a (3, 1, 1) kernel (a 1D conv along frames), kept as a Conv3d for its checkpoint shape.

    It runs as the equal (3, 1) Conv2d on (b, c, f, (h w)): PyTorch's CPU Conv3d falls back to a slow generic
    kernel, while Conv2d goes to oneDNN (several times faster here)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        out = F.conv2d(x.reshape(b, c, f, h * w), self.weight.squeeze(-1), self.bias, padding=(1, 0))
        return out.view(b, -1, f, h, w)


def _temporal_conv(channels: int, groups: int, dropout: float | None) -> nn.Sequential:
    """GroupNorm -> SiLU [-> Dropout] -> Conv3d with a (3, 1, 1) kernel: a 1D conv along frames only."""
    layers = [nn.GroupNorm(groups, channels), nn.SiLU()]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    layers.append(FrameConv(channels))
    return nn.Sequential(*layers)


class TemporalConvLayer(Checkpointable, nn.Module):
    """Four temporal convolutions in a residual branch (ModelScope T2V / VideoLDM style).

    Mixes information across neighbouring frames at every pixel. The last conv starts at zero, so a freshly
    built layer is the identity (the pretrained image weights are untouched at the start of training).
    Keys: conv1.{0,2}, conv2..conv4.{0,3} (the first conv has no dropout).
    """

    def __init__(self, channels: int, dropout: float = 0.1, norm_num_groups: int = 32):
        super().__init__()
        self.conv1 = _temporal_conv(channels, norm_num_groups, dropout=None)
        self.conv2 = _temporal_conv(channels, norm_num_groups, dropout)
        self.conv3 = _temporal_conv(channels, norm_num_groups, dropout)
        self.conv4 = _temporal_conv(channels, norm_num_groups, dropout)
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """((b f), c, h, w) -> same shape."""
        x = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        h = x
        # conv4(conv3(conv2(conv1(x)))), one layer (GroupNorm, SiLU, [Dropout], conv) at a time, so that each
        # intermediate is freed as soon as the next layer has read it (nested calls would hold every conv's input).
        for layer in (*self.conv1, *self.conv2, *self.conv3, *self.conv4):
            h = layer(h)
        return rearrange(x + h, "b c f h w -> (b f) c h w")
