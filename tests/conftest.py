"""Shared test setup and helpers (test modules import them from here, never from each other).

One intra-op thread: the parity tests run tiny tensors, where thread start-up dominates, and on a loaded
2-core machine two threads made the suite ~10x slower. Results are unaffected (float32 CPU kernels here
are deterministic for a given thread count and the tolerances hold for either count).
I2VGEN_TEST_THREADS=N runs the suite on N threads instead, to check that claim (tests/fixtures/README.md);
leave out tests/test_distributed.py then: its ranks are forked, and a child forked after OpenMP ran on
several threads can hang (GNU OpenMP's thread pool does not survive fork).
"""

import csv
import dataclasses
import inspect
import json
import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from i2vgen.loading import Config, ModelMixin
from i2vgen import I2VGenXLUNet  # the public class: the core one plus diffusers' aliases

torch.set_num_threads(int(os.environ.get("I2VGEN_TEST_THREADS", "1")))

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("I2VGEN_FIXTURES", Path(__file__).parent / "fixtures"))
DEMO_MODEL = ROOT / "weights" / "tiny-demo"
UNET_CASES = sorted(p.name for p in FIXTURES.glob("unet_*") if p.is_dir())

# Same maths in another batch size, order or chunking: only the summation order may differ. These tests run
# in float64, where that moves a frame value by ~1e-14: in float32 the UNet and VAE amplify it to up to 2e-5
# with the trained demo weights, as large as the mistakes the tests are there to catch.
SCHEDULING_ATOL = 1e-10


# ---- measures ----

def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 (a tensor-wide relative error)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def frame_atol(spread: float) -> float:
    """Allowed |ours - reference| per value of frames in [0, 1], given the reference's own spread on that call
    (its rerun with another thread count, recorded in the fixtures' info.json; guidance amplifies rounding, e.g.
    ~20x at scale 9): our float32 kernels sum in another order than the reference's, so three times that spread,
    and at least 2e-5 (~1/200 of an 8-bit level) where the spread happened to be tiny."""
    return max(3 * spread, 2e-5)


# ---- tiny models ----

def tiny_unet(cross_attention_dim: int = 8) -> I2VGenXLUNet:
    """A two-level UNet of a few thousand parameters (8 and 16 channels, one layer per block), in the RNG's
    current state."""
    return I2VGenXLUNet(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, norm_num_groups=4,
                        cross_attention_dim=cross_attention_dim, attention_head_dim=4)


def micro_pipeline(folder: Path) -> Path:
    """A whole pipeline of tiny untrained components (tiny_unet, a 4-channel VAE, 1-layer CLIP towers over the
    demo's word list), saved to folder/base; returns that folder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

    from i2vgen import I2VGenXLPipeline
    from i2vgen.models.vae import AutoencoderKL
    from i2vgen.pipelines.clip import CLIPImageProcessor
    from i2vgen.schedulers.ddim import DDIMScheduler
    from i2vgen.schedulers.base import RELEASED_SCHEDULER_CONFIG
    from i2vgen.training.demo import WORDS
    from i2vgen.training.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(folder / "tokenizer-files", WORDS, model_max_length=8)
    tower = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, projection_dim=8)
    vocab = len(json.loads((folder / "tokenizer-files" / "vocab.json").read_text()))
    torch.manual_seed(0)
    pipe = I2VGenXLPipeline(
        vae=AutoencoderKL(block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=2),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=vocab, max_position_embeddings=8, bos_token_id=vocab - 2,
                                                  eos_token_id=vocab - 1, pad_token_id=vocab - 1, **tower)),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer-files"),
        image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=16, patch_size=8, **tower)),
        feature_extractor=CLIPImageProcessor(crop_size={"height": 16, "width": 16}, size={"shortest_edge": 16}),
        unet=tiny_unet(), scheduler=DDIMScheduler(**RELEASED_SCHEDULER_CONFIG),
    )
    pipe.save_pretrained(folder / "base")
    return folder / "base"


# ---- clip folders (the training data tests) ----

def write_mp4(path: Path, num_frames: int, fps: int, size=(32, 32)) -> Path:
    """A clip whose frame k is a flat grey of level 8 k (so a decoded frame tells its index)."""
    import av  # the video extra, which the test extra installs

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "0"}
        for k in range(num_frames):
            frame = np.full((height, width, 3), 8 * k, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_metadata(folder: Path, rows: list[dict], name: str = "metadata.csv") -> None:
    if name.endswith(".csv"):
        with open(folder / name, "w", newline="") as f:
            writer = csv.DictWriter(f, sorted({k for row in rows for k in row}))
            writer.writeheader()
            writer.writerows(rows)
    else:
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))


def clip_folder(folder, n: int, fps=(8, 24)):
    """n clips of 6-10 frames at the given rates, one in three 48x32 (the rest 32x32), and metadata.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"clip{i:03d}.mp4"
        write_mp4(folder / name, 6 + i % 5, fps[i % len(fps)], size=(32, 32) if i % 3 else (48, 32))
        rows.append({"file_name": name, "text": "a red circle moving left" if i % 2 else "a blue square moving up"})
    write_metadata(folder, rows)
    return folder



@dataclasses.dataclass
class TinyConfig(Config):
    dim: int = 4
    hidden: tuple[int, ...] = (6, 3)


class Tiny(ModelMixin):
    """A two-Linear model with an integer buffer, for the loading tests."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else TinyConfig(**kwargs)
        self.inp = torch.nn.Linear(self.config.dim, self.config.hidden[0])
        self.out = torch.nn.Linear(*self.config.hidden)
        self.register_buffer("counts", torch.arange(3))  # persistent integer buffer: stays int64


# ---- the recorded UNet cases (tests/fixtures/unet_*) ----

def load_unet_case(name: str):
    folder = FIXTURES / name
    case = json.loads((folder / "case.json").read_text())
    return I2VGenXLUNet.from_pretrained(folder), load_file(folder / "io.safetensors"), case


def raw_inputs(io: dict) -> dict:
    keys = ("fps", "image_latents", "image_embeddings", "encoder_hidden_states")
    return {k: io[k] for k in keys}


def guidance_inputs(io: dict, image_latent_copies: int = 1) -> dict:
    """Raw inputs of a guidance-style batch: [the recorded rows..., the same rows with other context] -- the
    second group gets other text and CLIP-image tokens, and the same fps; the image latents are given
    `image_latent_copies` times (once: both groups share them)."""
    raw = raw_inputs(io)
    other = dict(raw, encoder_hidden_states=raw["encoder_hidden_states"].flip(1) * 0.5,
                 image_embeddings=-raw["image_embeddings"])
    stacked = {k: torch.cat([raw[k], other[k]]) for k in ("fps", "image_embeddings", "encoder_hidden_states")}
    return stacked | {"image_latents": torch.cat([raw["image_latents"]] * image_latent_copies)}


# ---- the demo pipeline ----

DEMO_CALL = dict(prompt="a red house", height=32, width=32, num_frames=3, num_inference_steps=2, output_type="np")


def run_demo(pipe, seed=0, **kwargs):
    """A short call on the landscape image: frames (B, F, H, W, 3), seeded as the recorded calls are."""
    torch.manual_seed(seed)
    return pipe(image=PIL.Image.open(ROOT / "assets" / "landscape.png"),
                generator=torch.Generator().manual_seed(seed), **(DEMO_CALL | kwargs)).frames


@pytest.fixture(scope="module")
def tiny_pipe64():
    """The demo pipeline in float64, for tests that two code paths compute the same maths."""
    from i2vgen import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(DEMO_MODEL).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def demo_pipe():
    """The embedded demo pipeline (float32), for the bad-input tests."""
    from i2vgen import I2VGenXLPipeline

    pipe = I2VGenXLPipeline.from_pretrained(DEMO_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_call(pipe, **kwargs):
    """A one-step 32x32, 2-frame call on a black image: frames as numpy; `kwargs` replace any argument."""
    args = dict(prompt="a red circle moving right", image=PIL.Image.new("RGB", (32, 32)), height=32, width=32,
                num_frames=2, num_inference_steps=1, output_type="np") | kwargs
    return pipe(**args).frames


# ---- diffusers' scheduler tests (v0.35.2, tests/schedulers/): their configs, samples and stand-in denoiser ----

# Each test class's get_scheduler_config (test_scheduler_{ddim,unipc,dpm_multi,euler}.py).
UPSTREAM_CONFIGS = {
    "DDIMScheduler": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                          clip_sample=True),
    "UniPCMultistepScheduler": dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                    solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min"),
    "DPMSolverMultistepScheduler": dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", solver_order=2,
        prediction_type="epsilon", thresholding=False, sample_max_value=1.0, algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=False, euler_at_final=False, lambda_min_clipped=-math.inf,
        variance_type=None, final_sigmas_type="sigma_min"),
    "EulerDiscreteScheduler": dict(num_train_timesteps=1100, beta_start=0.0001, beta_end=0.02, beta_schedule="linear"),
}


def ramp(shape=(4, 3, 8, 8), flip: bool = False) -> torch.Tensor:
    """Upstream's deterministic sample (flipped: its noise): 0, 1/n, 2/n, ... laid out with the batch axis last,
    then moved to the front."""
    n = math.prod(shape)
    values = torch.arange(n).flip(-1) if flip else torch.arange(n)
    return (values.reshape(*shape[1:], shape[0]) / n).movedim(-1, 0)


def toy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """Upstream's stand-in denoiser: sample * t / (t + 1), in the sample's dtype."""
    t = torch.as_tensor(t, dtype=sample.dtype)
    return sample * t / (t + 1)


def seeded(scheduler) -> dict:
    """A generator seeded 0 for the scheduler's step, if it takes one (upstream seeds before stochastic steps)."""
    return {"generator": torch.manual_seed(0)} if "generator" in inspect.signature(scheduler.step).parameters else {}


def toy_loop(scheduler, sample: torch.Tensor, timesteps=None) -> torch.Tensor:
    """Upstream's full loop over `timesteps` (default: the scheduler's): scale the input, denoise, step; a step that
    takes a generator gets one, seeded once. Scaling is the identity except for Euler, whose loop (upstream's) steps
    from the scaled sample."""
    extra = seeded(scheduler)  # one generator for the whole loop
    for t in scheduler.timesteps if timesteps is None else timesteps:
        sample = scheduler.scale_model_input(sample, t)
        sample = scheduler.step(toy_model(sample, t), t, sample, **extra).prev_sample
    return sample
