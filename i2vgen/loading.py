"""Configs and weights in the diffusers folder layout.

A model folder holds `config.json` (the constructor's keyword arguments, plus `_`-prefixed bookkeeping
keys such as `_class_name`) and its weights in safetensors form, in one of these layouts:

    diffusion_pytorch_model.safetensors                  one file
    diffusion_pytorch_model.fp16.safetensors             a variant (variant="fp16")
    diffusion_pytorch_model.safetensors.index.json       shards: {"weight_map": {key: shard file}}
    diffusion_pytorch_model.safetensors.index.fp16.json  sharded variant
    diffusion_pytorch_model[.fp16].bin (+ .bin.index.json)  PyTorch pickles (save_pretrained(safe_serialization=
                                                         False)): read with torch.load(weights_only=True) only,
                                                         and only when no safetensors file is there

`from_pretrained` builds the model on the meta device (no memory, no random init), checks every key and
shape against the file, then assigns the loaded tensors as the parameters: one copy in memory, ever.

A pipeline folder holds `model_index.json` (which class each component is) and one such folder per
component; `local_folder` resolves a hub id ("ali-vilab/i2vgen-xl") to a downloaded snapshot of one.
"""

import dataclasses
import inspect
import json
import pickle
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
MODEL_INDEX_NAME = "model_index.json"

# model_index.json: component -> (library, class name), as the reference writes it.
COMPONENTS = {
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "feature_extractor": ("transformers", "CLIPImageProcessor"),
    "unet": ("diffusers", "I2VGenXLUNet"),
    "scheduler": ("diffusers", "DDIMScheduler"),
}
BIN_NAME = "diffusion_pytorch_model.bin"
BIN_INDEX_NAME = "diffusion_pytorch_model.bin.index.json"


def _with_variant(name: str, variant: str | None) -> str:
    """'a.b.json' -> 'a.b.fp16.json': the variant goes before the last suffix, as diffusers names it."""
    if variant is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _tuplify(value):
    """JSON arrays become tuples (recursively), so configs compare and hash like the defaults."""
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, tuple) else value


@dataclasses.dataclass
class Config:
    """Base for model configs. Fields are the config.json keys, with the reference's defaults."""

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Keys starting with "_" (`_class_name`, `_diffusers_version`, ...) are bookkeeping and ignored;
        other unknown keys are ignored with a warning; missing keys take the field default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and not k.startswith("_"))
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown config keys {unknown}", stacklevel=2)
        return cls(**{k: _tuplify(v) for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return {f.name: _listify(getattr(self, f.name)) for f in dataclasses.fields(self)}


def read_config(folder, filename: str = "config.json") -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (from_pretrained reads local diffusers-layout folders)")
    path = folder / filename
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"{folder} has no {filename}; it holds {present}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def write_config(folder, class_name: str, config: dict, filename: str = "config.json") -> None:
    """Write `config` with its `_class_name`, as the reference lays the file out (sorted keys, indent 2)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"_class_name": class_name, **config}, indent=2, sort_keys=True) + "\n"
    (folder / filename).write_text(text)


def local_folder(path_or_hub_id, variant: str | None) -> Path:
    """A local folder as is; otherwise a hub snapshot (from the cache when offline)."""
    if Path(path_or_hub_id).is_dir():
        return Path(path_or_hub_id)
    name = str(path_or_hub_id)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):  # not of the form owner/name
        raise FileNotFoundError(f"model folder not found: {name}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(
            f"{path_or_hub_id} is not a local folder; to download it from the hub, pip install 'i2vgen[hub]'"
        ) from None
    weights = f"*.{variant}.safetensors" if variant else "*.safetensors"
    ignore = None if variant else ["*.fp16.safetensors"]
    try:
        return Path(snapshot_download(str(path_or_hub_id), allow_patterns=["*.json", "*.txt", weights],
                                      ignore_patterns=ignore))
    except Exception as error:
        raise FileNotFoundError(
            f"{path_or_hub_id} is not a local folder and could not be fetched from the hub or its local cache "
            f"({type(error).__name__}: {error})"
        ) from None


def check_model_index(folder: Path) -> None:
    """Raise unless model_index.json names the expected class for every component."""
    index = read_config(folder, MODEL_INDEX_NAME)
    for name, (_, class_name) in COMPONENTS.items():
        found = index.get(name, [None, None])[1]
        if found != class_name:
            raise ValueError(f"{folder}/{MODEL_INDEX_NAME}: {name} is {found}, expected {class_name}")


def save_components(save_directory, components: dict, safe_serialization: bool = True,
                    variant: str | None = None) -> None:
    """Write a pipeline folder: model_index.json and each component's save_pretrained in its subfolder; the
    models' weights as <name>[.variant].safetensors, or `.bin` pickles with safe_serialization=False
    (transformers 5 writes the CLIP encoders as safetensors whatever is asked)."""
    folder = Path(save_directory)
    write_config(folder, "I2VGenXLPipeline", {name: list(lib) for name, lib in COMPONENTS.items()},
                 MODEL_INDEX_NAME)
    for name in COMPONENTS:
        component = components[name]
        if isinstance(component, ModelMixin):
            component.save_pretrained(folder / name, safe_serialization=safe_serialization, variant=variant)
        elif isinstance(component, torch.nn.Module):  # transformers
            options = {"variant": variant}
            if "safe_serialization" in inspect.signature(component.save_pretrained).parameters:  # transformers 4
                options["safe_serialization"] = safe_serialization
            component.save_pretrained(folder / name, **options)
        else:
            component.save_pretrained(folder / name)


def load_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict, through `torch.load(weights_only=True)`: tensors and plain containers only, never
    code. A pickle that needs more is refused (loading it fully could run anything its author wrote)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: refused: this pickle needs full unpickling, which can run arbitrary code; only "
                         f"plain tensor state dicts load (torch.load weights_only=True). Convert it to safetensors "
                         f"where you trust its origin. ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _read_weights(folder: Path, variant: str | None) -> dict[str, torch.Tensor]:
    """The state dict from the single file or, if an index json is present, from its shards; safetensors when
    present, else PyTorch `.bin` pickles."""
    for index_name, single_name, load in ((INDEX_NAME, WEIGHTS_NAME, load_file),
                                          (BIN_INDEX_NAME, BIN_NAME, load_pickled_tensors)):
        index = folder / _with_variant(index_name, variant)
        single = folder / _with_variant(single_name, variant)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise FileNotFoundError(f"{index} names shard {shard}, which is not in {folder}")
                state.update(load(folder / shard))
            return state
        if single.is_file():
            return load(single)

    present = sorted(p.name for p in folder.iterdir() if p.name.startswith("diffusion_pytorch_model"))
    # 'diffusion_pytorch_model.fp16-00001-of-00002.safetensors', '....safetensors.index.fp16.json' -> 'fp16'
    variants = sorted({part.split("-")[0] for name in present for part in name.split(".")[1:]}
                      - {"safetensors", "index", "json", "bin"})
    hint = ""
    if variants:
        hint = f" Variants present: {variants}: pass variant='{variants[0]}'."
    if variant is not None and any(name in (WEIGHTS_NAME, INDEX_NAME, BIN_NAME, BIN_INDEX_NAME) for name in present):
        hint += " Default (non-variant) weights are present: pass variant=None."
    raise FileNotFoundError(
        f"no weights in {folder}: looked for {_with_variant(WEIGHTS_NAME, variant)} and "
        f"{_with_variant(INDEX_NAME, variant)} (or their .bin twins); "
        f"weight files there: {present[:6] or 'none'}{' ...' if len(present) > 6 else ''}.{hint}"
    )


def _check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path, n_shown: int = 5):
    """Raise one error listing counts and the first few missing, unexpected and wrong-shape keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(v.shape)}, model {expected[k]}"
             for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    problems = [f"{len(items)} {what} (first: {items[:n_shown]})"
                for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong))
                if items]
    if problems:
        raise ValueError(f"{type(model).__name__} weights in {folder} do not match the model: "
                         + "; ".join(problems))


def component_dtype(torch_dtype, name: str) -> torch.dtype:
    """The dtype for component `name`: `torch_dtype` itself, or from a dict such as {"unet": torch.bfloat16,
    "default": torch.float16} (components not named take "default", else float32), as the reference reads it."""
    if isinstance(torch_dtype, dict):
        torch_dtype = torch_dtype.get(name, torch_dtype.get("default"))
    if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype must be a torch.dtype or a dict of them, not {torch_dtype!r}")
    return torch_dtype or torch.float32


def component_variants(folder: Path, names, variant: str | None) -> dict[str, str | None]:
    """Which components load `variant`: those whose folder has weights of that variant (name.<variant>.ext or
    shards name.<variant>-00001-of-...); the others load their default weights, as in the reference. A variant
    that no component has is a ValueError, as in the reference."""
    if variant is None:
        return dict.fromkeys(names)

    def has_variant(name: str) -> bool:
        files = Path(folder, name).iterdir() if Path(folder, name).is_dir() else []
        return any(f".{variant}." in f.name or f".{variant}-" in f.name for f in files)

    found = {name: variant if has_variant(name) else None for name in names}
    if not any(found.values()):
        raise ValueError(f"variant={variant!r} was asked for, but no component in {folder} has weights of that "
                         f"variant (files named like model.{variant}.safetensors); pass variant=None for the defaults")
    return found


class ModelMixin(torch.nn.Module):
    """`from_pretrained` / `save_pretrained` for a module whose `__init__(config)` builds it from a Config."""

    config_class: type[Config]
    config: Config

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, variant=None):
        """Load a diffusers-layout folder. Floating tensors end up in `torch_dtype`, default float32 (as the
        reference: an fp16 variant loads as float32 unless torch_dtype says otherwise). Returns eval() mode."""
        folder = Path(pretrained_model_name_or_path, subfolder or "")
        if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise TypeError(f"torch_dtype must be a torch.dtype such as torch.float16, not {torch_dtype!r}")
        config = cls.config_class.from_dict(read_config(folder))
        with torch.device("meta"):
            model = cls(config)
        state = _read_weights(folder, variant)
        _check_keys(model, state, folder)
        model.load_state_dict(state, strict=True, assign=True)
        del state  # the model now owns the tensors; casting below replaces them one by one
        model.to(torch_dtype or torch.float32)  # casts floating tensors only

        on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if on_meta:
            raise RuntimeError(f"{cls.__name__}: tensors not in the checkpoint were left on the meta device: "
                               f"{on_meta[:5]} (non-persistent buffers must be computed in forward, not __init__)")
        return model.eval()

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant=None):
        """Write config.json and diffusion_pytorch_model[.variant].safetensors (tensors as they are), or, with
        safe_serialization=False, the same state dict as a PyTorch pickle `.bin`."""
        folder = Path(save_directory)
        write_config(folder, type(self).__name__, self.config.to_dict())
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        if safe_serialization:
            save_file(state, folder / _with_variant(WEIGHTS_NAME, variant), metadata={"format": "pt"})
        else:
            torch.save(state, folder / _with_variant(BIN_NAME, variant))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
