"""i2vgen.evaluation and `i2vgen eval` on videos whose answer is known (docs/evaluation.md).

Every expected value comes from the metric's definition applied to a constructed video (a static video, a known
translation, a colour ramp, features at known angles, Gaussians with known moments); the model-based metrics run
on tiny random transformers models built here, whose answers are known where the video makes them so (identical
frames have identical features).
"""

import csv
import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import DEMO_MODEL

from i2vgen.apps.cli import main
from i2vgen.evaluation import consistency, features, fvd, motion, temporal
from i2vgen.evaluation.fidelity import SSIM_C1, first_frame_psnr, per_frame_ssim, psnr, ssim
from i2vgen.video import export_to_gif

SIZE = 64


def texture(seed: int = 0, levels: int = 32) -> np.ndarray:
    """A smooth periodic grey texture (H, W, 3) in [0, 1] of `levels` 8-bit grey levels (so a GIF holds it exactly):
    random Fourier coefficients under a Gaussian envelope, so np.roll is an exact translation of it."""
    rng = np.random.default_rng(seed)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(SIZE) * SIZE, np.fft.fftfreq(SIZE) * SIZE))
    spectrum = (rng.standard_normal((SIZE, SIZE)) + 1j * rng.standard_normal((SIZE, SIZE))) * np.exp(-((k / 6) ** 2))
    gray = np.real(np.fft.ifft2(spectrum))
    gray = np.round((gray - gray.min()) / (gray.max() - gray.min()) * (levels - 1)) * (256 // levels) / 255
    return np.repeat(gray[..., None], 3, axis=-1)


def translated(shifts, image=None) -> np.ndarray:
    """Frame t is the texture rolled by shifts[t] = (dx, dy) pixels."""
    image = texture() if image is None else image
    return np.stack([np.roll(image, (dy, dx), axis=(0, 1)) for dx, dy in shifts])


STATIC = translated([(0, 0)] * 6)
MOVING = translated([(2 * t, t) for t in range(6)])  # (2, 1) px per frame, right and down
# Still for 4 frames, then 2 px right per frame. (A GIF of STATIC would hold one frame: Pillow merges identical
# frames into one of their summed duration, and with all frames merged nothing tells how many there were.)
STILL_THEN_MOVING = translated([(0, 0)] * 4 + [(2, 0), (4, 0)])


# fidelity ------------------------------------------------------------------------------------------------------

def test_psnr_of_a_known_error():
    image = texture()
    assert psnr(image * 0.8, image * 0.8 + 0.1) == pytest.approx(20.0, abs=1e-9)  # mse 0.01 -> 10 log10(100)
    assert psnr(image, image) == pytest.approx(120.0)  # the mse floor of 1e-12
    assert first_frame_psnr(STATIC, image) == pytest.approx(120.0)


def test_ssim_of_known_images():
    image = texture()
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    # Flat images: no variance nor covariance, so SSIM is the luminance term (2 a b + C1) / (a^2 + b^2 + C1).
    a, b = np.full((20, 20, 3), 0.2), np.full((20, 20, 3), 0.6)
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + SSIM_C1) / (0.2**2 + 0.6**2 + SSIM_C1), abs=1e-12)
    # An inverted texture: the structure term is -1 wherever the window has contrast.
    assert ssim(image, 1 - image) < 0
    assert per_frame_ssim(MOVING, MOVING) == pytest.approx([1.0] * 6, abs=1e-12)
    with pytest.raises(ValueError, match="one length"):
        per_frame_ssim(MOVING, MOVING[:3])


# temporal ------------------------------------------------------------------------------------------------------

def test_temporal_flickering():
    assert temporal.temporal_flickering(STATIC) == 1.0
    # Frames alternating between two flat greys 0.3 apart: VBench's (255 - MAE) / 255 with MAE = 0.3 x 255.
    flicker = np.stack([np.full((8, 8, 3), 0.2 + 0.3 * (t % 2)) for t in range(5)])
    assert temporal.temporal_flickering(flicker) == pytest.approx(0.7, abs=1e-12)


def test_colour_ramp_gives_its_drift():
    frames = np.zeros((8, 8, 8, 3)) + [0.5, 0.4, 0.0]
    frames[..., 2] = 0.1 + 0.05 * np.arange(8)[:, None, None]  # blue rises 0.05 per frame
    # window 2: mean blue of frames 6-7 minus that of frames 0-1 = 0.05 x 6 = 0.3
    assert temporal.colour_shift(frames, window=2) == pytest.approx([0.0, 0.0, 0.3], abs=1e-12)
    assert temporal.colour_drift(frames, window=2) == pytest.approx(0.3, abs=1e-12)
    assert temporal.colour_drift(STATIC) == 0.0
    with pytest.raises(ValueError, match="window"):
        temporal.colour_shift(frames, window=5)


# motion ----------------------------------------------------------------------------------------------------------

def test_static_video_has_no_motion():
    flow = motion.optical_flow(STATIC)
    assert flow.shape == (5, SIZE, SIZE, 2)
    # Farneback fits a regularised polynomial model per pixel, so identical frames leave a residual flow:
    # measured 0.0011 px mean on this texture; 0.01 px is a hundredth of a pixel.
    assert motion.motion_magnitude(flow) < 0.01
    assert motion.motion_acceleration(flow) < 0.01
    assert not motion.dynamic_degree(flow)


def test_known_translation_gives_known_flow():
    flow = motion.optical_flow(MOVING)
    # The texture is periodic and rolled by whole pixels, so the true flow is (2, 1) px at every pixel.
    # Farneback's estimate is a local least-squares fit: measured median error below 0.001 px, mean length
    # 2.2277 vs sqrt(5) = 2.2361 (0.4 % short, where the texture is flat); tolerances 0.01 px and 0.05 px.
    assert np.median(flow[..., 0]) == pytest.approx(2.0, abs=0.01)
    assert np.median(flow[..., 1]) == pytest.approx(1.0, abs=0.01)
    assert motion.motion_magnitude(flow) == pytest.approx(np.sqrt(5), abs=0.05)
    # Constant velocity: no acceleration (measured 0.012 px/frame^2; tolerance 0.05 as above).
    assert motion.motion_acceleration(flow) < 0.05
    # VBench's threshold at 64 px: 6 x 64 / 256 = 1.5 px, passed by all 5 pairs (round(4 x 6 / 16) = 2 needed).
    assert motion.dynamic_degree(flow)


def test_back_and_forth_motion_is_jerky():
    flow = motion.optical_flow(translated([(0, 0), (2, 0), (0, 0), (2, 0), (0, 0)]))
    # flow alternates (+2, 0) and (-2, 0) px: each change of flow is 4 px/frame^2 (tolerance as above).
    assert motion.motion_magnitude(flow) == pytest.approx(2.0, abs=0.05)
    assert motion.motion_acceleration(flow) == pytest.approx(4.0, abs=0.1)


def test_dynamic_degree_counts_moving_pairs():
    # 16 frames: round(4 x 16 / 16) = 4 moving pairs needed; 3 are not enough, 4 are.
    flow = np.zeros((15, 64, 64, 2))
    flow[:3, ..., 0] = 2.0
    assert not motion.dynamic_degree(flow)
    flow[3, ..., 0] = 2.0
    assert motion.dynamic_degree(flow)


# consistency over features -----------------------------------------------------------------------------------

def test_consistency_of_known_features():
    same = np.tile([[3.0, 4.0]], (5, 1))
    assert consistency.frame_consistency(same) == pytest.approx(1.0)
    # f1 orthogonal to f0, f2 = f1: pair 1 scores (0 + 0) / 2, pair 2 (1 + 0) / 2; mean 0.25.
    assert consistency.frame_consistency([[1, 0], [0, 1], [0, 1]]) == pytest.approx(0.25)
    # Opposite features count as 0, not -1 (VBench clips cosines at 0).
    assert consistency.frame_consistency([[1, 0], [-1, 0]]) == 0.0
    # I2V: cos to the image 1, 0.707, 0 -> max 1; consecutive cosines 0.707, 0.707.
    frames = [[1, 0], [1, 1], [0, 1]]
    assert consistency.i2v_consistency([1, 0], frames) == pytest.approx(0.4 + 0.6 * np.sqrt(0.5))
    assert consistency.mean_similarity(frames, [1, 0]) == pytest.approx((1 + np.sqrt(0.5)) / 3)


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 3))
    z = (z - z.mean(0)) / z.std(0, ddof=1)  # sample mean 0, sample variance 1 on each axis
    assert fvd.frechet_distance(z, z) == pytest.approx(0.0, abs=1e-9)
    # Same covariance, means 1 apart on each of 3 axes: |d|^2 = 3.
    assert fvd.frechet_distance(z, z + 1) == pytest.approx(3.0, abs=1e-9)
    # In 1-D: (m_a - m_b)^2 + (s_a - s_b)^2 = 9 + 1.
    assert fvd.frechet_distance(z[:, :1], 2 * z[:, :1] + 3) == pytest.approx(10.0, abs=1e-9)


# tiny models ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Folders holding tiny random CLIP (with the demo model's tokenizer), ViT and VideoMAE models."""
    from transformers import (AutoTokenizer, CLIPConfig, CLIPModel, VideoMAEConfig, VideoMAEModel, ViTConfig,
                              ViTModel)

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = dict(small, vocab_size=554, max_position_embeddings=16, bos_token_id=552, eos_token_id=553, pad_token_id=553)
    CLIPModel(CLIPConfig(text_config=text, vision_config=dict(small, image_size=32, patch_size=8),
                         projection_dim=8)).save_pretrained(root / "clip")
    AutoTokenizer.from_pretrained(DEMO_MODEL / "tokenizer").save_pretrained(root / "clip")
    ViTModel(ViTConfig(**small, image_size=32, patch_size=8)).save_pretrained(root / "dino")
    VideoMAEModel(VideoMAEConfig(**small, image_size=32, patch_size=8, num_frames=4, tubelet_size=2)).save_pretrained(
        root / "videomae")
    return root


def test_clip_text_similarity_is_clips_own_cosine(tiny_models):
    """Our CLIP features against the cosine inside CLIPModel's forward: logits_per_image / exp(logit_scale)."""
    model, tokenizer = features.load_model("clip", tiny_models / "clip")
    frames = MOVING[:3]
    ours = consistency.mean_similarity(features.clip_image_features(model, frames),
                                       features.clip_text_features(model, tokenizer, ["a red circle moving right"]))
    tokens = tokenizer(["a red circle moving right"], return_tensors="pt")
    pixels = features.pixel_values(frames, 32, features.CLIP_MEAN, features.CLIP_STD)
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    cosines = (out.logits_per_image[:, 0] / model.logit_scale.exp()).clamp(min=0)
    assert ours == pytest.approx(cosines.mean().item(), abs=1e-6)  # float32 features


def test_missing_model_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^--dino .*: no model there \(config.json missing\); expected"):
        features.load_model("dino", tmp_path)


# i2vgen eval -------------------------------------------------------------------------------------------------------

def write_gif(path, video):
    export_to_gif((video * 255).round().astype(np.uint8), path, fps=8)


@pytest.fixture
def folder(tmp_path):
    """A still-then-moving and a moving video, with their first frames, prompts and ground truths (the videos
    themselves)."""
    videos = tmp_path / "videos"
    (videos / "truth").mkdir(parents=True)
    rows = []
    for name, video in (("still", STILL_THEN_MOVING), ("moving", MOVING)):
        write_gif(videos / f"{name}.gif", video)
        write_gif(videos / "truth" / f"{name}.gif", video)
        PIL.Image.fromarray((video[0] * 255).round().astype(np.uint8)).save(videos / f"{name}.png")
        rows.append(f"{name}.gif,{name}.png,a grey texture,truth/{name}.gif")
    (videos / "metadata.csv").write_text("file_name,image,prompt,ground_truth\n" + "\n".join(rows) + "\n")
    return videos


def test_eval_a_folder(folder, capsys):
    assert main(["eval", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "temporal_flickering" in out and "skipped subject_consistency" in out and "skipped fvd" in out
    records = {r["video"]: r for r in json.loads((folder / "eval_videos.json").read_text())}
    still, moving = records["still.gif"], records["moving.gif"]
    # The GIF holds the frames exactly (32 grey levels; the merged still frames expanded again): the values are
    # those of the arrays, flicker from 4 zero differences and 2 of a 2 px shift, no colour change.
    assert still["frames"] == 6 and still["colour_drift"] == pytest.approx(0.0, abs=1e-12)
    assert still["temporal_flickering"] == pytest.approx(temporal.temporal_flickering(STILL_THEN_MOVING), abs=1e-12)
    assert still["motion_magnitude"] == pytest.approx(motion.motion_magnitude(motion.optical_flow(STILL_THEN_MOVING)))
    assert moving["motion_magnitude"] == pytest.approx(np.sqrt(5), abs=0.05) and moving["dynamic_degree"] == 1.0
    for record in records.values():  # 32 grey levels: the GIF holds the frames exactly
        assert record["first_frame_psnr"] == pytest.approx(120.0) and record["first_frame_ssim"] == pytest.approx(1.0)
        assert record["ground_truth_psnr"] == pytest.approx(120.0) and record["ground_truth_ssim"] == pytest.approx(1.0)
    summary = json.loads((folder / "eval_summary.json").read_text())
    assert summary["videos"] == 2
    assert summary["metrics"]["temporal_flickering"]["mean"] == pytest.approx(
        np.mean([still["temporal_flickering"], moving["temporal_flickering"]]))
    with (folder / "eval_videos.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["video"] for r in rows] == list(records) and float(rows[0]["frames"]) == 6
    assert not list(folder.glob(".*partial*"))


def test_eval_reads_a_job_file(tmp_path, capsys):
    """A job file's output folder: each job's "out" video gets its "image" and "prompt"."""
    out = tmp_path / "out"
    out.mkdir()
    write_gif(out / "a.gif", MOVING)
    PIL.Image.fromarray((MOVING[0] * 255).round().astype(np.uint8)).save(tmp_path / "a.png")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(tmp_path / "a.png"), "prompt": "a texture", "out": "a.gif"}) + "\n")
    assert main(["eval", str(out), "--jobs", str(jobs)]) == 0
    assert "skipped first_frame_psnr" not in capsys.readouterr().out
    record = json.loads((out / "eval_videos.json").read_text())[0]
    assert record["first_frame_psnr"] == pytest.approx(120.0)


def test_identical_folders_compare_equal(folder, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert main(["eval", str(folder)]) == 0 and main(["eval", str(copy), "--out", str(copy)]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(folder), str(copy)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.split()[0] in {"temporal_flickering", "motion_magnitude", "first_frame_psnr"}]
    assert len(table) == 3 and all(line.split()[-1] == "+0.0000" for line in table)


def test_model_metrics_of_identical_frames(tiny_models):
    """Identical frames, and an image equal to them, have identical features: every score is 1."""
    clip, _ = features.load_model("clip", tiny_models / "clip")
    dino, _ = features.load_model("dino", tiny_models / "dino")
    image = STATIC[:1]
    for extract in (lambda x: features.clip_image_features(clip, x), lambda x: features.dino_features(dino, x)):
        frames = extract(STATIC)
        assert consistency.frame_consistency(frames) == pytest.approx(1.0, abs=1e-6)  # float32 features
        assert consistency.i2v_consistency(extract(image), frames) == pytest.approx(1.0, abs=1e-6)
        assert consistency.mean_similarity(frames, extract(image)) == pytest.approx(1.0, abs=1e-6)
        assert consistency.frame_consistency(extract(MOVING)) < 1.0  # the features do see the motion


def test_eval_with_models(folder, tiny_models, capsys):
    args = ["eval", str(folder), "--clip", str(tiny_models / "clip"), "--dino", str(tiny_models / "dino"),
            "--videomae", str(tiny_models / "videomae"), "--real", str(folder)]
    assert main(args) == 0
    assert "skipped" not in capsys.readouterr().out  # every metric ran
    still = {r["video"]: r for r in json.loads((folder / "eval_videos.json").read_text())}["still.gif"]
    # The GIF holds the frames exactly, so the command's values are those of the arrays.
    clip, tokenizer = features.load_model("clip", tiny_models / "clip")
    dino, _ = features.load_model("dino", tiny_models / "dino")
    frames, image = features.clip_image_features(clip, STILL_THEN_MOVING), STILL_THEN_MOVING[:1]
    expected = {
        "background_consistency": consistency.frame_consistency(frames),
        "clip_image_similarity": consistency.mean_similarity(frames, features.clip_image_features(clip, image)),
        "clip_text_similarity": consistency.mean_similarity(
            frames, features.clip_text_features(clip, tokenizer, ["a grey texture"])),
        "subject_consistency": consistency.frame_consistency(features.dino_features(dino, STILL_THEN_MOVING)),
        "i2v_subject_consistency": consistency.i2v_consistency(
            features.dino_features(dino, image), features.dino_features(dino, STILL_THEN_MOVING)),
    }
    assert {name: still[name] for name in expected} == pytest.approx(expected, abs=1e-12)
    # The generated folder against itself as the real clips: equal feature sets, distance 0 (up to the float32
    # features' rounding through the covariance square roots).
    fvd_value = json.loads((folder / "eval_summary.json").read_text())["metrics"]["fvd"]["mean"]
    assert fvd_value == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("setup, args, message", [
    (None, ["eval", "{tmp}/nowhere"], "FOLDER is not a folder of videos: "),
    ("empty", ["eval", "{tmp}/videos"], "no .gif or .mp4 videos in "),
    ("bad_column", ["eval", "{tmp}/videos"], "metadata.csv: columns must be file_name and any of image, prompt"),
    ("missing_video", ["eval", "{tmp}/videos"], "metadata.csv line 2: no video 'gone.gif'"),
    ("broken_video", ["eval", "{tmp}/videos"], "video: cannot read video "),
    ("missing_image", ["eval", "{tmp}/videos"], "image not found: "),
    ("static_gif", ["eval", "{tmp}/videos"], "a.gif has 1 frame; the metrics need at least 2"),
    ("video", ["eval", "{tmp}/videos", "--clip", "{tmp}"], "--clip "),
    ("video", ["eval", "--compare", "{tmp}/videos", "{tmp}/videos"], "--compare: no eval_summary.json in "),
    ("video", ["eval"], "give FOLDER (a folder of videos) or --compare A B"),
])
def test_bad_input_is_one_line(tmp_path, capsys, setup, args, message):
    videos = tmp_path / "videos"
    videos.mkdir()
    if setup not in (None, "empty", "broken_video"):
        write_gif(videos / "a.gif", STATIC if setup == "static_gif" else MOVING)
    metadata = {"bad_column": "file_name,caption\na.gif,x\n", "missing_video": "file_name\ngone.gif\n",
                "missing_image": "file_name,image\na.gif,nothing.png\n"}
    if setup in metadata:
        (videos / "metadata.csv").write_text(metadata[setup])
    if setup == "broken_video":
        (videos / "a.mp4").write_text("not a video")
    assert main([arg.format(tmp=tmp_path) for arg in args]) != 0
    err = capsys.readouterr().err
    assert err.startswith("i2vgen eval: error: ") and message in err and err.count("\n") == 1, err
