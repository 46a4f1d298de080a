"""Loader tests on a tiny ModelMixin: layouts (single file, fp16 variant, shards), strictness, clear errors."""

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from conftest import Tiny, TinyConfig

from i2vgen.loading import read_config


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _write_shards(folder, state, index_name, shard_pattern, n_shards=2):
    """Write state into n_shards safetensors files plus an index json {"weight_map": {key: file}},
    the layout diffusers' save_pretrained produces for large models."""
    keys = sorted(state)
    weight_map = {}
    for i in range(n_shards):
        name = shard_pattern.format(i + 1, n_shards)
        part = keys[i::n_shards]
        save_file({k: state[k].contiguous() for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_round_trip(tmp_path):
    model = Tiny(dim=5, hidden=(7, 2))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == {"_class_name": "Tiny", "dim": 5, "hidden": [7, 2]}

    loaded = Tiny.from_pretrained(tmp_path)
    assert loaded.config == TinyConfig(dim=5, hidden=(7, 2))  # JSON list came back as a tuple
    assert _state_equal(model, loaded)
    assert not loaded.training and loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.counts.dtype == torch.int64


def test_subfolder(tmp_path):
    model = Tiny()
    model.save_pretrained(tmp_path / "unet")
    assert _state_equal(model, Tiny.from_pretrained(tmp_path, subfolder="unet"))


def test_fp16_variant_loads_as_float32_unless_asked(tmp_path):
    model = Tiny().half()
    model.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()

    as_fp32 = Tiny.from_pretrained(tmp_path, variant="fp16")  # the reference's default: float32
    assert as_fp32.dtype == torch.float32 and _state_equal(model.float(), as_fp32)
    assert as_fp32.counts.dtype == torch.int64  # only floating tensors are cast

    as_fp16 = Tiny.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert as_fp16.dtype == torch.float16 and _state_equal(model.half(), as_fp16)


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_sharded(tmp_path, variant):
    model = Tiny()
    model.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    suffix = f".{variant}" if variant else ""
    _write_shards(tmp_path, model.state_dict(), f"diffusion_pytorch_model.safetensors.index{suffix}.json",
                  f"diffusion_pytorch_model{suffix}-{{:05d}}-of-{{:05d}}.safetensors")
    assert _state_equal(model, Tiny.from_pretrained(tmp_path, variant=variant))


def test_missing_shard_named(tmp_path):
    model = Tiny()
    model.save_pretrained(tmp_path)
    _write_shards(tmp_path, model.state_dict(), "diffusion_pytorch_model.safetensors.index.json",
                  "shard-{}-of-{}.safetensors")
    (tmp_path / "shard-2-of-2.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard-2-of-2.safetensors"):
        Tiny.from_pretrained(tmp_path)


def _save_state(folder, model, state):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file(state, folder / "diffusion_pytorch_model.safetensors")


def test_missing_and_unexpected_keys_named(tmp_path):
    model = Tiny()
    state = dict(model.state_dict())
    del state["out.bias"]
    state["extra.weight"] = torch.zeros(2)
    _save_state(tmp_path, model, state)
    with pytest.raises(ValueError) as e:
        Tiny.from_pretrained(tmp_path)
    message = str(e.value)
    assert "1 missing" in message and "out.bias" in message
    assert "1 unexpected" in message and "extra.weight" in message
    assert str(tmp_path) in message


def test_wrong_shape_named(tmp_path):
    model = Tiny()
    state = dict(model.state_dict())
    state["inp.weight"] = torch.zeros(6, 9)
    _save_state(tmp_path, model, state)
    with pytest.raises(ValueError, match=r"1 wrong-shape.*inp\.weight: file \(6, 9\), model \(6, 4\)"):
        Tiny.from_pretrained(tmp_path)


def test_missing_folder_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        Tiny.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        Tiny.from_pretrained(tmp_path)

    Tiny().save_pretrained(tmp_path, variant="fp16")
    with pytest.raises(FileNotFoundError, match="looked for diffusion_pytorch_model.safetensors.*pass variant='fp16'"):
        Tiny.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.ema.safetensors"):
        Tiny.from_pretrained(tmp_path, variant="ema")


def test_bad_json_and_dtype(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(tmp_path)
    Tiny().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="torch_dtype"):
        Tiny.from_pretrained(tmp_path, torch_dtype="float16")


def test_config_keys():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # bookkeeping keys the reference writes must not warn
        config = TinyConfig.from_dict({"_class_name": "Tiny", "_diffusers_version": "0.35.2",
                                       "_name_or_path": "x", "dim": 3, "hidden": [5, 1]})
    assert config == TinyConfig(dim=3, hidden=(5, 1))
    with pytest.warns(UserWarning, match="unknown config keys.*'num_heads'"):
        assert TinyConfig.from_dict({"num_heads": 8}) == TinyConfig()  # missing keys take the defaults
    assert TinyConfig(hidden=(2, 2)).to_dict() == {"dim": 4, "hidden": [2, 2]}


class WithInitBuffer(Tiny):
    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.register_buffer("table", torch.ones(3), persistent=False)  # not in any checkpoint


def test_meta_leftovers_are_an_error(tmp_path):
    Tiny().save_pretrained(tmp_path)
    assert not any(t.is_meta for t in Tiny.from_pretrained(tmp_path).state_dict().values())
    with pytest.raises(RuntimeError, match="meta device.*table"):
        WithInitBuffer.from_pretrained(tmp_path)
