"""Research hooks: released weights into a UNet with an added module (strict for everything else, one warning
naming the new tensors), and a model_hook that is recorded with the run and applied again on every load."""

import json
import warnings

import pytest
import torch
from conftest import clip_folder, micro_pipeline

from i2vgen.model_hooks import model_hook
from i2vgen.models.unet import I2VGenXLUNet
from i2vgen.pipeline import I2VGenXLPipeline
from i2vgen.training.config import TrainConfig
from i2vgen.training.train import train

HOOK = "test_training_hooks:add_output_gain"


def _scale(conv_out, args, output):
    return output * conv_out.gain  # the module passed in, not a closure: copies of the model (EMA) work too


@model_hook
def add_output_gain(unet):
    """A new parameter (initialised to 2) and a forward change that uses it."""
    unet.conv_out.gain = torch.nn.Parameter(torch.full((), 2.0))
    unet.conv_out.register_forward_hook(_scale)


def not_a_hook(unet):
    pass


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return micro_pipeline(tmp_path_factory.mktemp("micro"))


def _output(unet):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 2, 4, 4)
    kwargs = dict(fps=torch.tensor([8]), image_latents=torch.randn(1, 4, 2, 4, 4), image_embeddings=torch.randn(1, 1, 8),
                  encoder_hidden_states=torch.randn(1, 5, 8))
    with torch.no_grad():
        return unet(x, torch.tensor([500]), **kwargs).sample


def test_released_weights_into_a_unet_with_an_added_module(model, tmp_path):
    plain = I2VGenXLUNet.from_pretrained(model / "unet")
    with pytest.warns(UserWarning, match=r"added 1 tensors that the loaded weights do not have; they keep their "
                                         r"initialisation: \['conv_out.gain'\]") as record:
        hooked = I2VGenXLUNet.from_pretrained(model / "unet", model_hook=HOOK)
    assert len(record) == 1
    assert hooked.conv_out.gain.item() == 2.0
    assert all(torch.equal(v, hooked.state_dict()[k]) for k, v in plain.state_dict().items())  # the rest: as released
    torch.testing.assert_close(_output(hooked), 2 * _output(plain), rtol=0, atol=0)  # x 2.0: exact in float

    # Saved, it records the hook; loaded again, the hook is back with the saved value of its parameter.
    with torch.no_grad():
        hooked.conv_out.gain.fill_(3.0)
    hooked.save_pretrained(tmp_path / "hooked")
    assert json.loads((tmp_path / "hooked" / "config.json").read_text())["_model_hook"] == HOOK
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is new now
        again = I2VGenXLUNet.from_pretrained(tmp_path / "hooked")
    assert again.conv_out.gain.item() == 3.0
    # The same weights; the file holds one more tensor, which moves the others' memory alignment, and some CPU
    # kernels round differently by alignment (measured: 1.2e-6 at most).
    torch.testing.assert_close(_output(again), _output(hooked), rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec, message", [
    ("nowhere.hooks:fn", "cannot be imported"), ("test_training_hooks", "must be 'package.module:function'"),
    ("test_training_hooks:not_a_hook", "is not marked with @i2vgen.model_hooks.model_hook"),
    ("os:getcwd", "is not marked")])
def test_bad_hooks_are_one_line(model, spec, message):
    with pytest.raises(ValueError, match=message):
        I2VGenXLUNet.from_pretrained(model / "unet", model_hook=spec)


def test_extra_tensors_that_no_hook_made_stay_an_error(model, tmp_path):
    with pytest.warns(UserWarning, match="conv_out.gain"):
        hooked = I2VGenXLUNet.from_pretrained(model / "unet", model_hook=HOOK)
    hooked._model_hook = None  # saved without the record: the file has a tensor the plain UNet lacks
    hooked.save_pretrained(tmp_path / "unrecorded")
    with pytest.raises(ValueError, match=r"1 unexpected \(first: \['conv_out.gain'\]\)"):
        I2VGenXLUNet.from_pretrained(tmp_path / "unrecorded")


def test_training_records_the_hook_and_every_load_applies_it(model, tmp_path):
    cfg = TrainConfig(model=str(model), output_dir=str(tmp_path / "run"), data_dir=str(clip_folder(tmp_path / "d", 3)),
                      buckets=((32, 32, 4),), batch_size=2, max_steps=2, lr_warmup_steps=1, learning_rate=1e-2,
                      num_workers=0, model_hook=HOOK)
    with pytest.warns(UserWarning, match="conv_out.gain"):
        out = train(cfg)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model_hook"] == HOOK
    pipe = I2VGenXLPipeline.from_pretrained(out)  # as i2vgen generate loads it
    assert pipe.unet._model_hook == HOOK and pipe.unet.conv_out.gain.item() != 2.0  # trained, then reloaded
    assert len(pipe.unet.conv_out._forward_hooks) == 1
    with pytest.raises(ValueError, match="model_hook with lora is not supported yet"):
        train(TrainConfig(**cfg.to_dict() | {"output_dir": str(tmp_path / "lora"), "lora": {"rank": 2}}))
