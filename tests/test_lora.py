"""LoRA adapters (i2vgen/lora.py): files in diffusers' layout, loading a file diffusers wrote, weights, fusing,
unloading, errors, and training an adapter.

Expected values come from the LoRA formula h = W x + w (alpha / r) B A x computed here by hand, from the
reference's own output with a diffusers-written LoRA (tests/fixtures/lora, scripts/make_reference.py), or
from the plain UNet itself (what unloading must give back exactly).
"""

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, micro_pipeline, rel_error

from i2vgen import lora  # needs peft: the `lora` extra, which the `test` extra installs
from i2vgen.models.unet import I2VGenXLUNet

pytestmark = pytest.mark.parity  # recorded reference outputs: scripts/test.sh reruns these on other kernels
UNET_CONFIG = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, norm_num_groups=8,
                   cross_attention_dim=16, attention_head_dim=8)


def _unet_and_inputs(seed=0):
    torch.manual_seed(seed)
    unet = I2VGenXLUNet(**UNET_CONFIG).eval()
    for p in unet.parameters():  # no zero-initialised branch (the last temporal conv starts at zero)
        torch.nn.init.normal_(p, std=0.1)
    inputs = dict(sample=torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([500]), fps=torch.tensor([16]),
                  image_latents=torch.randn(1, 4, 3, 8, 8), image_embeddings=torch.randn(1, 16),
                  encoder_hidden_states=torch.randn(1, 5, 16))
    return unet, inputs


@torch.no_grad()
def _run(unet, inputs):
    return unet(**inputs).sample


def _random_adapter(unet, name="default", rank=4, alpha=8.0, seed=1, targets=None):
    """An adapter whose B is not zero (a fresh one changes nothing). The UNet's requires_grad flags are kept,
    as load_lora_weights keeps them (they change the CPU kernels' rounding)."""
    settings = lora.LoraSettings(rank=rank, alpha=alpha, target_modules=targets or lora.ATTENTION)
    from peft import inject_adapter_in_model
    with warnings.catch_warnings():  # a second adapter: peft warns that there are now two
        warnings.simplefilter("ignore")
        inject_adapter_in_model(settings.lora_config(unet), unet, name)
    unet.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(unet):
            if name in layer.lora_B:
                layer.lora_B[name].weight.copy_(torch.randn(layer.lora_B[name].weight.shape, generator=generator) * 0.2)


def test_save_load_round_trip_in_diffusers_layout(tmp_path):
    unet, inputs = _unet_and_inputs()
    base = _run(unet, inputs)
    _random_adapter(unet, rank=4, alpha=8.0, targets=lora.ATTENTION + lora.FEED_FORWARD)
    adapted = _run(unet, inputs)
    assert (adapted - base).abs().max() > 1e-2  # the adapter does something
    path = lora.save_lora_weights(tmp_path / "saved", unet)
    assert path.name == "pytorch_lora_weights.safetensors"

    state = load_file(path)
    assert all(k.startswith("unet.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in state)
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in state
    assert "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2.lora_B.weight" in state
    with safe_open(path, "pt") as f:
        stored = json.loads(f.metadata()["lora_adapter_metadata"])
    assert stored["unet.r"] == 4 and stored["unet.lora_alpha"] == 8.0

    fresh, _ = _unet_and_inputs()
    torch.testing.assert_close(_run(fresh, inputs), base, rtol=0, atol=0)
    assert lora.load_lora_weights(fresh, tmp_path / "saved") == "default_0"
    # Same modules, same numbers, same order of operations: exact.
    torch.testing.assert_close(_run(fresh, inputs), adapted, rtol=0, atol=0)


def test_loads_a_lora_that_diffusers_saved():
    """tests/fixtures/lora: a LoRA for the unet_2level reference UNet (rank 4, alpha 8: the metadata matters),
    saved by diffusers' `save_lora_weights`, and the reference UNet's outputs with it."""
    folder = FIXTURES / "lora"
    io = load_file(folder / "io.safetensors")
    # Frozen, as peft left the reference's UNet when it recorded (the flag changes some CPU kernels' rounding).
    unet = I2VGenXLUNet.from_pretrained(FIXTURES / "unet_2level").eval().requires_grad_(False)
    inputs = {k: io[k] for k in ("sample", "timestep", "fps", "image_latents", "image_embeddings",
                                 "encoder_hidden_states")}
    name = lora.load_lora_weights(unet, folder)
    # tests/test_unet.py's float32 parity tolerance. Measured (tests/fixtures/README.md): across avx2/default kernels
    # and 1/2 threads the reference itself moves its outputs by up to 1.7e-6 of their scale, ours are within 1.4e-6
    # of the recording and 1.3e-6 of the reference on the same kernels. The adapter moves the output by 20% of its
    # scale, reading alpha / r wrong (weight 0.5 instead of 1) by 11%, dropping its least effective layer by 1.8e-3
    # (case.json relative_moves): all far beyond 1e-5.
    assert rel_error(_run(unet, inputs), io["out_lora"]) <= 1e-5
    lora.set_adapters(unet, name, 0.5)
    assert rel_error(_run(unet, inputs), io["out_lora_half"]) <= 1e-5
    lora.unload_lora_weights(unet)
    assert rel_error(_run(unet, inputs), io["out_base"]) <= 1e-5


def test_saved_files_have_the_layout_diffusers_writes(tmp_path):
    """The same adapter settings on the same UNet: our file has exactly diffusers' keys, shapes and metadata."""
    theirs = FIXTURES / "lora" / lora.WEIGHT_NAME
    case = json.loads((FIXTURES / "lora" / "case.json").read_text())
    unet = I2VGenXLUNet.from_pretrained(FIXTURES / "unet_2level")
    lora.add_adapter(unet, lora.LoraSettings(rank=case["rank"], alpha=case["lora_alpha"],
                                             target_modules=case["target_modules"]))
    ours = lora.save_lora_weights(tmp_path, unet)
    shapes = lambda f: {k: tuple(v.shape) for k, v in load_file(f).items()}  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    meta = [json.loads(safe_open(f, "pt").metadata()["lora_adapter_metadata"]) for f in (ours, theirs)]
    assert meta[0].keys() == meta[1].keys()
    for key in ("unet.r", "unet.lora_alpha", "unet.lora_dropout", "unet.peft_type", "unet.use_dora"):
        assert meta[0][key] == meta[1][key], key


def test_adapter_weights_follow_the_lora_formula(tmp_path):
    unet, _ = _unet_and_inputs()
    _random_adapter(unet, "a", rank=4, alpha=8.0, seed=1)
    lora.save_lora_weights(tmp_path / "a", unet, "a")
    _random_adapter(unet, "b", rank=2, alpha=2.0, seed=2)
    lora.save_lora_weights(tmp_path / "b", unet, "b")
    lora.unload_lora_weights(unet)
    lora.load_lora_weights(unet, tmp_path / "a", adapter_name="a")
    lora.load_lora_weights(unet, tmp_path / "b", adapter_name="b")

    files = {name: load_file(tmp_path / name / lora.WEIGHT_NAME) for name in "ab"}
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    layer = unet.get_submodule(module)
    x = torch.randn(3, layer.in_features)
    plain = layer.get_base_layer()(x)

    def update(name, scale):  # w (alpha / r) B A x
        a, b = (files[name][f"unet.{module}.lora_{m}.weight"] for m in "AB")
        return scale * x @ a.T @ b.T

    with torch.no_grad():
        assert torch.equal(layer(x), plain + update("a", 8 / 4) + update("b", 2 / 2))  # both active after loading
        lora.set_adapters(unet, ["a", "b"], [0.5, -1.5])
        torch.testing.assert_close(layer(x), plain + update("a", 0.5 * 8 / 4) + update("b", -1.5 * 2 / 2),
                                   rtol=1e-6, atol=1e-6)  # float32 rounding of a different summation order
        lora.set_adapters(unet, "b")
        torch.testing.assert_close(layer(x), plain + update("b", 2 / 2), rtol=1e-6, atol=1e-6)
        lora.set_adapters(unet, ["a"], [0.0])
        assert torch.equal(layer(x), plain)  # adding exact zeros
    with pytest.raises(ValueError, match="unknown adapters \\['c'\\]"):
        lora.set_adapters(unet, ["a", "c"])


def test_fuse_then_unfuse_and_unload_restore_the_weights_exactly(tmp_path):
    unet, inputs = _unet_and_inputs()
    base_state = {k: v.clone() for k, v in unet.state_dict().items()}
    base = _run(unet, inputs)
    _random_adapter(unet)
    lora.save_lora_weights(tmp_path, unet)
    lora.unload_lora_weights(unet)
    lora.load_lora_weights(unet, tmp_path)
    adapted = _run(unet, inputs)

    lora.fuse_lora(unet)
    fused = _run(unet, inputs)
    # W + s B A computed once instead of W x + s B (A x): float32 rounding, outputs of size ~1.
    torch.testing.assert_close(fused, adapted, rtol=1e-4, atol=1e-4)
    assert not torch.equal(fused, adapted)  # the fused weights are really used
    lora.unfuse_lora(unet)
    assert torch.equal(_run(unet, inputs), adapted)

    lora.fuse_lora(unet, lora_scale=0.5)
    half_fused = _run(unet, inputs)
    lora.unfuse_lora(unet)
    lora.set_adapters(unet, "default_0", 0.5)
    torch.testing.assert_close(half_fused, _run(unet, inputs), rtol=1e-4, atol=1e-4)

    lora.fuse_lora(unet)
    lora.unload_lora_weights(unet)  # unfuses first
    assert not hasattr(unet, "peft_config") and not lora.lora_layers(unet)
    assert unet.state_dict().keys() == base_state.keys()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in base_state.items())
    assert torch.equal(_run(unet, inputs), base)


def test_a_file_that_does_not_fit_the_unet_is_one_clear_error(tmp_path):
    unet, _ = _unet_and_inputs()
    good = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    cases = {
        "no_layer": ({"unet.down_blocks.9.attn.to_q.lora_A.weight": torch.zeros(4, 16),
                      "unet.down_blocks.9.attn.to_q.lora_B.weight": torch.zeros(16, 4)},
                     "2 of 2 LoRA keys do not match this UNet .*first: unet.down_blocks.9.attn.to_q.lora_A.weight"),
        "wrong_shape": ({f"{good}.lora_A.weight": torch.zeros(4, 24), f"{good}.lora_B.weight": torch.zeros(16, 4)},
                        r"1 of 2 LoRA keys do not match this UNet .*attn1.to_q.lora_A.weight \(4, 24\)"),
        "text_encoder": ({"text_encoder.layers.0.q_proj.lora_A.weight": torch.zeros(4, 16)}, "only UNet LoRAs"),
        "kohya": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 16)},
                  "only UNet LoRAs"),
    }
    for name, (state, message) in cases.items():
        save_file(state, tmp_path / f"{name}.safetensors")
        with pytest.raises(ValueError, match=message) as error:
            lora.load_lora_weights(unet, tmp_path / f"{name}.safetensors")
        assert "\n" not in str(error.value)
    assert not lora.lora_layers(unet)  # nothing half-loaded
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors: not a readable safetensors file"):
        lora.load_lora_weights(unet, tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="LoRA file not found: .*missing"):
        lora.load_lora_weights(unet, tmp_path / "missing")
    with pytest.raises(ValueError, match="'to_z' matches no module"):
        lora.add_adapter(unet, lora.LoraSettings(target_modules=["to_z"]))
    with pytest.raises(ValueError, match="linear or 2D convolution layers; .*temp_convs.0.conv4.3 is a FrameConv"):
        lora.add_adapter(unet, lora.LoraSettings(target_modules=["conv4.3"]))


# ---- training an adapter (i2vgen train with a `lora` section) ----

def test_lora_training_changes_only_the_adapter_and_resumes_bit_for_bit(tmp_path):
    from i2vgen.pipeline import I2VGenXLPipeline
    from i2vgen.training.checkpoint import SafeReader
    from i2vgen.training.config import TrainConfig
    from i2vgen.training.train import train

    base = micro_pipeline(tmp_path)
    common = dict(model=str(base), num_clips=2, batch_size=1, gradient_accumulation_steps=2, max_steps=3,
                  checkpoint_every=1, keep_checkpoints=1, lr_warmup_steps=1, learning_rate=1e-2, ema_decay=0.5,
                  directions=("up-left", "down"), gradient_checkpointing=True,
                  lora={"rank": 2, "alpha": 4, "target_modules": ["to_q", "to_v", "ff.net.2"]})
    straight = train(TrainConfig(output_dir=str(tmp_path / "a"), **common))
    assert train(TrainConfig(output_dir=str(tmp_path / "b"), **common), until=2) is None
    resumed = train(TrainConfig(output_dir=str(tmp_path / "b"), **common))
    assert straight == tmp_path / "a" / "lora" and resumed == tmp_path / "b" / "lora"
    checkpoint = tmp_path / "b" / "checkpoint-000003"
    assert sorted(p.name for p in checkpoint.iterdir()) == [".metadata", "__0_0.distcp", "training_state.json"]
    saved = [key for key in SafeReader(checkpoint).read_metadata().state_dict_metadata
             if key.startswith(("model.", "ema."))]
    assert saved and all(".lora_" in key for key in saved)  # the adapter and its EMA alone, no UNet copy
    a, b = (load_file(folder / lora.WEIGHT_NAME) for folder in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same ops, same order, same numbers
    assert any(k.endswith("ff.net.2.lora_B.weight") for k in a)
    assert all(a[k].abs().max() > 0 for k in a if ".lora_B." in k)  # B started at zero: it trained

    pipe = I2VGenXLPipeline.from_pretrained(base)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    assert pipe.load_lora_weights(straight.parent, weight_name="lora/" + lora.WEIGHT_NAME) == "default_0"
    pipe.fuse_lora()
    changed = [k for k, v in pipe.unet.state_dict().items() if k.endswith("base_layer.weight")
               and not torch.equal(v, before[k.replace(".base_layer", "")])]
    assert changed and all(".to_q." in k or ".to_v." in k or ".ff.net.2." in k for k in changed)
    pipe.unload_lora_weights()
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_cli_lora_option(tmp_path, capsys):
    from i2vgen.apps.cli import main
    from i2vgen.apps.render import EMBEDDED_MODEL

    unet = I2VGenXLUNet.from_pretrained(EMBEDDED_MODEL / "unet")
    _random_adapter(unet)
    lora.save_lora_weights(tmp_path / "lora", unet)
    image = Path(__file__).resolve().parent.parent / "assets" / "red_circle.png"

    def run(out, *args):
        return main(["generate", "--image", str(image), "--prompt", "a red circle moving up-left", "--steps", "2",
                     "--frames", "3", "--height", "32", "--width", "32", "--seed", "1", "--out", str(out), *args])

    assert run(tmp_path / "plain.gif") == 0
    assert run(tmp_path / "lora.gif", "--lora", str(tmp_path / "lora")) == 0
    assert run(tmp_path / "zero.gif", "--lora", f"{tmp_path / 'lora' / lora.WEIGHT_NAME}:0") == 0
    assert (tmp_path / "plain.gif").read_bytes() != (tmp_path / "lora.gif").read_bytes()
    assert (tmp_path / "plain.gif").read_bytes() == (tmp_path / "zero.gif").read_bytes()  # weight 0 adds zeros
    capsys.readouterr()

    assert run(tmp_path / "x.gif", "--lora", str(tmp_path / "missing:0.5")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"i2vgen: error: --lora: {tmp_path / 'missing'} does not exist (give a LoRA .safetensors file or its " \
        "folder, then optionally :SCALE)"
    assert run(tmp_path / "x.gif", "--lora", str(FIXTURES / "lora")) == 1  # a LoRA for another UNet
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("i2vgen: error: ") and "LoRA keys do not match this UNet" in line
    assert not (tmp_path / "x.gif").exists()


def test_the_shipped_demo_lora_fits_the_embedded_model():
    from i2vgen.apps.render import EMBEDDED_MODEL
    from i2vgen.training.config import TrainConfig

    shipped = EMBEDDED_MODEL.parent / "tiny-demo-lora-diagonal"
    assert (shipped / lora.WEIGHT_NAME).stat().st_size <= 1_000_000
    config_file = Path(__file__).resolve().parent.parent / "scripts" / "train_demo_lora.json"
    settings = lora.LoraSettings(**TrainConfig.from_json(config_file).lora)
    unet = I2VGenXLUNet.from_pretrained(EMBEDDED_MODEL / "unet")
    lora.load_lora_weights(unet, shipped)
    config = unet.peft_config["default_0"]
    assert (config.r, config.lora_alpha) == (settings.rank, settings.alpha)
    adapted = sorted(name for name, module in unet.named_modules() if module in lora.lora_layers(unet))
    assert adapted == lora.matching_modules(unet, settings.target_modules)

