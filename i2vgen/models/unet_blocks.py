"""The UNet's resolution levels: down blocks, the middle block, up blocks.

Each layer of a block is a factorised space-time unit (VideoLDM / ModelScope T2V style):

    ResnetBlock2D (per frame, + timestep embedding) -> TemporalConvLayer (across frames)
    [-> Transformer2DModel (per frame, cross-attention to the context) -> TransformerTemporalModel (across frames)]

The bracketed part is present in the "CrossAttn" blocks only. All tensors are frames-as-batch,
((b f), c, h, w); `num_frames` lets the temporal layers unfold them.
"""

import torch
from torch import nn

from .resnet import Downsample2D, ResnetBlock2D, TemporalConvLayer, Upsample2D
from .transformers import Transformer2DModel, TransformerTemporalModel

RESNET_EPS = 1e-5  # the UNet builds all its resnet blocks with this GroupNorm epsilon


class _SpaceTimeAttention(nn.Module):
    """Mixin for the CrossAttn blocks: adds `attentions` and `temp_attentions`, one pair per layer."""

    def _add_attention(self, channels: int, num_layers: int, head_dim: int, cross_attention_dim: int, groups: int):
        heads = channels // head_dim
        self.attentions = nn.ModuleList(
            [Transformer2DModel(channels, heads=heads, head_dim=head_dim, cross_attention_dim=cross_attention_dim,
                                norm_num_groups=groups) for _ in range(num_layers)])
        self.temp_attentions = nn.ModuleList(
            [TransformerTemporalModel(channels, heads=heads, head_dim=head_dim, norm_num_groups=groups)
             for _ in range(num_layers)])

    def _attend(self, i: int, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.attentions[i](x, context)
        return self.temp_attentions[i](x, num_frames)


def _resnet_and_temporal_conv(in_channels: int, out_channels: int, temb_channels: int, groups: int):
    return (ResnetBlock2D(in_channels, out_channels, temb_channels=temb_channels, groups=groups, eps=RESNET_EPS),
            TemporalConvLayer(out_channels, norm_num_groups=groups))


class DownBlock3D(nn.Module):
    """`num_layers` resnet + temporal-conv layers, then an optional stride-2 downsample.

    Returns the output and every layer's output (and the downsampled one) as skip connections.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, groups: int,
                 add_downsample: bool):
        super().__init__()
        layers = [_resnet_and_temporal_conv(in_channels if i == 0 else out_channels, out_channels, temb_channels,
                                            groups) for i in range(num_layers)]
        self.resnets = nn.ModuleList(resnet for resnet, _ in layers)
        self.temp_convs = nn.ModuleList(conv for _, conv in layers)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, out_channels)]) if add_downsample else None

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context, num_frames: int) -> torch.Tensor:
        return self.temp_convs[i](self.resnets[i](x, temb), num_frames)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, context, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class CrossAttnDownBlock3D(_SpaceTimeAttention, DownBlock3D):
    """A down block whose layers also attend over space (with cross-attention) and over time."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, groups: int,
                 add_downsample: bool, head_dim: int, cross_attention_dim: int):
        super().__init__(in_channels, out_channels, temb_channels, num_layers, groups, add_downsample)
        self._add_attention(out_channels, num_layers, head_dim, cross_attention_dim, groups)

    def _layer(self, i, x, temb, context, num_frames):
        x = super()._layer(i, x, temb, context, num_frames)
        return self._attend(i, x, context, num_frames)


class UNetMidBlock3DCrossAttn(_SpaceTimeAttention):
    """The bottleneck: resnet + temporal conv, then one attention pair and a second resnet + temporal conv."""

    def __init__(self, channels: int, temb_channels: int, groups: int, head_dim: int, cross_attention_dim: int):
        super().__init__()
        layers = [_resnet_and_temporal_conv(channels, channels, temb_channels, groups) for _ in range(2)]
        self.resnets = nn.ModuleList(resnet for resnet, _ in layers)
        self.temp_convs = nn.ModuleList(conv for _, conv in layers)
        self._add_attention(channels, 1, head_dim, cross_attention_dim, groups)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int, context: torch.Tensor) -> torch.Tensor:
        x = self.temp_convs[0](self.resnets[0](x, temb), num_frames)
        x = self._attend(0, x, context, num_frames)
        return self.temp_convs[1](self.resnets[1](x, temb), num_frames)


class UpBlock3D(nn.Module):
    """`num_layers` layers, each concatenating one skip connection before its resnet, then an optional
    nearest-neighbour upsample to the next skip's spatial size.

    Channels: the first layer reads `prev_output_channel` (the block below), the last layer's skip has
    `in_channels` (the matching down level's input), all others `out_channels`.
    """

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        layers = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            layers.append(_resnet_and_temporal_conv(resnet_in + skip_channels, out_channels, temb_channels, groups))
        self.resnets = nn.ModuleList(resnet for resnet, _ in layers)
        self.temp_convs = nn.ModuleList(conv for _, conv in layers)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None

    def _layer(self, i: int, x: torch.Tensor, temb: torch.Tensor, context, num_frames: int) -> torch.Tensor:
        return self.temp_convs[i](self.resnets[i](x, temb), num_frames)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, num_frames: int,
                context: torch.Tensor | None = None, upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        """`skips` are this block's skip connections in the order the down path produced them."""
        for i, skip in enumerate(reversed(skips)):
            x = self._layer(i, torch.cat([x, skip], dim=1), temb, context, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlock3D(_SpaceTimeAttention, UpBlock3D):
    """An up block whose layers also attend over space (with cross-attention) and over time."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, groups: int, add_upsample: bool, head_dim: int, cross_attention_dim: int):
        super().__init__(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, groups,
                         add_upsample)
        self._add_attention(out_channels, num_layers, head_dim, cross_attention_dim, groups)

    def _layer(self, i, x, temb, context, num_frames):
        x = super()._layer(i, x, temb, context, num_frames)
        return self._attend(i, x, context, num_frames)
