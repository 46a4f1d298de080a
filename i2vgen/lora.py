"""LoRA adapters for the UNet: add, save, load, weight, fuse and remove them (with peft).

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3) leaves a weight W frozen
and learns a low-rank change: h = W x + (alpha / r) B A x, with A (r x in) random and B (out x r) zero at the
start, so a new adapter changes nothing. peft wraps each chosen module in a LoRA layer that keeps the original
module as `base_layer` and adds `lora_A` / `lora_B` per adapter; this file chooses the modules, moves adapters
in and out of files, and switches them. The UNet's own code knows nothing of LoRA.

File layout: diffusers' `pytorch_lora_weights.safetensors` for a UNet, so files move between this project and
the diffusers ecosystem. Keys are peft's names without the adapter name, prefixed `unet.`:
`unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`. The LoraConfig is stored as
JSON under the safetensors metadata key `lora_adapter_metadata`, its fields prefixed `unet.` (`unet.r`,
`unet.lora_alpha`, ...), as diffusers 0.35 writes it; a file without it has alpha = rank (diffusers' rule).
"""

import contextlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checks import check_int, check_real
from .video import _atomic_path  # write to a temporary file, rename when complete

try:
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer
except ImportError as error:  # an optional extra
    raise ImportError("LoRA support needs peft: pip install 'i2vgen[lora]' (or: pip install peft)") from error

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
PREFIX = "unet."
# Module-name suffixes (peft's matching: the name itself or ending in "." + suffix).
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention: spatial, cross, temporal
FEED_FORWARD = ["ff.net.0.proj", "ff.net.2"]  # the transformers' GEGLU/GELU input and output projections
# Not the temporal convolutions: peft builds a LoRA convolution by calling the wrapped module's class with
# nn.Conv3d's arguments, and FrameConv (a Conv3d run as a Conv2d, models/resnet.py) takes only a channel count.
ADAPTABLE = (torch.nn.Linear, torch.nn.Conv2d)


@dataclass
class LoraSettings:
    """The `lora` section of a training config."""

    rank: int = 8
    alpha: float | None = None  # the update is scaled by alpha / rank; None: alpha = rank (scale 1)
    dropout: float = 0.0  # dropout on the adapter's input, training only
    target_modules: list[str] = field(default_factory=lambda: list(ATTENTION))  # suffixes, e.g. + FEED_FORWARD

    def lora_config(self, unet: torch.nn.Module) -> LoraConfig:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be at least 1, got {self.rank}")
        targets = matching_modules(unet, self.target_modules)
        kinds = {name: _unwrapped(unet.get_submodule(name)) for name in targets}
        others = [name for name, module in kinds.items() if not isinstance(module, ADAPTABLE)]
        if others:
            raise ValueError(f"lora target modules must be linear or 2D convolution layers; {others[0]} is a "
                             f"{type(kinds[others[0]]).__name__}")
        return LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, lora_dropout=self.dropout,
                          target_modules=targets)


def matching_modules(unet: torch.nn.Module, suffixes: list[str]) -> list[str]:
    """The full names of the UNet's modules that the suffixes select; each suffix must select one at least."""
    names = [name for name, _ in unet.named_modules()]
    chosen = []
    for suffix in suffixes:
        found = [n for n in names if n == suffix or n.endswith("." + suffix)]
        if not found:
            raise ValueError(f"lora target module {suffix!r} matches no module of the UNet "
                             f"(attention: {ATTENTION}, feed-forward: {FEED_FORWARD})")
        chosen += found
    return sorted(set(chosen))


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The original module inside a LoRA layer (a module that already carries an adapter), else itself."""
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


def lora_layers(unet: torch.nn.Module) -> list[LoraLayer]:
    return [module for module in unet.modules() if isinstance(module, LoraLayer)]


def loaded_adapters(unet: torch.nn.Module) -> list[str]:
    """Names of the adapters loaded into the UNet, in loading order."""
    return list(getattr(unet, "peft_config", {}))


def add_adapter(unet: torch.nn.Module, settings: LoraSettings, adapter_name: str = "default") -> None:
    """A fresh adapter (B = 0: the UNet's output is unchanged) whose weights alone require gradients."""
    unet.requires_grad_(False)
    inject_adapter_in_model(settings.lora_config(unet), unet, adapter_name)


# ---- files ----

def adapter_state_dict(unet: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """One adapter's weights under the file's key names (`unet.<module>.lora_A.weight`, ...)."""
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {PREFIX + key: value.detach().cpu().contiguous() for key, value in state.items()}


def save_lora_weights(folder, unet: torch.nn.Module, adapter_name: str = "default") -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` (atomically: a killed run leaves no partial file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = unet.peft_config[adapter_name].to_dict()
    config = {f"{PREFIX}{key}": sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(config, indent=2, sort_keys=True, default=str)}
    with _atomic_path(folder / WEIGHT_NAME) as temporary:
        save_file(adapter_state_dict(unet, adapter_name), temporary, metadata=metadata)
    return folder / WEIGHT_NAME


def read_lora_file(path_or_folder, weight_name: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The UNet part of a LoRA file (or of `weight_name`, default pytorch_lora_weights.safetensors, in a
    folder): (state dict with peft's key names, LoraConfig keyword arguments)."""
    path = Path(path_or_folder)
    if path.is_dir():
        path = path / (weight_name or WEIGHT_NAME)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path} (give a .safetensors file or a folder holding {WEIGHT_NAME})")
    try:
        with safe_open(path, framework="pt") as file:
            state = {key: file.get_tensor(key) for key in file.keys()}
            metadata = file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    others = sorted(key for key in state if not key.startswith(PREFIX))
    if others:
        raise ValueError(f"{path}: only UNet LoRAs (keys starting with {PREFIX!r}, diffusers' layout) can be loaded; "
                         f"found {len(others)} other keys, first {others[:3]}")
    _check_tensors(state, path)
    state = {key[len(PREFIX):]: value for key, value in state.items()}
    config = _stored_config(metadata, path)
    return state, config | _config_from_keys(state, path, config)


def _check_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """At least one tensor; each floating point (an integer tensor would be cast into garbage) and finite."""
    if not state:
        raise ValueError(f"{path}: holds no tensors, so no LoRA weights")
    for key, value in sorted(state.items()):
        if not value.is_floating_point():
            raise ValueError(f"{path}: {key} is {str(value.dtype).removeprefix('torch.')}; LoRA weights must be "
                             f"floating point")
        if not torch.isfinite(value).all():
            raise ValueError(f"{path}: {key} holds NaN or infinite values")


def _stored_config(metadata: dict, path: Path) -> dict:
    """The LoraConfig fields stored under `lora_adapter_metadata` (without their `unet.` prefix), checked."""
    try:
        stored = json.loads(metadata.get(METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        raise ValueError(f"{path}: metadata {METADATA_KEY} is not valid JSON") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: metadata {METADATA_KEY} must be a JSON object, got {type(stored).__name__}")
    config = {key[len(PREFIX):]: value for key, value in stored.items() if key.startswith(PREFIX)}
    try:
        rank = check_int(f"metadata {PREFIX}r", config.get("r", 1), 1)
        # The update is scaled by alpha / r: beyond 1000 it swamps the weights and overflows half precision.
        check_real(f"metadata {PREFIX}lora_alpha", config.get("lora_alpha", rank), -1000 * rank, 1000 * rank)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    return config


def _config_from_keys(state: dict[str, torch.Tensor], path: Path, stored: dict) -> dict:
    """Target modules and ranks as the weights show them (rank = rows of lora_A); alpha = rank unless stored."""
    bad = sorted(key for key in state if not (".lora_A." in key or ".lora_B." in key) or not key.endswith(".weight"))
    if bad:
        raise ValueError(f"{path}: keys that are not LoRA A/B weights: {bad[:3]}")
    ranks = {key.split(".lora_A.")[0]: value.shape[0] for key, value in state.items() if ".lora_A." in key}
    for key, value in sorted(state.items()):
        module = key.split(".lora_")[0]
        other = f"{module}.lora_A.weight" if ".lora_B." in key else f"{module}.lora_B.weight"
        if other not in state:
            raise ValueError(f"{path}: {PREFIX}{key} has no {PREFIX}{other} beside it")
        if ".lora_B." in key and value.shape[1] != ranks[module]:
            raise ValueError(f"{path}: {PREFIX}{key} has rank {value.shape[1]} but {PREFIX}{other} has rank "
                             f"{ranks[module]}")
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    return {"target_modules": sorted(ranks), "r": stored.get("r", rank),
            "lora_alpha": stored.get("lora_alpha", stored.get("r", rank)),
            "rank_pattern": {module: r for module, r in ranks.items() if r != stored.get("r", rank)}}


def _check_keys(unet: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """Every key must name a linear or convolution of the UNet, with A and B shapes that fit it."""
    modules = dict(unet.named_modules())
    wrong = []
    for key, value in sorted(state.items()):
        module = _unwrapped(modules.get(key.split(".lora_")[0]))
        if isinstance(module, torch.nn.Linear):
            size = module.in_features if ".lora_A." in key else module.out_features
        elif isinstance(module, torch.nn.modules.conv._ConvNd):
            size = module.in_channels if ".lora_A." in key else module.out_channels
        else:
            wrong.append(PREFIX + key)
            continue
        if value.shape[1 if ".lora_A." in key else 0] != size:
            wrong.append(f"{PREFIX}{key} {tuple(value.shape)}")
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} of {len(state)} LoRA keys do not match this UNet "
                         f"(no such layer, or the wrong shape), first: {', '.join(wrong[:3])}")


def load_adapter_weights(unet: torch.nn.Module, path_or_folder, adapter_name: str = "default") -> None:
    """Overwrite an adapter's weights with a file's (a training checkpoint when resuming)."""
    state, _ = read_lora_file(path_or_folder)
    _check_keys(unet, state, path_or_folder)
    result = set_peft_model_state_dict(unet, state, adapter_name)
    if result.unexpected_keys:
        raise ValueError(f"{path_or_folder}: keys not loaded: {sorted(result.unexpected_keys)[:3]}")


# ---- adapters in the UNet ----

def load_lora_weights(unet: torch.nn.Module, path_or_folder, adapter_name: str | None = None,
                      weight_name: str | None = None) -> str:
    """Load an adapter from a file (or a folder holding pytorch_lora_weights.safetensors, or `weight_name`)
    and make it active at weight 1 beside the adapters already active. Returns its name (default:
    "default_<n>", as diffusers)."""
    state, config = read_lora_file(path_or_folder, weight_name)
    _check_keys(unet, state, path_or_folder)
    names = loaded_adapters(unet)
    adapter_name = adapter_name or f"default_{len(names)}"
    if adapter_name in names:
        raise ValueError(f"adapter_name {adapter_name!r} is already loaded; loaded: {names}")
    active = _active_adapters(unet)
    # peft freezes every other parameter; keep the UNet's flags as they were: on this CPU build some kernels
    # round differently for weights that require gradients (even under no_grad), and unloading must give
    # back the UNet's exact output.
    requires_grad = {p: p.requires_grad for p in unet.parameters()}
    with warnings.catch_warnings():  # peft warns that a second adapter makes several: that is the point
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(LoraConfig(**config), unet, adapter_name)
    for p, flag in requires_grad.items():
        p.requires_grad_(flag)
    unexpected = set_peft_model_state_dict(unet, state, adapter_name).unexpected_keys
    if unexpected:  # _check_keys should have caught these
        raise ValueError(f"{path_or_folder}: keys not loaded: {sorted(unexpected)[:3]}")
    set_adapters(unet, [*active, adapter_name])
    return adapter_name


def _active_adapters(unet: torch.nn.Module) -> list[str]:
    active = []
    for layer in lora_layers(unet):
        active += [name for name in layer.active_adapters if name not in active]
    return active


def set_adapters(unet: torch.nn.Module, adapter_names: str | list[str], adapter_weights=None) -> None:
    """Make exactly these adapters active, each with its weight (default 1.0): h = W x + sum_i w_i s_i B_i A_i x."""
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    weights = [1.0] * len(names) if adapter_weights is None else adapter_weights
    weights = [weights] * len(names) if isinstance(weights, (int, float)) else list(weights)
    loaded = loaded_adapters(unet)
    unknown = [name for name in names if name not in loaded]
    if unknown or len(weights) != len(names):
        raise ValueError(f"set_adapters: unknown adapters {unknown} (loaded: {loaded})" if unknown else
                         f"set_adapters: {len(names)} adapter names but {len(weights)} weights")
    weights = [check_real(f"adapter_weights[{i}]", weight) for i, weight in enumerate(weights)]
    for layer in lora_layers(unet):
        layer.set_adapter([name for name in names if name in layer.lora_A])
        for name, weight in zip(names, weights):
            if name in layer.lora_A:
                layer.set_scale(name, weight)


@contextlib.contextmanager
def lora_scale(unet: torch.nn.Module, scale: float):
    """Inside: every active adapter's update times `scale` (diffusers' `scale_lora_layers`, as its pipelines apply
    cross_attention_kwargs={"scale": s}); after: the scales as they were, exactly."""
    saved = [(layer, dict(layer.scaling)) for layer in lora_layers(unet)]
    try:
        for layer, scaling in saved:
            for name in layer.active_adapters:
                if name in scaling:
                    layer.scaling[name] = scaling[name] * scale
        yield
    finally:
        for layer, scaling in saved:
            layer.scaling.update(scaling)


def fuse_lora(unet: torch.nn.Module, lora_scale: float = 1.0, adapter_names: list[str] | None = None) -> None:
    """Add the active adapters' updates (times lora_scale) into the weights, so inference runs at the plain
    UNet's speed. The original weights are kept, so `unfuse_lora` restores them bit for bit (peft's own
    unmerge subtracts the update again, which is exact only up to rounding)."""
    check_real("lora_scale", lora_scale)
    for layer in lora_layers(unet):
        names = [n for n in (adapter_names or layer.active_adapters) if n in layer.lora_A]
        if layer.merged or not names:
            continue
        base = layer.get_base_layer()
        layer.weight_before_fuse = (base.weight.detach().clone(),
                                    None if base.bias is None else base.bias.detach().clone())
        scales = {name: layer.scaling[name] for name in names}
        for name in names:
            layer.scaling[name] *= lora_scale
        layer.merge(adapter_names=names)
        layer.scaling.update(scales)


@torch.no_grad()
def unfuse_lora(unet: torch.nn.Module) -> None:
    """Undo `fuse_lora`: the weights exactly as before it, the adapters active again."""
    for layer in lora_layers(unet):
        if not layer.merged:
            continue
        layer.merged_adapters.clear()
        base = layer.get_base_layer()
        weight, bias = layer.__dict__.pop("weight_before_fuse")
        base.weight.copy_(weight)
        if bias is not None:
            base.bias.copy_(bias)


def unload_lora_weights(unet: torch.nn.Module) -> None:
    """Remove every adapter: each LoRA layer is replaced by the module it wrapped (unfused first)."""
    unfuse_lora(unet)
    for name, module in list(unet.named_modules()):
        if isinstance(module, LoraLayer):
            parent, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent), child, module.get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config
