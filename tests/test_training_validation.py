"""Validation while training, TensorBoard logging, and the evaluation metrics it reports.

The metrics are checked on images whose PSNR is known from its definition; the loop's outputs by what they
must contain; that validating changes nothing in training by comparing runs with and without it."""

import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from conftest import clip_folder, micro_pipeline

from i2vgen.evaluation.fidelity import first_frame_psnr, per_frame_psnr, psnr
from i2vgen.models.unet import I2VGenXLUNet
from i2vgen.training.config import TrainConfig
from i2vgen.training.train import train
from i2vgen.training.validation import ValidationSettings


def test_psnr_of_known_errors():
    a = np.full((4, 4, 3), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # mse 0.01: 10 log10(1 / 0.01)
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    assert psnr(a, a) == pytest.approx(120.0)  # mse floored at 1e-12
    video = np.stack([a, a + 0.1, a + 0.01])
    assert first_frame_psnr(video, a + 0.1) == pytest.approx(20.0)
    assert per_frame_psnr(video, np.stack([a, a, a])) == pytest.approx([120.0, 20.0, 40.0])
    with pytest.raises(ValueError, match="one shape"):
        psnr(a, a[:2])
    with pytest.raises(ValueError, match="one length"):
        per_frame_psnr(video, video[:2])


def test_unknown_validation_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown validation keys \['every'\]"):
        ValidationSettings.from_config({"every": 3})
    with pytest.raises(ValueError, match="validation samples are"):
        ValidationSettings.from_config({"samples": [{"prompt": "x"}]})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return micro_pipeline(tmp_path_factory.mktemp("micro"))


def test_validation_writes_videos_grid_metrics_and_tensorboard(model, tmp_path):
    data, held = clip_folder(tmp_path / "data", 4), clip_folder(tmp_path / "held", 2, fps=(8,))
    PIL.Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    common = dict(model=str(model), data_dir=str(data), buckets=((32, 32, 4),), batch_size=2, max_steps=2,
                  lr_warmup_steps=1, learning_rate=1e-3, num_workers=0, checkpoint_every=1)
    validation = {"data_dir": str(held), "samples": [{"image": str(tmp_path / "red.png"), "prompt": "a red circle",
                                                      "seed": 3}], "num_inference_steps": 2, "fps": 8}
    plain = train(TrainConfig(output_dir=str(tmp_path / "plain"), **common))
    run = tmp_path / "run"
    validated = train(TrainConfig(output_dir=str(run), validate_every=1, validation=validation, tensorboard=True,
                                   **common))

    lines = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) == {"step", "heldout_loss", "first_frame_psnr", "per_frame_psnr"}
        assert all(np.isfinite(v) for v in line.values())
    for step in (1, 2):
        folder = run / "validation" / f"step-{step:06d}"
        assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "heldout-00.gif", "heldout-01.gif",
                                                            "sample-00.gif"]
        assert PIL.Image.open(folder / "grid.png").size == (4 * 32, 3 * 32)  # frames across, videos down

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"train/loss", "train/lr", "validation/heldout_loss", "validation/first_frame_psnr",
            "validation/per_frame_psnr"} <= set(events.Tags()["scalars"])
    assert {"validation/grid", "validation/sample-00", "validation/heldout-01"} <= set(events.Tags()["images"])
    gif = events.Images("validation/sample-00")[0].encoded_image_string
    assert gif.startswith(b"GIF89a") and PIL.Image.open(io.BytesIO(gif)).n_frames == 4

    # Validating (sampling videos, which draws from torch's global RNG) leaves training exactly as it was.
    a = I2VGenXLUNet.from_pretrained(plain / "unet").state_dict()
    b = I2VGenXLUNet.from_pretrained(validated / "unet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
