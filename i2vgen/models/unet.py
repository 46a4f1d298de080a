"""I2VGen-XL's denoiser: a 3D (space-time factorised) UNet conditioned on text, an image and fps.

Zhang et al. 2023, "I2VGen-XL: High-Quality Image-to-Video Synthesis via Cascaded Diffusion Models".
The conditioning image enters twice: its VAE latent is encoded per frame and concatenated to the noisy
input (detail), and both its latent and its CLIP embedding become cross-attention tokens next to the text
(semantics). The fps is a micro-condition added to the timestep embedding.

Everything that does not depend on the noisy sample or the timestep is computed by `encode_condition`,
once per video; `forward` computes it itself unless it is given `condition=`.
Shapes: B batch, C channels, F frames, H x W latent size; video tensors are (B, C, F, H, W).

Half precision: every layer runs in the model's dtype, as the reference's does (it upcasts nothing), so
half-precision outputs round as its do. Where float32 matters it happens inside PyTorch's kernels: GroupNorm
and LayerNorm compute mean and variance in float32, and scaled_dot_product_attention sums the softmax in
float32 (test_blocks checks both, on the CPU), so activations whose squares or exponentials overflow
float16 stay finite. The timestep and fps sinusoids are computed in float32 and then cast (`_sinusoids`).
"""

import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange, repeat
from torch import nn

from i2vgen.checks import check_real
from i2vgen.loading import Config, ModelMixin
from i2vgen.models.attention import Attention
from i2vgen.models.cache import CacheConfig, StepCache
from i2vgen.models.checkpointing import Checkpointable
from i2vgen.models.chunking import set_forward_chunking
from i2vgen.models.embeddings import TimestepEmbedding, timestep_embedding
from i2vgen.models.frame_windows import FrameWindows
from i2vgen.models.model_api import ModelAPIMixin
from i2vgen.outputs import BaseOutput
from i2vgen.models.transformers import ImageLatentTemporalEncoder, Transformer2DModel, TransformerTemporalModel
from i2vgen.models.resnet import ResnetBlock2D, TemporalConvLayer
from i2vgen.models.unet_blocks import DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D

# What each gradient-checkpointing granularity checkpoints (enable_gradient_checkpointing; checkpointing.py).
CHECKPOINTED = {"block": (DownBlock3D, UNetMidBlock3DCrossAttn, UpBlock3D),
                "layer": (ResnetBlock2D, TemporalConvLayer, Transformer2DModel, TransformerTemporalModel)}

LATENT_CHANNELS = 4  # the VAE latent channels the image-latent encoders read (fixed, as in the reference)


@dataclass
class I2VGenXLUNetConfig(Config):
    """config.json keys with the reference's defaults; the defaults are the released model."""

    sample_size: int | None = None
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    cross_attention_dim: int = 1024
    attention_head_dim: int = 64
    num_attention_heads: int | None = None  # ignored, as by the reference (see I2VGenXLUNet.__init__)

    def __post_init__(self):
        channels, levels = tuple(self.block_out_channels), len(self.block_out_channels)
        if not len(self.down_block_types) == len(self.up_block_types) == levels:
            raise ValueError(f"down_block_types, up_block_types and block_out_channels need one entry per level; "
                             f"got {len(self.down_block_types)}, {len(self.up_block_types)}, {levels}")
        for block_type, kinds in [*((t, DOWN_BLOCKS) for t in self.down_block_types),
                                  *((t, UP_BLOCKS) for t in self.up_block_types)]:
            if block_type not in kinds:
                raise ValueError(f"unknown block type {block_type!r}; expected one of {sorted(kinds)}")
        if not all(isinstance(c, int) and c >= 1 for c in channels):
            raise ValueError(f"block_out_channels must be positive integers, got {channels}")
        head_dim = self.attention_head_dim
        if not (isinstance(head_dim, int) and head_dim >= 1 and all(c % head_dim == 0 for c in channels)):
            raise ValueError(f"attention_head_dim must be one int dividing every block_out_channels {channels}; "
                             f"got {head_dim}")


@dataclass
class UNet3DConditionOutput(BaseOutput):
    sample: torch.Tensor  # (B, out_channels, F, H, W)


@dataclass
class UNetCondition:
    """The per-video part of the UNet's input, from `I2VGenXLUNet.encode_condition`, for R rows of context.

    The image latents may cover B = R / k of them: k groups of B rows (classifier-free guidance: k = 2,
    [unconditional..., conditional...]) share one copy. `forward` then takes B samples and predicts all R rows,
    row j*B + i from sample i, running the layers that read no context once for the B samples.
    """

    fps_emb: torch.Tensor  # (R, 4 * C0): fps embedding, added to the timestep embedding
    context: torch.Tensor  # (R, M, D) text, image-latent and CLIP-image tokens; (R, F, M, D) with per-frame text
    image_latents: torch.Tensor  # (B, in_channels, F, H, W): concatenated to the sample

    def select(self, index: slice) -> "UNetCondition":
        """The condition of a sub-batch, e.g. `select(slice(0, 1))` (for a condition with R = B)."""
        if self.context.shape[0] != self.image_latents.shape[0]:
            raise ValueError("select() needs a condition with one row of context per image latent")
        return UNetCondition(self.fps_emb[index], self.context[index], self.image_latents[index])


def image_latents_from(first_frame_latents: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The image-latent condition (B, 4, F, H, W), as the reference's pipeline lays it out: frame 0 is the
    image's scaled VAE latent (B, 4, H, W); frame k = 1..F-1 is filled with its position k / (F - 1)."""
    first = first_frame_latents.unsqueeze(2)
    positions = [torch.ones_like(first) * (k / (num_frames - 1)) for k in range(1, num_frames)]
    return torch.cat([first, *positions], dim=2)


# ---- input checks: one clear ValueError each, kept out of the forward ----

def _shape(x) -> tuple | None:
    return None if x is None else tuple(x.shape)


def _check_condition_inputs(ctx_dim: int, fps, image_latents, image_embeddings, encoder_hidden_states):
    """encode_condition's inputs, as its docstring gives them."""
    if image_latents is None or image_latents.ndim != 5 or image_latents.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"image_latents must be (B, {LATENT_CHANNELS}, F, H, W) VAE latents; got "
                         f"{_shape(image_latents)}")
    batch, frames = image_latents.shape[0], image_latents.shape[2]
    per_frame = encoder_hidden_states is not None and encoder_hidden_states.ndim == 4
    if (encoder_hidden_states is None or encoder_hidden_states.ndim not in (3, 4)
            or encoder_hidden_states.shape[-1] != ctx_dim or encoder_hidden_states.shape[0] % batch
            or (per_frame and encoder_hidden_states.shape[1] != frames)):
        raise ValueError(f"encoder_hidden_states must be (R, L, {ctx_dim}), or (R, F={frames}, L, {ctx_dim}) per "
                         f"frame, R a multiple of image_latents' B={batch}; got {_shape(encoder_hidden_states)}")
    rows = encoder_hidden_states.shape[0]
    if image_embeddings is None or image_embeddings.shape[-1] != ctx_dim or image_embeddings.numel() != rows * ctx_dim:
        raise ValueError(f"image_embeddings must be (R={rows}, {ctx_dim}) or (R, 1, {ctx_dim}); got "
                         f"{_shape(image_embeddings)}")
    if fps is None:
        raise ValueError("fps is required (frames per second, a (R,) tensor or a number)")
    if torch.as_tensor(fps).numel() not in (1, rows):
        raise ValueError(f"fps must have 1 or R={rows} values; got {torch.as_tensor(fps).numel()}")


def _check_forward_inputs(config: I2VGenXLUNetConfig, sample, timestep, condition_inputs: dict, condition,
                          timestep_cond, cross_attention_kwargs):
    if not isinstance(sample, torch.Tensor) or sample.ndim != 5:
        raise ValueError(f"sample must be a 5-D (B, C, F, H, W) tensor; got shape "
                         f"{getattr(sample, 'shape', type(sample))}")
    if sample.shape[1] != config.in_channels:
        raise ValueError(f"sample must have in_channels={config.in_channels} channels; got shape "
                         f"{tuple(sample.shape)}")
    if timestep_cond is not None or cross_attention_kwargs:
        raise ValueError("timestep_cond and cross_attention_kwargs are not supported by I2VGenXLUNet")
    batch, _, frames, height, width = sample.shape
    if torch.as_tensor(timestep).numel() not in (1, batch):
        raise ValueError(f"timestep must be a number or have 1 or B={batch} values; got "
                         f"{torch.as_tensor(timestep).numel()}")
    if isinstance(timestep, float) and not math.isfinite(timestep):  # tensors are not read here (fake tensors)
        raise ValueError(f"timestep must be a finite number; got {timestep}")
    expected = (batch, LATENT_CHANNELS, frames, height, width)
    if condition is None and _shape(condition_inputs["image_latents"]) != expected:
        raise ValueError(f"image_latents must have the shape of sample (B, {LATENT_CHANNELS}, F, H, W) = "
                         f"{expected}; got {_shape(condition_inputs['image_latents'])}")
    if condition is not None and any(x is not None for x in condition_inputs.values()):
        raise ValueError("pass either condition= or fps/image_latents/image_embeddings/encoder_hidden_states, "
                         "not both")
    if condition is not None and condition.image_latents.shape != sample.shape:
        raise ValueError(f"condition was encoded for image_latents of shape {_shape(condition.image_latents)}, "
                         f"which does not match sample {tuple(sample.shape)}")


# The config's block types: a "CrossAttn" kind is the same block built with attention (_build_block).
DOWN_BLOCKS = {"DownBlock3D": DownBlock3D, "CrossAttnDownBlock3D": DownBlock3D}
UP_BLOCKS = {"UpBlock3D": UpBlock3D, "CrossAttnUpBlock3D": UpBlock3D}


def _build_block(kinds: dict, block_type: str, attention_args: dict, **args) -> nn.Module:
    """A block named by the config; the CrossAttn kinds also get the attention arguments."""
    if block_type.startswith("CrossAttn"):
        args.update(attention_args)
    return kinds[block_type](**args)


class I2VGenXLUNet(ModelAPIMixin, ModelMixin):
    """sample (B, C, F, H, W), timestep, condition -> prediction (B, C, F, H, W) (v-prediction when released)."""

    config_class = I2VGenXLUNetConfig

    def __init__(self, config: I2VGenXLUNetConfig | None = None, **kwargs):
        super().__init__()
        config = replace(config, **kwargs) if config is not None else I2VGenXLUNetConfig(**kwargs)
        self.config = config
        channels, levels = tuple(config.block_out_channels), len(config.block_out_channels)
        # The reference names the per-head width `attention_head_dim` but hands it to its blocks in the
        # position of the head count, and ignores `num_attention_heads`; what it builds is heads of width
        # attention_head_dim, channels // attention_head_dim of them (released: 64 wide). Translated once, here.
        head_dim = config.attention_head_dim
        in_ch, norm_groups = config.in_channels, config.norm_num_groups
        temb_dim = 4 * channels[0]

        self._add_condition_encoders(channels[0], temb_dim)

        # Input: noisy sample and image-latent features, then a temporal transformer (8 heads).
        self.conv_in = nn.Conv2d(2 * in_ch, channels[0], kernel_size=3, padding=1)
        self.transformer_in = TransformerTemporalModel(channels[0], heads=8, head_dim=head_dim,
                                                       norm_num_groups=norm_groups)

        # Down: level i maps channels[i-1] -> channels[i] and halves the size (all levels but the last).
        attn = dict(head_dim=head_dim, cross_attention_dim=config.cross_attention_dim)
        self.down_blocks = nn.ModuleList(
            _build_block(DOWN_BLOCKS, block_type, attn, in_channels=channels[max(i - 1, 0)],
                         out_channels=channels[i], temb_channels=temb_dim, num_layers=config.layers_per_block,
                         groups=norm_groups, add_downsample=i < levels - 1)
            for i, block_type in enumerate(config.down_block_types))

        self.mid_block = UNetMidBlock3DCrossAttn(channels[-1], temb_dim, norm_groups, **attn)

        # Up: the mirror image, with one layer more per block (it also consumes the downsampler's skip).
        up = channels[::-1]
        self.up_blocks = nn.ModuleList(
            _build_block(UP_BLOCKS, block_type, attn, in_channels=up[min(i + 1, levels - 1)],
                         prev_output_channel=up[max(i - 1, 0)], out_channels=up[i], temb_channels=temb_dim,
                         num_layers=config.layers_per_block + 1, groups=norm_groups, add_upsample=i < levels - 1,
                         resolution_idx=i)
            for i, block_type in enumerate(config.up_block_types))

        self.conv_norm_out = nn.GroupNorm(norm_groups, channels[0], eps=1e-5)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, kernel_size=3, padding=1)
        self.step_cache = None  # a StepCache while caching across steps is enabled (enable_cache)

    def _add_condition_encoders(self, c0: int, temb_dim: int):
        """Conditioning: timestep and fps embeddings, context tokens, image-latent features."""
        in_ch, ctx_dim = self.config.in_channels, self.config.cross_attention_dim
        self.time_embedding = TimestepEmbedding(c0, temb_dim)
        self.fps_embedding = nn.Sequential(nn.Linear(c0, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        # CLIP image embedding -> in_channels tokens of width cross_attention_dim.
        self.context_embedding = nn.Sequential(nn.Linear(ctx_dim, temb_dim), nn.SiLU(),
                                               nn.Linear(temb_dim, ctx_dim * in_ch))
        # First frame's latent -> 8 x 8 = 64 tokens (pooled to 32 x 32, then two stride-2 convs).
        self.image_latents_context_embedding = nn.Sequential(
            nn.Conv2d(LATENT_CHANNELS, in_ch * 8, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d((32, 32)),
            nn.Conv2d(in_ch * 8, in_ch * 16, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(in_ch * 16, ctx_dim, 3, stride=2, padding=1))
        # Per-frame latents -> features concatenated to the noisy sample.
        self.image_latents_proj_in = nn.Sequential(
            nn.Conv2d(LATENT_CHANNELS, in_ch * 4, 3, padding=1), nn.SiLU(),
            nn.Conv2d(in_ch * 4, in_ch * 4, 3, padding=1), nn.SiLU(),
            nn.Conv2d(in_ch * 4, in_ch, 3, padding=1))
        self.image_latents_temporal_encoder = ImageLatentTemporalEncoder(in_ch, heads=2, head_dim=in_ch)

    # ---- switches (attention processors and fused QKV: model_api.py) ----

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float):
        """FreeU (Si et al. 2023, models/freeu.py) in up blocks 0 and 1: half the backbone channels x b1 / b2,
        the skips' low frequencies x s1 / s2. Values used for this model: s1=0.9, s2=0.2, b1=1.2, b2=1.4."""
        for name, value in (("s1", s1), ("s2", s2), ("b1", b1), ("b2", b2)):
            check_real(name, value)
        for block in self.up_blocks:
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self):
        for block in self.up_blocks:
            block.s1 = block.s2 = block.b1 = block.b2 = None

    def enable_frame_windows(self, windows: FrameWindows | None):
        """Attention across frames within overlapping windows, fused (FreeNoise; models/frame_windows.py), in
        every layer where attention runs across frames: the temporal transformers, transformer_in, and the
        image-latent temporal encoder. None: attention over all frames (the default)."""
        temporal = [m for m in self.modules() if isinstance(m, TransformerTemporalModel)]
        for layer in [*temporal, self.image_latents_temporal_encoder]:
            for attention in layer.modules():
                if isinstance(attention, Attention):
                    attention.frame_windows = windows

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None, granularity: str = "block"):
        """Keep only the inputs of each checkpointed module during training and recompute its activations in the
        backward pass (models/checkpointing.py): granularity "block", each down, mid and up block; "layer", each
        resnet, temporal conv and spatial / temporal transformer (the backward then rebuilds one layer at a
        time: far less memory at large sizes). Same outputs and gradients, for about one more forward pass of
        time. `gradient_checkpointing_func(function, *args)` replaces torch.utils.checkpoint.checkpoint
        (non-reentrant) if given. No effect without autograd (sampling)."""
        if granularity not in CHECKPOINTED:
            raise ValueError(f"granularity must be one of {list(CHECKPOINTED)}, got {granularity!r}")
        function = gradient_checkpointing_func or functools.partial(torch.utils.checkpoint.checkpoint,
                                                                    use_reentrant=False)
        for module in self.modules():
            if isinstance(module, Checkpointable):
                module.gradient_checkpointing = function if isinstance(module, CHECKPOINTED[granularity]) else None

    def disable_gradient_checkpointing(self):
        for module in self.modules():
            if isinstance(module, Checkpointable):
                module.gradient_checkpointing = None

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing is not None for m in self.modules() if isinstance(m, Checkpointable))

    def enable_cache(self, config: CacheConfig | None = None):
        """Reuse features across denoising steps (models/cache.py: DeepCache and the guidance difference): a full
        pass every `config.cache_interval` calls per condition, cheaper calls in between. Approximate; off by
        default. The pipeline clears the cache at the start of every call."""
        self.step_cache = StepCache(config or CacheConfig(), len(self.down_blocks))

    def disable_cache(self):
        self.step_cache = None

    def clear_cache(self):
        """Forget every cached feature (the next call with each condition is a full pass)."""
        if self.step_cache is not None:
            self.step_cache.clear()

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0):
        """Run the per-frame layers `chunk_size` frames at a time (default 1) and the temporal transformer
        blocks on the same share of pixels: the same output from a fraction of the activation memory
        (i2vgen/models/chunking.py). `dim` is the reference's argument: only 0, frames (or pixels), is chunked."""
        if dim != 0:
            raise ValueError(f"forward chunking runs along dim 0 (frames, or pixels in the temporal layers); got {dim}")
        if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be a positive int (frames per slice) or None; got {chunk_size!r}")
        set_forward_chunking(self, chunk_size or 1)

    def disable_forward_chunking(self):
        set_forward_chunking(self, None)

    def _sinusoids(self, scalars: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features in float32, then cast to the model's dtype (as the reference does)."""
        return timestep_embedding(scalars, self.config.block_out_channels[0]).to(self.dtype)

    def encode_condition(self, fps, image_latents: torch.Tensor, image_embeddings: torch.Tensor,
                         encoder_hidden_states: torch.Tensor) -> UNetCondition:
        """Stages 2-4 of the forward, which depend on the video only: compute once, reuse at every step.

        encoder_hidden_states: (R, L, D) text tokens, or (R, F, L, D) per frame (prompts that change over time:
        each frame's cross-attention then reads its own row); image_embeddings: (R, D) or (R, 1, D) CLIP image
        embedding; fps: (R,) or (1,) tensor or a number; image_latents: (B, 4, F, H, W) VAE latents (first
        frame the image), B = R, or R / k for k groups of rows that share them (see UNetCondition);
        D = cross_attention_dim.
        """
        ctx_dim, in_ch = self.config.cross_attention_dim, self.config.in_channels
        _check_condition_inputs(ctx_dim, fps, image_latents, image_embeddings, encoder_hidden_states)
        rows, batch = encoder_hidden_states.shape[0], image_latents.shape[0]
        fps = torch.as_tensor(fps, device=image_latents.device).reshape(-1)
        # Every row is computed as in a batch of R (as the reference computes its guidance batch: convolutions
        # round differently by batch size); the shared image-latent features are kept once, below.
        image_latents = image_latents.repeat(rows // batch, 1, 1, 1, 1)

        # 2. fps micro-condition.
        fps_emb = self.fps_embedding(self._sinusoids(fps)).expand(rows, -1)

        # 3. Context tokens: text, then the first frame's latent, then the CLIP image embedding.
        latent_tokens = self.image_latents_context_embedding(image_latents[:, :, 0])  # (R, D, 8, 8)
        latent_tokens = rearrange(latent_tokens, "r d h w -> r (h w) d")
        image_tokens = self.context_embedding(image_embeddings.reshape(rows, ctx_dim))
        image_tokens = rearrange(image_tokens, "r (n d) -> r n d", n=in_ch)
        if encoder_hidden_states.ndim == 4:  # per-frame text: the image tokens are the same for every frame
            frames = encoder_hidden_states.shape[1]
            latent_tokens, image_tokens = (repeat(tokens, "r n d -> r f n d", f=frames)
                                           for tokens in (latent_tokens, image_tokens))
        context = torch.cat([encoder_hidden_states, latent_tokens, image_tokens], dim=-2)

        # 4. Image latents: per-frame convs, then attention across each pixel's frames.
        _, _, frames, height, width = image_latents.shape
        x = self.image_latents_proj_in(rearrange(image_latents, "r c f h w -> (r f) c h w"))
        # Contiguous tokens, as the reference's copy leaves them: with a strided residual stream, half-precision
        # matmuls round differently (float32 is unaffected).
        x = rearrange(x, "(r f) c h w -> (r h w) f c", f=frames).contiguous()
        x = self.image_latents_temporal_encoder(x)
        x = rearrange(x, "(r h w) f c -> r c f h w", h=height, w=width)
        return UNetCondition(fps_emb=fps_emb, context=context, image_latents=x[:batch])

    def forward(self, sample: torch.Tensor, timestep, fps=None, image_latents: torch.Tensor | None = None,
                image_embeddings: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                timestep_cond=None, cross_attention_kwargs=None, return_dict: bool = True,
                condition: UNetCondition | None = None):
        """Predict from the noisy `sample` (B, C, F, H, W) at `timestep` (number, scalar or (B,) tensor).

        Pass the raw conditioning (fps, image_latents, image_embeddings, encoder_hidden_states, as the
        reference) or a precomputed `condition=` from `encode_condition`, not both. A condition with k * B
        rows of context (see UNetCondition) gives k * B predictions. `timestep_cond` and
        `cross_attention_kwargs` exist for signature compatibility; anything but None is an error.
        """
        condition_inputs = dict(fps=fps, image_latents=image_latents, image_embeddings=image_embeddings,
                                encoder_hidden_states=encoder_hidden_states)
        _check_forward_inputs(self.config, sample, timestep, condition_inputs, condition, timestep_cond,
                              cross_attention_kwargs)
        if condition is None:
            condition = self.encode_condition(**condition_inputs)
        out = self._predict(sample, timestep, condition)
        return UNet3DConditionOutput(sample=out) if return_dict else (out,)

    def _predict(self, sample: torch.Tensor, timestep, condition: UNetCondition) -> torch.Tensor:
        """Stages 1 and 5-9: the prediction (v for the released model) for every row of the condition."""
        batch, _, frames, _, _ = sample.shape
        # Caching across steps (models/cache.py): what this call runs and reuses; None: everything, as always.
        plan = self.step_cache.plan(condition) if self.step_cache is not None else None
        if plan is not None and plan.conditional_only:  # the unconditional rows come from the cache (plan.finish)
            condition = UNetCondition(condition.fps_emb[batch:], condition.context[batch:], condition.image_latents)
        rows_per_sample = condition.context.shape[0] // batch  # 2 with guidance (see UNetCondition)

        # 1. Time: sinusoids -> MLP, plus the fps embedding (stage 2), one copy per frame.
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        emb = self.time_embedding(self._sinusoids(t.expand(batch).repeat(rows_per_sample))) + condition.fps_emb
        emb = repeat(emb, "r d -> (r f) d", f=frames)
        # 3. Context tokens (from the condition): one row per video, shared by its frames' cross-attention, or
        # one per frame (per-frame text).
        context = condition.context
        if context.ndim == 4:
            context = rearrange(context, "r f m d -> (r f) m d")

        # 4-5. Concatenate the encoded image latents (stage 4), fold frames into the batch, conv_in, then
        # attention across frames. Neither reads the context or the timestep, so they run once per sample
        # and are copied to each group of context rows afterwards.
        x = torch.cat([sample, condition.image_latents], dim=1)
        x = self.conv_in(rearrange(x, "b c f h w -> (b f) c h w"))
        x = self.transformer_in(x, num_frames=frames)
        x = x.repeat(rows_per_sample, 1, 1, 1)  # ((k b f), c, h, w): group-major, as the context's rows

        # 6-8. Down, mid, up over `levels` levels: all of them, or the shallowest ones in a cached call.
        levels = len(self.down_blocks) if plan is None else plan.levels
        x = self._down_mid_up(x, emb, frames, context, levels, plan)

        # 9. Out.
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        out = rearrange(x, "(r f) c h w -> r c f h w", f=frames)
        return out if plan is None else plan.finish(out)

    def _down_mid_up(self, x, emb, frames: int, context, levels: int, plan) -> torch.Tensor:
        """Stages 6-8 on the shallowest `levels` levels. A cached call skips the mid block and takes the features
        entering up block `plan.up_index` from the cache; the full pass before it stored them."""
        # 6. Down, keeping every intermediate output as a skip connection.
        skips = [x]
        for block in self.down_blocks[:levels]:
            x, block_skips = block(x, emb, frames, context)
            skips.extend(block_skips)

        # 7. Mid.
        if plan is None or not plan.reads_deep:
            x = self.mid_block(x, emb, frames, context)

        # 8. Up: each block takes as many skips as it has layers, and upsamples to the next skip's size
        # (so latent sizes that are not multiples of 2^levels come back to their size).
        up_blocks = self.up_blocks[len(self.up_blocks) - levels:]
        skips = skips[:sum(len(block.resnets) for block in up_blocks)]  # all of them unless cached
        for index, block in enumerate(up_blocks, start=len(self.up_blocks) - levels):
            if plan is not None and index == plan.up_index:
                x = plan.deep_features(x)
            block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            upsample_size = skips[-1].shape[-2:] if block.upsamplers is not None else None
            x = block(x, block_skips, emb, frames, context, upsample_size)
        return x
