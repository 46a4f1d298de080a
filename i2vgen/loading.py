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

Everything read from a folder is checked where it is read, with one error naming the file (and key): configs
must be JSON objects whose values have the dataclass fields' types; weights must be readable files of finite
numbers; every file must resolve inside the model folder (no `..`, absolute names or links that leave it,
except a hub cache snapshot's links into the cache's own blobs).
"""

import contextlib
import dataclasses
import inspect
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import types
import typing
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from i2vgen import model_hooks
from .video import _atomic_path  # write to a temporary file, rename when complete

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


def check_variant(variant: str | None) -> None:
    """A variant is a plain name (it becomes part of file names: no path separators)."""
    if variant is not None and not (isinstance(variant, str) and re.fullmatch(r"[A-Za-z0-9_-]+", variant)):
        raise ValueError(f"variant must be a name of letters, digits, '_' and '-' such as 'fp16', got {variant!r}")


def _with_variant(name: str, variant: str | None) -> str:
    """'a.b.json' -> 'a.b.fp16.json': the variant goes before the last suffix, as diffusers names it."""
    check_variant(variant)
    if variant is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def _tuplify(value):
    """JSON arrays become tuples (recursively), so configs compare and hash like the defaults."""
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, tuple) else value


def _has_type(value, annotation) -> bool:
    """Whether a JSON value (lists already tuples) fits a field annotation: int, float (ints too), str, bool,
    None, X | Y, tuple[X, ...] and tuple[X, Y]. Other annotations are not checked."""
    if annotation is float:  # infinities are meaningful (e.g. lambda_min_clipped = -inf); NaN never is
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool, type(None)):
        return isinstance(value, annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args))
    return True


def check_config_types(cls, values: dict, source: str | None = None) -> None:
    """Each value must have its dataclass field's type; the error names `source` (the file) and the key."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not _has_type(value, hints[key]):
            expected = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
            raise ValueError(f"{source + ': ' if source else ''}{key} must be {expected}, got "
                             f"{json.dumps(_listify(value))}")


@dataclasses.dataclass
class Config:
    """Base for model configs. Fields are the config.json keys, with the reference's defaults."""

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> "Config":
        """Keys starting with "_" (`_class_name`, `_diffusers_version`, ...) are bookkeeping and ignored;
        other unknown keys are ignored with a warning; missing keys take the field default. A value of the
        wrong type is refused, naming `source` (the file it came from) and the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and not k.startswith("_"))
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown config keys {unknown}", stacklevel=2)
        values = {k: _tuplify(v) for k, v in d.items() if k in names}
        check_config_types(cls, values, source)
        try:
            return cls(**values)
        except (ValueError, TypeError) as error:  # a config's own checks (__post_init__)
            raise ValueError(f"{source}: {error}" if source else str(error)) from None

    def to_dict(self) -> dict:
        return {f.name: _listify(getattr(self, f.name)) for f in dataclasses.fields(self)}


def read_json(path: Path) -> dict:
    """A JSON object from `path`; anything else is one error naming the file."""
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not valid JSON: not UTF-8 text") from None
    except OSError as e:
        raise OSError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object {{...}}, got a JSON {type(data).__name__}")
    return data


def read_config(folder, filename: str = "config.json") -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (from_pretrained reads local diffusers-layout folders)")
    path = folder / filename
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a folder, pipe or device); it must be a JSON file")
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"{folder} has no {filename}; it holds {present}")
    return read_json(check_inside(folder, path))


# ---- files stay inside the model folder ----

def _hub_blobs(folder: Path) -> Path | None:
    """For a folder inside a hub cache snapshot (<repo>/snapshots/<revision>/...), the cache's <repo>/blobs,
    which that snapshot's files link into."""
    for parent in [folder.absolute(), *folder.absolute().parents]:
        if parent.parent.name == "snapshots":
            return parent.parent.parent / "blobs"
    return None


def check_inside(folder: Path, path: Path) -> Path:
    """`path`, once links are followed, must lie inside `folder` (or the hub cache blobs its snapshot links to)."""
    real, root = path.resolve(), folder.resolve()
    blobs = _hub_blobs(folder)
    if not (real.is_relative_to(root) or (blobs is not None and real.is_relative_to(blobs.resolve()))):
        raise ValueError(f"{path} leads to {real}, outside the model folder {folder}; model files are only read "
                         "from inside it")
    return path


def _resolve_inside(folder: Path, name, source: Path) -> Path:
    """`folder / name` for a file name read from `source` (a shard index): a relative name inside `folder`."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{source} names {name!r}; shard names must be relative file names inside {folder}")
    return check_inside(folder, folder / name)


def shard_paths(index: Path) -> list[Path]:
    """The files a shard index (`{"weight_map": {key: file}}`, ours or transformers') names, each inside its
    folder."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f'{index} has no weight_map: it must hold {{"weight_map": {{tensor name: shard file}}}}')
    return [_resolve_inside(index.parent, name, index) for name in sorted(set(weight_map.values()), key=str)]


def check_folder(folder: Path) -> None:
    """Every file and link in `folder` (recursively) stays inside it, every shard index names files inside it,
    and every safetensors file has a complete header: what any loader, ours or transformers', opens from it is
    the folder's own, and a damaged file is named in one line before a loader fails on it."""
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = check_inside(folder, Path(root, name))
            if name in files and not path.is_file():  # reading a FIFO would wait forever
                raise ValueError(f"{path} is not a regular file (a pipe, socket or device); model files must be "
                                 f"regular files")
            if name.endswith(".json") and ".index." in name:
                shard_paths(path)
            elif name.endswith(".safetensors"):
                with _reading_safetensors(path), safe_open(path, framework="pt"):
                    pass  # opening reads the header and checks that it covers the file


def write_config(folder, class_name: str, config: dict, filename: str = "config.json") -> None:
    """Write `config` with its `_class_name`, as the reference lays the file out (sorted keys, indent 2)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"_class_name": class_name, **config}, indent=2, sort_keys=True) + "\n"
    with _atomic_path(folder / filename) as temporary:
        Path(temporary).write_text(text)


def local_folder(path_or_hub_id, variant: str | None) -> Path:
    """A local folder as is; otherwise a hub snapshot (from the cache when offline)."""
    if not isinstance(path_or_hub_id, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name_or_path must be a folder or a hub id (owner/name), got "
                        f"{path_or_hub_id!r}")
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
        first = (str(error).strip().splitlines() or [""])[0]  # the hub's errors add lines of advice
        raise FileNotFoundError(
            f"{path_or_hub_id} is not a local folder and could not be fetched from the hub or its local cache "
            f"({type(error).__name__}: {first.strip()})"
        ) from None


def check_model_index(folder: Path) -> None:
    """Raise unless model_index.json names the expected class for every component, each component's folder is
    there, and every file stays inside the folder (`check_folder`)."""
    index = read_config(folder, MODEL_INDEX_NAME)
    for name, (_, class_name) in COMPONENTS.items():
        entry = index.get(name)
        found = entry[1] if isinstance(entry, list) and len(entry) == 2 else entry
        if found != class_name:
            raise ValueError(f"{folder}/{MODEL_INDEX_NAME}: {name} is {found}, expected {class_name}")
        if not (folder / name).is_dir():
            raise FileNotFoundError(f"{folder} has no {name} folder, which {MODEL_INDEX_NAME} lists")
    check_folder(folder)


def save_components(save_directory, components: dict, safe_serialization: bool = True,
                    variant: str | None = None) -> None:
    """Write a pipeline folder: model_index.json and each component's save_pretrained in its subfolder; the
    models' weights as <name>[.variant].safetensors, or `.bin` pickles with safe_serialization=False
    (transformers 5 writes the CLIP encoders as safetensors whatever is asked)."""
    with atomic_folder(save_directory) as folder:
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


@contextlib.contextmanager
def atomic_folder(folder):
    """Yield a hidden temporary folder beside `folder`; once the block finishes, move each file written into its
    place in `folder` by renaming (files already there and not rewritten stay). An error, a full disk or a kill
    while writing leaves the old state and no temporary folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot save to {folder}: it is a file, not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        yield temporary
        _move_into(temporary, folder)
    except OSError as error:  # name the real destination, never the temporary folder
        if str(temporary) not in str(error):
            raise
        raise OSError(str(error).replace(str(temporary), str(folder))) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _move_into(source: Path, target: Path) -> None:
    target.mkdir(exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            _move_into(entry, target / entry.name)
        else:
            os.replace(entry, target / entry.name)


@contextlib.contextmanager
def _reading_safetensors(path: Path):
    """A truncated, empty or foreign file becomes one error naming it."""
    try:
        yield
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable safetensors file ({detail})") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with _reading_safetensors(path):
        return load_file(path)


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """NaN or infinite weights would only show as a black video at the end: name the tensor now."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: tensor {key} holds NaN or infinite values")
    return state


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
    for index_name, single_name, load in ((INDEX_NAME, WEIGHTS_NAME, load_safetensors),
                                          (BIN_INDEX_NAME, BIN_NAME, load_pickled_tensors)):
        index = folder / _with_variant(index_name, variant)
        single = folder / _with_variant(single_name, variant)
        if index.is_file():
            state = {}
            for shard in shard_paths(index):
                if not shard.is_file():
                    raise FileNotFoundError(f"{index} names shard {shard.name}, which is not in {folder}")
                state.update(_check_finite(load(shard), shard))
            return state
        if single.is_file():
            return _check_finite(load(check_inside(folder, single)), single)

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
    model_state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in model_state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(v.shape)}, model {expected[k]}"
             for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    # A float tensor must be stored as floats (any precision: it is cast); an integer buffer as integers.
    wrong_dtype = [f"{k}: file {v.dtype}, model {model_state[k].dtype}" for k, v in state.items()
                   if k in expected and v.is_floating_point() != model_state[k].is_floating_point()]
    problems = [f"{len(items)} {what} (first: {items[:n_shown]})"
                for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong),
                                    ("wrong-dtype", wrong_dtype))
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
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder=None, torch_dtype=None, variant=None,
                        model_hook: str | None = None):
        """Load a diffusers-layout folder. Floating tensors end up in `torch_dtype`, default float32 (as the
        reference: an fp16 variant loads as float32 unless torch_dtype says otherwise). Returns eval() mode.

        A model hook (i2vgen/model_hooks.py: `model_hook`, or the `_model_hook` its config.json records) is
        applied after the model's own tensors load strictly; the tensors it adds load from the file where it
        has them and otherwise keep their initialisation, named in one warning."""
        folder = Path(pretrained_model_name_or_path, subfolder or "")
        if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise TypeError(f"torch_dtype must be a torch.dtype such as torch.float16, not {torch_dtype!r}")
        raw_config = read_config(folder)
        config = cls.config_class.from_dict(raw_config, source=str(folder / "config.json"))
        check_folder(folder)
        try:
            with torch.device("meta"):
                model = cls(config)
        except (ValueError, TypeError) as error:  # values of the right type that do not build a model
            raise ValueError(f"{folder / 'config.json'}: {error}") from None
        state = _read_weights(folder, variant)
        hook = model_hook or raw_config.get("_model_hook")
        added = {k: state.pop(k) for k in set(state) - set(model.state_dict())} if hook else {}
        _check_keys(model, state, folder)
        model.load_state_dict(state, strict=True, assign=True)
        del state  # the model now owns the tensors; casting below replaces them one by one
        if hook:  # on the loaded model, so the hook's new modules are initialised for real
            model_hooks.warn_new(hook, sorted(set(model_hooks.apply(model, hook)) - set(added)))
            _check_keys(model, model.state_dict() | added, folder)  # the file's extra tensors: exactly the hook's
            model.load_state_dict(added, strict=False)
        model.to(torch_dtype or torch.float32)  # casts floating tensors only

        on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if on_meta:
            raise RuntimeError(f"{cls.__name__}: tensors not in the checkpoint were left on the meta device: "
                               f"{on_meta[:5]} (non-persistent buffers must be computed in forward, not __init__)")
        return model.eval()

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant=None):
        """Write config.json and diffusion_pytorch_model[.variant].safetensors (tensors as they are), or, with
        safe_serialization=False, the same state dict as a PyTorch pickle `.bin`."""
        hook = getattr(self, "_model_hook", None)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        with atomic_folder(save_directory) as folder:
            write_config(folder, type(self).__name__, self.config.to_dict() | ({"_model_hook": hook} if hook else {}))
            name = _with_variant(WEIGHTS_NAME if safe_serialization else BIN_NAME, variant)
            try:
                if safe_serialization:
                    save_file(state, folder / name, metadata={"format": "pt"})
                else:
                    torch.save(state, folder / name)
            except (SafetensorError, RuntimeError) as error:  # e.g. a full disk, as safetensors reports it
                detail = str(error).strip().splitlines()[0]
                raise OSError(f"cannot write {Path(save_directory) / name}: {detail}") from None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
