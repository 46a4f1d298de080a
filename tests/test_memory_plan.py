"""scripts/memory_plan.py on a tiny config: its per-stage figures (fake tensors) against direct MemTracker
measurements of real tensors, and scripts/gpu_check.sh's CPU smoke mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import _memory_worker as worker  # noqa: E402
import memory_plan  # noqa: E402

CALL = dict(config="tiny", height=64, width=64, num_frames=4, num_inference_steps=2, guidance_scale=9.0,
            dtype="fp32", guidance="batched", decode_chunk_size=1, vae_tiling=False, forward_chunking=False)


@pytest.fixture(scope="module")
def fake():
    return worker.measure("ours", CALL, fake=True)


def test_stage_figures_equal_real_tensors(fake):
    # The plan runs the stages on fake tensors; the same stages on real tensors, tracked the same way, must hold
    # exactly the same bytes at every point (fake tensors have the real tensors' sizes).
    real = worker.measure("ours", CALL, fake=False)
    assert fake["params"] == real["params"]
    for stage in worker.STAGES:
        for key in ("peak", "params", "inputs", "activations"):
            assert fake["stages"][stage][key] == real["stages"][stage][key], (stage, key)
        assert fake["stages"][stage]["activations"] > 0, stage


def test_whole_call_peak_matches_a_tracked_pipeline_call(fake):
    # The plan's whole-call peak (largest stage, all models resident) against one real pipeline call under a
    # single MemTracker that sees everything. The call also holds what the plan leaves out of a stage: the small
    # tensors carried between stages (prompt tokens, image embedding and latents) and, during the step, the
    # CPU-side preprocessing is gone; so the direct peak may exceed the plan's by at most those carried bytes.
    result = fake
    planned = memory_plan.plan(result, offload=False)
    with torch.no_grad():
        torch.manual_seed(0)
        pipe = worker.build_pipeline("ours", "tiny", torch.float32)
        image = worker.make_input_image(64, 64)
        tracker = worker.PeakTracker()
        tracker.track_external(*pipe.models)
        with tracker:
            pipe(worker.PROMPT, image, height=64, width=64, num_frames=4, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="pt")
        direct = max(snap["Total"] for snap in tracker.get_tracker_snapshot("peak").values())
    step = result["stages"]["step"]
    carried = step["inputs"] + 4 * 77 * 32 * 4  # the step's inputs + prompt and negative tokens (float32)
    assert planned["call"]["peak"] <= direct <= planned["call"]["peak"] + carried, (planned["call"], direct)


def test_offload_keeps_one_model_resident(fake):
    params = fake["params"]
    on, off = memory_plan.plan(fake, offload=False), memory_plan.plan(fake, offload=True)
    assert on["step"]["peak"] - off["step"]["peak"] == params["text_encoder"] + params["image_encoder"] + params["vae"]


def test_gpu_check_smoke(tmp_path):
    # Ours only: no wheel folder is given, and the output says the reference was skipped.
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--steps",
                           "1", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reference: SKIPPED (no --ref-site / wheel folder given)" in proc.stdout
    assert "no offload: s per step (median)" in proc.stdout
    assert "max |frame difference| ours offload vs ours" in proc.stdout
    assert "ours, enable_fast_sampling (15 steps, cached): whole call" in proc.stdout
