"""The KL-regularised autoencoder of Stable Diffusion 2.1, which I2VGen-XL uses frame by frame.

Latent diffusion (Rombach et al. 2022, sec. 3): the encoder maps an image (N, 3, H, W) to a diagonal
Gaussian over latents (N, 4, H/2^k, W/2^k), k = number of levels - 1; the decoder maps latents back.
The diffusion model works on `scaling_factor * z` (read it from the config: 0.18125 for I2VGen-XL).

Module and config names equal the reference's (diffusers `AutoencoderKL`), so its checkpoints load
with strict key matching. Memory controls: `enable_slicing()` runs one image at a time and
`enable_tiling()` runs overlapping spatial tiles, blended linearly across the overlap.
"""

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from i2vgen.loading import Config, ModelMixin
from i2vgen.models.attention import Attention
from i2vgen.models.model_api import ModelAPIMixin
from i2vgen.outputs import BaseOutput
from i2vgen.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from i2vgen.noise import randn_tensor


@dataclass
class AutoencoderKLConfig(Config):
    """config.json keys of the reference's `AutoencoderKL`, with its defaults."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, int] = 32  # image size the tiles are cut to (tiling only)
    scaling_factor: float = 0.18215
    shift_factor: float | None = None  # unused by I2VGen-XL; kept so configs round-trip
    latents_mean: tuple[float, ...] | None = None  # idem
    latents_std: tuple[float, ...] | None = None  # idem
    force_upcast: bool = True  # idem: the reference pipeline ignores it
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        levels = len(self.block_out_channels)
        if not all(isinstance(c, int) and c >= 1 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be positive integers, got {tuple(self.block_out_channels)}")
        if self.act_fn != "silu":
            raise ValueError(f"only act_fn='silu' is implemented, got {self.act_fn!r}")
        if tuple(self.down_block_types) != ("DownEncoderBlock2D",) * levels:
            raise ValueError(f"down_block_types must be {levels} x 'DownEncoderBlock2D', got {self.down_block_types}")
        if tuple(self.up_block_types) != ("UpDecoderBlock2D",) * levels:
            raise ValueError(f"up_block_types must be {levels} x 'UpDecoderBlock2D', got {self.up_block_types}")


@dataclass
class AutoencoderKLOutput(BaseOutput):
    latent_dist: "DiagonalGaussianDistribution"


@dataclass
class DecoderOutput(BaseOutput):
    sample: torch.Tensor


class DiagonalGaussianDistribution:
    """The posterior q(z | x) = N(mean, diag(var)), from the encoder's moments (N, 2 * C, h, w)."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)  # keeps exp() finite, as the reference does
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps, eps ~ N(0, I) from `generator` (None: torch's global RNG), as the reference draws it."""
        eps = randn_tensor(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL(self || other) per image, summed over (C, h, w); `other` defaults to N(0, I)."""
        if other is None:  # N(0, I): these values make the general formula below exact
            other_mean, other_var, other_logvar = 0.0, 1.0, 0.0
        else:
            other_mean, other_var, other_logvar = other.mean, other.var, other.logvar
        kl = (self.mean - other_mean) ** 2 / other_var + self.var / other_var - 1.0 - self.logvar + other_logvar
        return 0.5 * kl.sum(dim=(1, 2, 3))


class UNetMidBlock2D(nn.Module):
    """resnet -> [single-head self-attention over all pixels] -> resnet, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, add_attention: bool = True):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(channels, channels, temb_channels=None, groups=groups, eps=1e-6) for _ in range(2)]
        )
        attention = Attention(channels, heads=1, head_dim=channels, bias=True, norm_num_groups=groups, eps=1e-6,
                              residual_connection=True)
        self.attentions = nn.ModuleList([attention] if add_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            h, w = x.shape[-2:]
            tokens = rearrange(x, "n c h w -> n (h w) c")
            # .contiguous(): the reference hands the next resnet a contiguous map; the convs round by layout.
            x = rearrange(attention(tokens), "n (h w) c -> n c h w", h=h, w=w).contiguous()
        return self.resnets[1](x)


def _resnets(in_channels: int, out_channels: int, num_layers: int, groups: int) -> nn.ModuleList:
    """`num_layers` resnet blocks without a timestep embedding, the first mapping in_channels -> out_channels."""
    return nn.ModuleList(ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None,
                                       groups=groups, eps=1e-6) for i in range(num_layers))


class DownEncoderBlock2D(nn.Module):
    """`num_layers` resnets, then (except at the last level) a stride-2 conv padded at bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, groups)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, out_channels, padding=0)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpDecoderBlock2D(nn.Module):
    """`num_layers` resnets, then (except at the last level) nearest x2 upsampling and a conv."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, groups)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    """Image (N, in_channels, H, W) -> moments (N, 2 * latent_channels, H/2^k, W/2^k): mean and log-variance."""

    def __init__(self, in_channels: int, latent_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_num_groups: int, mid_block_add_attention: bool):
        super().__init__()
        channels = block_out_channels
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(channels[max(i - 1, 0)], channels[i], layers_per_block, norm_num_groups,
                               add_downsample=i < len(channels) - 1)
            for i in range(len(channels))
        )
        self.mid_block = UNetMidBlock2D(channels[-1], norm_num_groups, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents (N, latent_channels, h, w) -> image (N, out_channels, h * 2^k, w * 2^k)."""

    def __init__(self, latent_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_num_groups: int, mid_block_add_attention: bool):
        super().__init__()
        channels = tuple(reversed(block_out_channels))  # widest first
        self.conv_in = nn.Conv2d(latent_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = UNetMidBlock2D(channels[0], norm_num_groups, mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(channels[max(i - 1, 0)], channels[i], layers_per_block + 1, norm_num_groups,
                             add_upsample=i < len(channels) - 1)
            for i in range(len(channels))
        )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Cross-fade the last `extent` rows (dim=2) or columns (dim=3) of tile `a` into the first ones of tile `b`,
    with b's weight rising linearly from 0 (k / extent, k = 0 .. extent-1). Returns the new `b`."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent == 0:
        return b
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    # Weights in float64, rounded once to b's dtype, as the reference's Python-float scalars are.
    w_b = torch.arange(extent, dtype=torch.float64) / extent
    w_a, w_b = (w.to(b.device, b.dtype).view(shape) for w in (1 - w_b, w_b))
    faded = a.narrow(dim, a.shape[dim] - extent, extent) * w_a + b.narrow(dim, 0, extent) * w_b
    return torch.cat([faded, b.narrow(dim, extent, b.shape[dim] - extent)], dim=dim)


def _tiled(fn, x: torch.Tensor, tile_in: int, tile_out: int, overlap_factor: float) -> torch.Tensor:
    """Apply `fn` (which maps a `tile_in` square to a `tile_out` square) to overlapping tiles of x and stitch.

    Tiles start every `tile_in * (1 - overlap_factor)` input pixels; each output tile is blended with its
    upper and left neighbours over `blend = tile_out * overlap_factor` pixels and cropped to
    `tile_out - blend`, as the reference's tiled encode/decode do (each blended tile is what its lower and
    right neighbours see). Like the reference's, tiles only line up when the input stride maps exactly to
    `tile_out - blend` output pixels (sample_size a multiple of 4 * 2^(levels-1), true for the released VAE).
    """
    stride = int(tile_in * (1 - overlap_factor))
    blend = int(tile_out * overlap_factor)
    keep = tile_out - blend
    grid = [[fn(x[:, :, i : i + tile_in, j : j + tile_in]) for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)]
    for i, row in enumerate(grid):
        for j in range(len(row)):
            if i > 0:
                row[j] = _blend(grid[i - 1][j], row[j], blend, dim=2)
            if j > 0:
                row[j] = _blend(row[j - 1], row[j], blend, dim=3)
    return torch.cat([torch.cat([tile[:, :, :keep, :keep] for tile in row], dim=3) for row in grid], dim=2)


class AutoencoderKL(ModelAPIMixin, ModelMixin):
    """SD 2.1's KL-VAE: `encode(x).latent_dist`, `decode(z).sample`, `forward` = encode then decode.

    Inputs are batches of images (N, C, H, W); a video is passed as its frames, (b f) c h w.
    """

    config_class = AutoencoderKLConfig

    def __init__(self, config: AutoencoderKLConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a config or config keys, not both")
        self.config = config = config if config is not None else AutoencoderKLConfig(**kwargs)
        blocks = dict(block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
                      norm_num_groups=config.norm_num_groups, mid_block_add_attention=config.mid_block_add_attention)
        self.encoder = Encoder(config.in_channels, config.latent_channels, **blocks)
        self.decoder = Decoder(config.latent_channels, config.out_channels, **blocks)
        moments = 2 * config.latent_channels
        self.quant_conv = nn.Conv2d(moments, moments, kernel_size=1) if config.use_quant_conv else None
        self.post_quant_conv = (
            nn.Conv2d(config.latent_channels, config.latent_channels, kernel_size=1) if config.use_post_quant_conv else None
        )

        # Memory controls (off by default). Tile sizes follow the reference: image tiles of sample_size,
        # latent tiles of sample_size / 2^(levels-1), a quarter of each tile overlapping its neighbour.
        self.use_slicing = False
        self.use_tiling = False
        size = config.sample_size
        self.tile_sample_min_size = size[0] if isinstance(size, (list, tuple)) else size
        self.tile_latent_min_size = int(self.tile_sample_min_size / 2 ** (len(config.block_out_channels) - 1))
        self.tile_overlap_factor = 0.25

    def enable_slicing(self, use_slicing: bool = True):
        """Encode and decode one image of the batch at a time (same output, less activation memory)."""
        self.use_slicing = use_slicing

    def disable_slicing(self):
        self.enable_slicing(False)

    def enable_tiling(self, use_tiling: bool = True):
        """Encode and decode images larger than one tile as overlapping tiles (bounded memory; the seams are
        blended, so the output differs slightly from the untiled one)."""
        self.use_tiling = use_tiling

    def disable_tiling(self):
        self.enable_tiling(False)

    def _check(self, x: torch.Tensor, channels: int, name: str):
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(x.shape)}")

    def _slices(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.split(1) if self.use_slicing else (x,)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        tile, latent_tile = self.tile_sample_min_size, self.tile_latent_min_size
        if self.use_tiling and max(x.shape[-2:]) > tile:
            return _tiled(self._encode_tile, x, tile, latent_tile, self.tile_overlap_factor)
        return self._encode_tile(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        tile, latent_tile = self.tile_sample_min_size, self.tile_latent_min_size
        if self.use_tiling and max(z.shape[-2:]) > latent_tile:
            return _tiled(self._decode_tile, z, latent_tile, tile, self.tile_overlap_factor)
        return self._decode_tile(z)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images (N, in_channels, H, W) -> AutoencoderKLOutput(latent_dist) (or a 1-tuple)."""
        self._check(x, self.config.in_channels, "x")
        posterior = DiagonalGaussianDistribution(torch.cat([self._encode(s) for s in self._slices(x)]))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Latents (N, latent_channels, h, w), already divided by scaling_factor -> DecoderOutput(sample)."""
        self._check(z, self.config.latent_channels, "z")
        sample = torch.cat([self._decode(s) for s in self._slices(z)])
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        """Reconstruct: decode the posterior's mode, or a sample from it when `sample_posterior`."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
