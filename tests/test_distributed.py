"""Scale-out (i2vgen/distributed.py, i2vgen/apps/jobs.py): the videos of N processes are the videos of one.

Processes are wired as torchrun wires them (RANK, WORLD_SIZE, MASTER_ADDR/PORT; gloo on the CPU): once through
torchrun itself (`torchrun -m i2vgen`), otherwise forked from this process with torch.multiprocessing, which
skips the seconds of imports per process. Every process computes with one thread, as this one does
(conftest.py), so single-process and multi-process frames are computed by the same kernels: the files are
compared byte for byte. The embedded tiny model at 32x32, 3 frames, 2 steps keeps a video at ~0.2 s.
"""

import contextlib
import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.multiprocessing as mp

from i2vgen.apps.cli import build_parser, main, model_options, video_request
from i2vgen.apps.render import EMBEDDED_MODEL, load_pipeline, read_image, render, save_video
from i2vgen.distributed import cfg_pairs, process_group
from i2vgen.pipeline import I2VGenXLPipeline

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "landscape.png"
DEFAULTS = ["--image", str(IMAGE), "--steps", "2", "--frames", "3", "--height", "32", "--width", "32"]
JOBS = [  # guided and unguided, eta > 0 (noise from the generator each step), other lengths, a subfolder
    {"prompt": "a red circle moving right", "seed": 1, "out": "a.gif"},
    {"prompt": "a blue square moving up", "seed": 2, "negative-prompt": "blurry", "out": "b.gif"},
    {"prompt": "a green triangle moving left", "seed": 3, "guidance": 1.0, "out": "sub/c.gif"},
    {"prompt": "a red square moving down", "seed": 4, "eta": 0.5, "out": "d.gif"},
    {"prompt": "a blue circle moving right", "seed": 5, "frames": 4, "guidance": 6.0, "out": "e.gif"},
    {"prompt": "a yellow circle moving up", "seed": 6, "steps": 3, "out": "f.gif"},
]
MISSING = {"prompt": "a red circle moving right", "image": "no/such/image.png", "seed": 7, "out": "g.gif"}


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def job_argv(job: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in job.items() if key != "out"]


def videos(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "failures.jsonl"}


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Path:
    """Each job run alone by a single-process `i2vgen generate`."""
    folder = tmp_path_factory.mktemp("single")
    (folder / "sub").mkdir()
    for job in JOBS:
        assert main(["generate", *DEFAULTS, *job_argv(job), "--out", str(folder / job["out"])]) == 0
    return folder


@pytest.fixture(scope="module")
def sequential_references(tmp_path_factory) -> Path:
    """The guided jobs with the guidance halves as two passes, as a CFG-parallel pair computes them (one
    pass of batch 2 sums in another order: ~7e-6 apart in float32, see test_cfg_parallel_api)."""
    folder = tmp_path_factory.mktemp("sequential")
    pipe = None
    for job in JOBS:
        args = build_parser().parse_args(["generate", *DEFAULTS, *job_argv(job), "--out", str(folder / job["out"])])
        request = video_request(args)
        pipe = pipe or load_pipeline(model_options(args), verbose=False)
        pipe.enable_sequential_guidance()
        request.out.parent.mkdir(exist_ok=True)
        save_video(render(pipe, request, read_image(request.image), request.seed), request)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child(rank, world_size, port, logs, target, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with open(logs / f"rank{rank}.log", "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), process_group() as launch:
        target(launch, *args)


def fork(world_size: int, logs: Path, target, *args):
    """target(launch, *args) on `world_size` forked processes in one process group; their output goes to
    logs/rank{r}.log. Raises if a process fails (after stopping the others, as torchrun does)."""
    mp.start_processes(_child, args=(world_size, free_port(), logs, target, args), nprocs=world_size,
                       start_method="fork")


def test_torchrun_two_ranks_render_the_single_process_videos(tmp_path, references):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [*JOBS, MISSING])
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "i2vgen", "generate",
         "--jobs", str(jobs), "--out-dir", str(out), *DEFAULTS],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread, as this process (whatever the caller exported)
    assert result.returncode == 1 and videos(out) == videos(references), result.stderr[-3000:]
    assert "i2vgen: 6 done, 0 skipped, 1 failed" in result.stdout
    assert "failed: line 7 (g.gif): image not found: no/such/image.png" in result.stdout
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures == [{"line": 7, "out": "g.gif", "reason": "image not found: no/such/image.png", "job": MISSING}]

    # A rerun after deleting two videos renders those two and skips the rest (one process this time).
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.gif")}
    (out / "b.gif").unlink()
    (out / "sub" / "c.gif").unlink()
    code, printed = run_in_process(tmp_path, "--jobs", str(jobs), "--out-dir", str(out), *DEFAULTS)
    assert code == 1 and "i2vgen: 2 done, 4 skipped, 1 failed" in printed
    assert videos(out) == videos(references)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.name not in ("b.gif", "c.gif"))


def run_in_process(cwd: Path, *args) -> tuple[int, str]:
    """main() in this process; the exit status and what it printed (stdout, then stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["generate", *args])
    return code, out.getvalue() + err.getvalue()


def _plain_and_cfg_parallel(launch, tmp_path):
    jobs = str(tmp_path / "jobs.jsonl")
    main(["generate", "--jobs", jobs, "--out-dir", str(tmp_path / "plain"), *DEFAULTS])
    main(["generate", "--jobs", jobs, "--out-dir", str(tmp_path / "cfg"), "--cfg-parallel", *DEFAULTS])
    # The Python API: a pair per two processes, every process ends with the whole video.
    pipe = I2VGenXLPipeline.from_pretrained(EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cfg_parallel(cfg_pairs(launch))
    for dtype in (torch.float32, torch.float64):
        frames = cfg_call(pipe.to(dtype))
        np.save(tmp_path / f"api_{launch.rank}_{str(dtype)[6:]}.npy", frames)


def cfg_call(pipe) -> np.ndarray:
    return pipe(prompt="a red circle moving right", image=PIL.Image.open(IMAGE), height=32, width=32,
                num_frames=3, num_inference_steps=3, negative_prompt="blurry", eta=0.5,
                generator=torch.manual_seed(5), output_type="np").frames[0]


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> Path:
    """4 processes: the job file plainly sharded, then CFG-parallel (2 pairs), then the Python API."""
    folder = tmp_path_factory.mktemp("four")
    write_jobs(folder / "jobs.jsonl", JOBS)
    fork(4, folder, _plain_and_cfg_parallel, folder)
    return folder


def test_four_ranks_render_the_single_process_videos(four_ranks, references):
    assert videos(four_ranks / "plain") == videos(references)
    assert "i2vgen: 6 done, 0 skipped, 0 failed" in (four_ranks / "rank0.log").read_text()


def test_cfg_parallel_jobs_are_the_single_process_videos(four_ranks, sequential_references, references):
    # guided jobs: as one process computes them with the halves in two passes; the unguided job (c) was
    # rendered by one process alone, after a warning.
    assert videos(four_ranks / "cfg") == videos(sequential_references)
    assert (four_ranks / "cfg" / "sub" / "c.gif").read_bytes() == (references / "sub" / "c.gif").read_bytes()
    log = (four_ranks / "rank0.log").read_text()
    assert "--cfg-parallel: 1 job(s) have guidance <= 1" in log and "line 3 (sub/c.gif)" in log


def test_cfg_parallel_api(four_ranks):
    pipe = I2VGenXLPipeline.from_pretrained(EMBEDDED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    batched32 = cfg_call(pipe)
    batched64 = cfg_call(pipe.to(torch.float64))
    pipe.to(torch.float32).enable_sequential_guidance()
    sequential32 = cfg_call(pipe)
    for rank in range(4):
        api32 = np.load(four_ranks / f"api_{rank}_float32.npy")
        api64 = np.load(four_ranks / f"api_{rank}_float64.npy")
        # float32: the same passes as one process with sequential guidance (measured: 0.0, bit-identical).
        np.testing.assert_allclose(api32, sequential32, rtol=0, atol=1e-6)
        # One process's default batches both halves in one pass, which sums in another order (measured in
        # float32: 6.7e-6, the gap of sequential vs batched in one process). In float64 that order moves a
        # value by ~1e-14 (tests/test_pipeline.py, SCHEDULING_ATOL), below the float32 the frames come back in
        # (measured: 0.0); 1e-10 catches any real error.
        np.testing.assert_allclose(api64, batched64, rtol=0, atol=1e-10)
        # and in float32 no more than that gap: measured 8.0e-6 / 1.8e-5 on 1 / 2 threads with AVX2 kernels,
        # 2.3e-5 / 1.2e-5 with torch's scalar ones (ATEN_CPU_CAPABILITY=default); 5e-5 is about twice the largest.
        assert np.abs(api32 - batched32).max() <= 5e-5


def _dies_in_its_second_video(launch, jobs, out):
    if launch.rank == 1:  # rank 1 renders b, d, f: 2 denoising steps each, so its third step starts d
        calls, step = itertools.count(), I2VGenXLPipeline._step

        def dying_step(self, *args, **kwargs):
            if next(calls) == 2:
                os._exit(9)
            return step(self, *args, **kwargs)

        I2VGenXLPipeline._step = dying_step
    main(["generate", "--jobs", str(jobs), "--out-dir", str(out), *DEFAULTS])


def test_a_rank_that_dies_leaves_no_partial_video_and_the_rerun_completes(tmp_path, references):
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", JOBS), tmp_path / "out"
    with pytest.raises(mp.ProcessExitedException):
        fork(2, tmp_path, _dies_in_its_second_video, jobs, out)
    left = videos(out)
    assert "b.gif" in left and not {"d.gif", "f.gif"} & set(left)
    assert left == {name: data for name, data in videos(references).items() if name in left}  # no partial file
    code, printed = run_in_process(tmp_path, "--jobs", str(jobs), "--out-dir", str(out), *DEFAULTS)
    assert code == 0 and f"i2vgen: {6 - len(left)} done, {len(left)} skipped, 0 failed" in printed
    assert videos(out) == videos(references)
    code, printed = run_in_process(tmp_path, "--jobs", str(jobs), "--out-dir", str(out), *DEFAULTS)
    assert code == 0 and "i2vgen: 0 done, 6 skipped, 0 failed" in printed and "Model:" not in printed  # no load


def _one_video(launch, out):
    main(["generate", *DEFAULTS, *job_argv(JOBS[1]), "--out", str(out), "--cfg-parallel"])


def test_one_video_with_cfg_parallel(tmp_path, sequential_references):
    fork(2, tmp_path, _one_video, tmp_path / "b.gif")
    assert (tmp_path / "b.gif").read_bytes() == (sequential_references / "b.gif").read_bytes()
    assert "CFG-parallel on 2 processes" in (tmp_path / "rank0.log").read_text()
    assert (tmp_path / "rank1.log").read_text() == ""  # the partner computes and stays quiet


def test_a_job_that_would_run_for_days_fails_alone(tmp_path):
    """Estimated before the model loads (apps/estimate.py): the 100000-frame job is refused with the estimate and the
    limit; the small one is made; with "force" the big one would start (not run here)."""
    write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "p", "frames": 100000, "out": "long.gif"},
                                         {"prompt": "p", "seed": 1, "out": "short.gif"}])
    code, printed = run_in_process(tmp_path, "--jobs", "jobs.jsonl", "--out-dir", "out", *DEFAULTS)
    assert code == 1 and "i2vgen: 1 done, 0 skipped, 1 failed" in printed
    assert re.search(r"^Estimate: at least [\d.e-]+ s of computing for 1 video\(s\) on cpu, shared by 1 process\(es\)$",
                     printed, re.M)
    assert printed.index("Estimate:") < printed.index("Model:")
    [failure] = map(json.loads, (tmp_path / "out" / "failures.jsonl").open())
    assert failure["line"] == 1 and re.fullmatch(
        r"--height 32, --width 32, --frames 100000, --steps 2 would take at least [\d.]+ (h|days) on cpu \([\d.]+ "
        r"[TP]FLOP at [\d.]+ GFLOP/s\), over the limit of 1 h; lower them, or pass --force to run anyway",
        failure["reason"]), failure["reason"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["failures.jsonl", "short.gif"]


def test_bad_jobs_fail_alone_with_one_line_reasons(tmp_path):
    lines = ['{"prompt": "p", "colour": "red", "out": "a.gif"}',
             '{"prompt": "p", "model": "elsewhere", "out": "b.gif"}',
             '{"prompt": "p", "steps": "many", "out": "c.gif"}',
             '{"prompt": "p", "seed": 1}',
             '{"prompt": "p", "out": "../d.gif"}',
             'not json',
             '',
             '["a", "list"]',
             '{"prompt": "p", "seed": 1, "out": "e.gif"}',
             '{"prompt": "p", "height": 30, "out": "f.gif"}',
             '{"prompt": "q", "out": "e.gif"}',
             '{"prompt": "p", "out": null}',
             '{"prompt": "p", "out": "g.gif"}']
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    code, printed = run_in_process(tmp_path, "--jobs", "jobs.jsonl", "--out-dir", "out", *DEFAULTS)
    assert code == 1 and "i2vgen: 2 done, 0 skipped, 10 failed" in printed
    reasons = {f["line"]: f["reason"] for f in map(json.loads, (tmp_path / "out" / "failures.jsonl").open())}
    assert reasons.pop(10).startswith("--height")  # generate's own check (cli.check_args), its wording
    assert reasons == {
        1: 'unknown key "colour" (the keys are generate\'s long options without the dashes)',
        2: '"model" is set once for the whole run, on the command line',
        3: "argument --steps: invalid int value: 'many'",
        4: 'no "out": each job names its video, a path relative to --out-dir',
        5: '"out" must be a path inside --out-dir, got ../d.gif',
        6: "not a JSON object: Expecting value: line 1 column 1 (char 0)",
        8: 'a job is a JSON object {...}, got ["a", "list"]',
        11: '"out" e.gif is also line 9\'s',
        12: 'no "out": each job names its video, a path relative to --out-dir',
    }
    assert all(f"failed: line {line}" in printed for line in [*reasons, 10])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["e.gif", "failures.jsonl", "g.gif"]
    seed = int(printed.split("line 13 (g.gif): seed ")[1].split()[0])  # a job without a seed: drawn, printed
    assert main(["generate", *DEFAULTS, "--prompt", "p", "--seed", str(seed), "--out", str(tmp_path / "g.gif")]) == 0
    assert (tmp_path / "g.gif").read_bytes() == (tmp_path / "out" / "g.gif").read_bytes()
    code, printed = run_in_process(tmp_path, "--jobs", "jobs.jsonl", "--out-dir", "out", "--out", "x.gif")
    assert code == 2
