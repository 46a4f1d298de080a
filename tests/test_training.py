"""Training: synthetic data, tokenizer, objective, EMA, checkpoint resume.

Expected values here come from the data's definition (issue 5) and from the math of each piece, not from
running our own code; the end-to-end resume test compares two runs of the loop with each other.
"""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPTokenizer

from conftest import micro_pipeline, tiny_unet

from i2vgen.pipelines.clip import encode_text
from i2vgen.models.unet import I2VGenXLUNet, image_latents_from
from i2vgen.pipeline import I2VGenXLPipeline
from i2vgen.schedulers.ddim import DDIMScheduler
from i2vgen.training.config import TrainConfig
from i2vgen.training.data import (BASE_COLORS, DIRECTIONS, SHAPES, SyntheticMotion, is_heldout, render_clip,
                                  sample_spec)
from i2vgen.schedulers.base import RELEASED_SCHEDULER_CONFIG
from i2vgen.training.demo import MAX_TOKENS, WORDS, clip_encoders, export, pretrain_text_encoder
from i2vgen.training.tokenizer import write_clip_tokenizer
from i2vgen.training.train import EMA, offset_noise, sample_timesteps, train, v_prediction_loss


# ---- data ----

def _centroid(frame: np.ndarray, background: int) -> np.ndarray:
    ys, xs = np.nonzero((frame != background).any(-1))
    return np.array([xs.mean(), ys.mean()])


def test_clips_match_the_specification():
    rng = np.random.default_rng(0)
    for _ in range(40):
        spec = sample_spec(rng)
        clip = render_clip(spec)
        assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
        assert 0 <= spec.background <= 50 and 5 <= spec.radius <= 9 and 2 <= spec.speed <= 4
        assert spec.shape in SHAPES
        assert np.abs(np.subtract(spec.rgb, BASE_COLORS[spec.color])).max() <= 20
        assert spec.caption == f"a {spec.color} {spec.shape} moving {spec.direction}"
        # Two colours only: background grey and the object's colour.
        assert {tuple(p) for p in np.unique(clip.reshape(-1, 3), axis=0)} == {(spec.background,) * 3, spec.rgb}
        # The whole object is inside every frame: its area never shrinks.
        areas = [(f != spec.background).any(-1).sum() for f in clip]
        assert len(set(areas)) == 1
        # It moves `speed` pixels per frame in the caption's direction, nothing across.
        steps = np.diff([_centroid(f, spec.background) for f in clip], axis=0)
        np.testing.assert_allclose(steps, np.tile(np.multiply(DIRECTIONS[spec.direction], spec.speed), (7, 1)))


def test_sampling_is_seeded_and_covers_every_caption():
    a = [sample_spec(np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(1)
    captions = {sample_spec(rng).caption for _ in range(600)}
    assert len(captions) == len(BASE_COLORS) * len(SHAPES) * len(DIRECTIONS)


def test_eval_split_is_disjoint_from_training():
    rng = np.random.default_rng(0)
    train_keys = {(s.start, s.rgb) for s in (sample_spec(rng, "train") for _ in range(2000))}
    eval_specs = [sample_spec(rng, "eval", direction=d) for d in DIRECTIONS for _ in range(25)]
    assert all(is_heldout(s) for s in eval_specs)
    assert not train_keys & {(s.start, s.rgb) for s in eval_specs}
    assert [s.direction for s in eval_specs] == [d for d in DIRECTIONS for _ in range(25)]


def test_dataset_yields_vae_ready_videos():
    video, caption, first = next(iter(SyntheticMotion(seed=0)))
    assert video.shape == (3, 8, 64, 64) and video.min() >= -1 and video.max() <= 1
    np.testing.assert_allclose((video[:, 0].permute(1, 2, 0).numpy() + 1) * 127.5, first, atol=1e-4)
    assert caption.startswith("a ")


def test_tokenizer_gives_each_word_one_distinct_token(tmp_path):
    write_clip_tokenizer(tmp_path, WORDS, model_max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    ids = [tokenizer(word).input_ids for word in WORDS]
    assert all(len(i) == 3 for i in ids)  # BOS, the word, EOS
    assert len({i[1] for i in ids}) == len(WORDS)
    assert len(tokenizer("a zebra").input_ids) > 3  # unknown words still tokenize, byte by byte


def test_text_pretraining_spreads_the_caption_over_the_padding_tokens(tmp_path):
    write_clip_tokenizer(tmp_path, WORDS, model_max_length=MAX_TOKENS)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    torch.manual_seed(0)
    text_encoder, _ = clip_encoders(len(json.loads((tmp_path / "vocab.json").read_text())))
    ids = tokenizer(["a red circle moving left", "a red circle moving right"], padding="max_length",
                    max_length=MAX_TOKENS, return_tensors="pt").input_ids

    def padding_gap():  # how far apart the two captions' EOS/padding tokens are, relative to their norm
        with torch.no_grad():
            tokens = encode_text(text_encoder, ids, clip_skip=1)[:, 6:]
        return ((tokens[0] - tokens[1]).norm(dim=-1) / tokens[0].norm(dim=-1)).mean().item()

    before = padding_gap()
    losses = pretrain_text_encoder(text_encoder, tokenizer)
    assert losses[-1] < 0.1 * losses[0]
    after = padding_gap()
    assert after > 3 * before  # measured: ~0.27 before, ~1.0 after (unrelated unit vectors: sqrt 2)


# ---- objective ----

def test_offset_noise_shifts_each_frame_by_a_constant():
    g = torch.Generator().manual_seed(0)
    noise = offset_noise((64, 4, 8, 16, 16), 0.1, g)
    # Per-frame means: variance 1/256 from the white noise plus 0.1^2 from the offset.
    var = noise.mean(dim=(-1, -2)).var().item()
    assert abs(var - (1 / 256 + 0.01)) < 0.1 * (1 / 256 + 0.01)  # 2048 frame means: ~3% sampling error
    assert abs(noise.var().item() - 1.01) < 0.02  # 0.5 M samples: ~0.3% sampling error


def test_image_latents_follow_the_pipeline_layout():
    first = torch.randn(2, 4, 8, 8)
    latents = image_latents_from(first, 8)
    assert latents.shape == (2, 4, 8, 8, 8)
    assert torch.equal(latents[:, :, 0], first)
    for k in range(1, 8):
        assert torch.all(latents[:, :, k] == k / 7)


def test_loss_is_the_velocity_mse_and_decreases():
    torch.manual_seed(0)
    unet, scheduler = tiny_unet(), DDIMScheduler(**RELEASED_SCHEDULER_CONFIG)
    x0 = torch.randn(2, 4, 3, 8, 8)
    conditions = dict(fps=torch.tensor([16, 16]), image_latents=image_latents_from(x0[:, :, 0], 3),
                      image_embeddings=torch.randn(2, 1, 8), encoder_hidden_states=torch.randn(2, 5, 8))

    # The target is v = sqrt(abar) eps - sqrt(1 - abar) x0 at the drawn t (Salimans & Ho 2022, section 4).
    g = torch.Generator().manual_seed(1)
    loss = v_prediction_loss(unet, scheduler, x0, conditions, 0.1, g)
    g = torch.Generator().manual_seed(1)
    noise = offset_noise(x0.shape, 0.1, g)
    t = torch.randint(1000, (2,), generator=g)
    abar = scheduler.alphas_cumprod[t].view(2, 1, 1, 1, 1)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    with torch.no_grad():
        pred = unet(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t, **conditions).sample
    torch.testing.assert_close(loss.detach(), (pred - v).pow(2).mean(), rtol=1e-5, atol=1e-6)  # float32 rounding

    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = v_prediction_loss(unet, scheduler, x0, conditions, 0.1, torch.Generator().manual_seed(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_timestep_sampling_is_uniform_unless_high_noise_is_asked_for():
    # Fraction 0 draws exactly what torch.randint(T) draws (VGen's uniform sampling).
    plain = torch.randint(1000, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_timesteps(64, 1000, torch.Generator().manual_seed(3)), plain)
    # Fraction 1: every row comes from [min, T); fraction 0.5: about half of a large batch does.
    high = sample_timesteps(4096, 1000, torch.Generator().manual_seed(3), 1.0, 900)
    assert high.min() >= 900 and high.max() <= 999 and len(high.unique()) == 100
    mixed = sample_timesteps(4096, 1000, torch.Generator().manual_seed(3), 0.5, 900)
    # P(t >= 900) = 0.5 + 0.5 * 0.1 = 0.55; 4096 draws: standard error 0.008, so +-0.04 is 5 sigma.
    assert abs((mixed >= 900).float().mean().item() - 0.55) < 0.04
    with pytest.raises(ValueError, match="high_noise_min_timestep"):
        sample_timesteps(4, 1000, torch.Generator(), 0.5, 1000)


@pytest.mark.parametrize("granularity", ["block", "layer"])
@pytest.mark.parametrize("with_lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(with_lora, granularity):
    torch.manual_seed(0)
    unet, scheduler = tiny_unet(), DDIMScheduler(**RELEASED_SCHEDULER_CONFIG)
    if with_lora:  # only the adapter trains; its B made non-zero (at zero, A gets no gradient)
        from i2vgen import lora  # needs peft: the `lora` extra, which the `test` extra installs
        lora.add_adapter(unet, lora.LoraSettings(rank=2, dropout=0.1))
        for layer in lora.lora_layers(unet):
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    x0 = torch.randn(1, 4, 2, 8, 8)
    conditions = dict(fps=torch.tensor([16]), image_latents=image_latents_from(x0[:, :, 0], 2),
                      image_embeddings=torch.randn(1, 1, 8), encoder_hidden_states=torch.randn(1, 5, 8))
    grads = []
    for checkpointed in (False, True):
        if checkpointed:
            unet.enable_gradient_checkpointing(granularity=granularity)
        unet.zero_grad()
        torch.manual_seed(1)  # the same dropout masks (the adapter's too)
        v_prediction_loss(unet, scheduler, x0, conditions, 0.1, torch.Generator().manual_seed(0)).backward()
        grads.append([p.grad.clone() for p in unet.parameters() if p.requires_grad])
    assert len(grads[1]) == (2 * len(lora.lora_layers(unet)) if with_lora else len(list(unet.parameters())))
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed, rtol=1e-5, atol=1e-7)  # same ops; float32 rounding only


def test_ema_update_math():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    assert ema.decay_at(0) == pytest.approx(1 / 10) and ema.decay_at(1000) == 0.9
    before = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1000)
    torch.testing.assert_close(ema.model.weight, 0.9 * before + 0.1 * model.weight.detach())
    assert not any(p.requires_grad for p in ema.model.parameters())


# ---- the loop: checkpoints resume exactly ----

def test_checkpoints_resume_bit_for_bit(tmp_path):
    base = micro_pipeline(tmp_path)
    common = dict(model=str(base), num_clips=2, batch_size=1, gradient_accumulation_steps=2, max_steps=3,
                  checkpoint_every=1, keep_checkpoints=1, lr_warmup_steps=1, learning_rate=1e-3, ema_decay=0.5)
    straight = train(TrainConfig(output_dir=str(tmp_path / "a"), **common))
    assert train(TrainConfig(output_dir=str(tmp_path / "b"), **common), until=2) is None
    assert [p.name for p in (tmp_path / "b").glob("checkpoint-*")] == ["checkpoint-000002"]
    resumed = train(TrainConfig(output_dir=str(tmp_path / "b"), **common))
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-000003"]

    a = I2VGenXLUNet.from_pretrained(straight / "unet").state_dict()
    b = I2VGenXLUNet.from_pretrained(resumed / "unet").state_dict()
    start = I2VGenXLUNet.from_pretrained(base / "unet").state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # it trained
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)  # same ops, same order, same numbers
    # The last checkpoint's EMA, read in this process alone, is the exported (EMA) UNet.
    export(tmp_path / "b", tmp_path / "from-checkpoint", tmp_path / "b" / "checkpoint-000003")
    c = I2VGenXLUNet.from_pretrained(tmp_path / "from-checkpoint" / "unet").state_dict()
    assert all(torch.equal(b[key], c[key]) for key in b)

    # The exported folder is a complete pipeline that runs.
    pipe = I2VGenXLPipeline.from_pretrained(resumed)
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.fromarray(render_clip(sample_spec(np.random.default_rng(0), "eval"))[0])
    frames = pipe("a red circle moving left", image, height=64, width=64, num_frames=2, num_inference_steps=1,
                  output_type="np").frames
    assert np.asarray(frames).shape == (1, 2, 64, 64, 3)


def test_demo_recipe_configs_chain_as_the_script_runs_them():
    # scripts/train_demo.sh: stage 1 is exported at step 2000 to the folder stage 2 starts from; stage 3
    # starts from stage 2's finished pipeline. Every stage trains on the same clips (the script copies the pool).
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    stages = [TrainConfig.from_json(scripts / f"train_demo_stage{i}.json") for i in (1, 2, 3)]
    script = (scripts / "train_demo.sh").read_text()
    assert "--until 2000" in script and stages[0].max_steps > 2000
    assert stages[1].model == f"{stages[0].output_dir}/pipeline-002000" and f"--out $RUNS/stage1/pipeline-002000" in script
    assert stages[2].model == f"{stages[1].output_dir}/pipeline"
    for field in ("seed", "num_clips", "num_frames", "resolution", "fps", "num_threads"):
        assert len({getattr(stage, field) for stage in stages}) == 1, field
    assert [stage.high_noise_fraction for stage in stages] == [0.5, 0.9, 0.5]
