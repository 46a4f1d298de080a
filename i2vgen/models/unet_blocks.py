"""The UNet's resolution levels: down blocks, the middle block, up blocks.

Each layer of a block is a factorised space-time unit (VideoLDM / ModelScope T2V style):

    ResnetBlock2D (per frame, + timestep embedding) -> TemporalConvLayer (across frames)
    [-> Transformer2DModel (per frame, cross-attention to the context) -> TransformerTemporalModel (across frames)]

The bracketed part is present in the blocks built with `cross_attention_dim` only (the config's "CrossAttn"
kinds, CrossAttnDownBlock3D and CrossAttnUpBlock3D; see unet.py's DOWN_BLOCKS). Each block's forward spells the layer out
in one loop. All tensors are frames-as-batch, ((b f), c, h, w); `num_frames` lets the temporal layers
unfold them, and the context has one row per video, (b, M, D). The per-frame layers go through
`_per_frame`, which runs them on slices of frames when forward chunking is on (chunking.py).
"""

import torch
from torch import nn

from i2vgen.models.checkpointing import Checkpointable
from i2vgen.models.chunking import Chunkable
from i2vgen.models.freeu import apply_freeu
from i2vgen.models.resnet import Downsample2D, ResnetBlock2D, TemporalConvLayer, Upsample2D
from i2vgen.models.transformers import Transformer2DModel, TransformerTemporalModel

RESNET_EPS = 1e-5  # the UNet builds all its resnet blocks with this GroupNorm epsilon


def _resnets_and_temporal_convs(in_channels: list[int], out_channels: int, temb_channels: int,
                                groups: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """`resnets` and `temp_convs`: layer i maps in_channels[i] -> out_channels. Built pairwise (resnet, then
    its temporal conv), the order in which a seed has always initialised them."""
    layers = [(ResnetBlock2D(c, out_channels, temb_channels=temb_channels, groups=groups, eps=RESNET_EPS),
               TemporalConvLayer(out_channels, norm_num_groups=groups)) for c in in_channels]
    return nn.ModuleList(resnet for resnet, _ in layers), nn.ModuleList(conv for _, conv in layers)


def _spatial_and_temporal_transformers(channels: int, num_layers: int, groups: int, *, head_dim: int | None,
                                       cross_attention_dim: int | None) -> tuple:
    """`attentions` and `temp_attentions`: one spatial (with cross-attention) and one temporal transformer per
    layer, heads of `head_dim` channels; (None, None) without cross_attention_dim (a block without attention)."""
    if cross_attention_dim is None:
        return None, None
    heads = channels // head_dim
    attentions = nn.ModuleList(
        Transformer2DModel(channels, heads=heads, head_dim=head_dim, cross_attention_dim=cross_attention_dim,
                           norm_num_groups=groups) for _ in range(num_layers))
    temp_attentions = nn.ModuleList(
        TransformerTemporalModel(channels, heads=heads, head_dim=head_dim, norm_num_groups=groups)
        for _ in range(num_layers))
    return attentions, temp_attentions


class DownBlock3D(Checkpointable, Chunkable, nn.Module):
    """`num_layers` layers, then an optional stride-2 downsample; with `cross_attention_dim` (the CrossAttn
    kind) each layer also attends over space, with cross-attention to the context, and over time.

    Returns the output and every layer's output (and the downsampled one) as skip connections.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_layers: int, groups: int,
                 add_downsample: bool, head_dim: int | None = None, cross_attention_dim: int | None = None):
        super().__init__()
        layer_in = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets, self.temp_convs = _resnets_and_temporal_convs(layer_in, out_channels, temb_channels, groups)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, out_channels)]) if add_downsample else None
        self.attentions, self.temp_attentions = _spatial_and_temporal_transformers(
            out_channels, num_layers, groups, head_dim=head_dim, cross_attention_dim=cross_attention_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self._per_frame(self.resnets[i], x, temb, num_frames=num_frames)
            x = self.temp_convs[i](x, num_frames)
            if self.attentions is not None:
                x = self._per_frame(self.attentions[i], x, context, num_frames=num_frames)
                x = self.temp_attentions[i](x, num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = self._per_frame(self.downsamplers[0], x, num_frames=num_frames)
            skips.append(x)
        return x, skips


class UNetMidBlock3DCrossAttn(Checkpointable, nn.Module):
    """The bottleneck: resnet + temporal conv, then one attention pair and a second resnet + temporal conv."""

    def __init__(self, channels: int, temb_channels: int, groups: int, head_dim: int, cross_attention_dim: int):
        super().__init__()
        self.resnets, self.temp_convs = _resnets_and_temporal_convs([channels] * 2, channels, temb_channels, groups)
        self.attentions, self.temp_attentions = _spatial_and_temporal_transformers(
            channels, 1, groups, head_dim=head_dim, cross_attention_dim=cross_attention_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int, context: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.temp_convs[0](x, num_frames)
        x = self.attentions[0](x, context)  # frames per context row from the shapes (one or all of a video's)
        x = self.temp_attentions[0](x, num_frames)
        x = self.resnets[1](x, temb)
        return self.temp_convs[1](x, num_frames)


class UpBlock3D(Checkpointable, Chunkable, nn.Module):
    """`num_layers` layers, each concatenating one skip connection before its resnet, then an optional
    nearest-neighbour upsample to the next skip's spatial size; with `cross_attention_dim` (the CrossAttn
    kind) each layer also attends over space, with cross-attention to the context, and over time.

    Channels: the first layer reads `prev_output_channel` (the block below), the last layer's skip has
    `in_channels` (the matching down level's input), all others `out_channels`.
    FreeU (models/freeu.py) re-weights the features and skips of up blocks 0 and 1 (`resolution_idx`, the
    block's index in the UNet) while its s1, s2, b1, b2 are set (I2VGenXLUNet.enable_freeu).
    """

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 num_layers: int, groups: int, add_upsample: bool, head_dim: int | None = None,
                 cross_attention_dim: int | None = None, resolution_idx: int | None = None):
        super().__init__()
        layer_in = [(prev_output_channel if i == 0 else out_channels) + (in_channels if i == num_layers - 1
                                                                          else out_channels)
                    for i in range(num_layers)]
        self.resnets, self.temp_convs = _resnets_and_temporal_convs(layer_in, out_channels, temb_channels, groups)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None
        self.attentions, self.temp_attentions = _spatial_and_temporal_transformers(
            out_channels, num_layers, groups, head_dim=head_dim, cross_attention_dim=cross_attention_dim)
        self.resolution_idx = resolution_idx
        self.s1 = self.s2 = self.b1 = self.b2 = None  # FreeU, off

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor, num_frames: int,
                context: torch.Tensor | None = None, upsample_size: tuple[int, int] | None = None) -> torch.Tensor:
        """`skips` are this block's skip connections in the order the down path produced them. The list is
        emptied as its skips are read, so each is freed once its layer has read it (under autograd a copy is
        emptied: an activation checkpoint's recompute reads the list again)."""
        skips = list(skips) if torch.is_grad_enabled() else skips
        for i in range(len(self.resnets)):
            skip = skips.pop()
            if self.b1 is not None:
                x, skip = apply_freeu(self.resolution_idx, x, skip, self.s1, self.s2, self.b1, self.b2)
            # The concatenation exists only inside the resnet's call (one slice of frames at a time when forward
            # chunking is on); the skip and the previous layer's output are freed once the resnet has read them.
            x = self._per_frame(self._resnet_on_skip, x, skip, temb, i, num_frames=num_frames,
                                row_elements=x[0].numel() + skip[0].numel())
            del skip
            x = self.temp_convs[i](x, num_frames)
            if self.attentions is not None:
                x = self._per_frame(self.attentions[i], x, context, num_frames=num_frames)
                x = self.temp_attentions[i](x, num_frames)
        if self.upsamplers is not None:
            x = self._per_frame(self.upsamplers[0], x, upsample_size, num_frames=num_frames)
        return x

    def _resnet_on_skip(self, x: torch.Tensor, skip: torch.Tensor, temb: torch.Tensor, i: int) -> torch.Tensor:
        """Layer i's resnet on x and its skip connection, concatenated along channels."""
        return self.resnets[i](torch.cat([x, skip], dim=1), temb)
