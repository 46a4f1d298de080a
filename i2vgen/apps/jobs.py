"""`i2vgen generate --jobs jobs.jsonl --out-dir DIR`: a list of videos on one process, or on many (torchrun).

The job file has one JSON object a line whose keys are generate's long options without the dashes:
{"image": "a.png", "prompt": "a red circle moving right", "seed": 3, "out": "a.gif"}. What a job leaves out
comes from the command line; "out" is required and relative to DIR. Every process renders its share
(i2vgen.distributed) and writes each video through a temporary file renamed into place, and rank 0 prints a
summary. A video already in DIR is skipped, so a rerun after a crash or a preemption renders only the missing
ones. A bad job (a missing image, an unknown key, a video that would take over an hour or not fit: estimate.py)
fails alone: its one-line reason goes to the summary and to DIR/failures.jsonl, and the others go on.
"""

import dataclasses
import json
import random
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from i2vgen.apps.estimate import ModelShape, check_estimate, duration, estimate
from i2vgen.apps.render import ModelOptions, UsageError, VideoRequest, load_pipeline, read_image, render, save_video
from i2vgen.distributed import CFGParallel, Launch, cfg_pairs, process_group, shard
from i2vgen.video import _atomic_path, exit_on_sigterm

# Set once for the run on the command line: each process loads one pipeline and plays one part.
RUN_WIDE = {"model", "variant", "dtype", "device", "lora", "jobs", "out_dir", "cfg_parallel"}
# Errors of a job's input. In a CFG-parallel pair both processes meet them alike (same job, same checks), so
# the pair can fail that job and go on together; any other error stops the run (a rerun resumes it).
BAD_INPUT = (UsageError, ValueError, TypeError, OSError)
FAILURES = "failures.jsonl"
FIELD_TYPES = {name: list if typing.get_origin(hint) is list else
               next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
               for name, hint in typing.get_type_hints(VideoRequest).items()}  # int | None -> int; list[str] -> list


@dataclass
class Job:
    line: int  # 1-based line of the job file
    spec: dict | str  # the JSON object, or the line when it is not one
    request: VideoRequest | None = None  # the video it asks for
    error: str | None = None  # why it cannot run

    @property
    def name(self) -> str:
        out = self.spec.get("out") if isinstance(self.spec, dict) else None
        return f"line {self.line}" + (f" ({out})" if out else "")

    def failure(self, reason: str) -> dict:
        return {"line": self.line, "out": self.spec.get("out") if isinstance(self.spec, dict) else None,
                "reason": reason, "job": self.spec}


def job_value(key: str, value):
    """A job's JSON value as the VideoRequest field `key` holds it (messages as the command line's parser)."""
    option, kind = "--" + key.replace("_", "-"), FIELD_TYPES[key]
    if kind is list:  # a repeatable option: a list of strings, or one
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise UsageError(f"argument {option}: expected a string or a list of strings, got {json.dumps(value)}")
        return values
    if kind is bool:  # a flag: true sets it
        if value is True:
            return True
        raise UsageError(f"argument {option}: ignored explicit argument {str(value)!r}")
    if value is True:
        raise UsageError(f"argument {option}: invalid {kind.__name__} value: true")
    try:
        return kind(str(value))  # as the command line's parser reads `--key=value`
    except ValueError:
        raise UsageError(f"argument {option}: invalid {kind.__name__} value: {str(value)!r}") from None


def job_request(spec: dict, defaults: VideoRequest, out_dir: Path) -> VideoRequest:
    """The video one job asks for: `defaults` (the command line's options) with the job's keys in their place;
    null or false keeps the default."""
    fields = {f.name for f in dataclasses.fields(VideoRequest)}
    for key, value in spec.items():
        dest = key.replace("-", "_")
        if dest in RUN_WIDE:
            raise UsageError(f'"{key}" is set once for the whole run, on the command line')
        if dest not in fields:
            raise UsageError(f'unknown key "{key}" (the keys are generate\'s long options without the dashes)')
        if not (value is None or isinstance(value, (bool, str, int, float))
                or (FIELD_TYPES[dest] is list and isinstance(value, list))):
            raise UsageError(f'"{key}" must be a string or a number, got {json.dumps(value)}')
        if isinstance(value, str) and "\0" in value:  # no file name or prompt holds one
            raise UsageError(f'"{key}" holds a NUL character')
    if spec.get("out") is None:
        raise UsageError('no "out": each job names its video, a path relative to --out-dir')
    values = {key.replace("-", "_"): value for key, value in spec.items() if value is not None and value is not False}
    request = dataclasses.replace(defaults, **{key: job_value(key, value) for key, value in values.items()})
    if request.out.is_absolute() or ".." in request.out.parts:
        raise UsageError(f'"out" must be a path inside --out-dir, got {request.out}')
    request.out = out_dir / request.out
    request.out.parent.mkdir(parents=True, exist_ok=True)
    request.check()
    return request


def read_jobs(path: Path, defaults: VideoRequest, out_dir: Path) -> list[Job]:
    """Every non-blank line of the job file as a Job; the ones that cannot run carry their error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"job file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read job file {path}: {error}") from None
    jobs, first_of = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            spec = json.loads(line)
        except json.JSONDecodeError as error:
            jobs.append(Job(number, line, error=f"not a JSON object: {error}"))
            continue
        job = Job(number, spec)
        try:
            if not isinstance(spec, dict):
                raise UsageError(f"a job is a JSON object {{...}}, got {line.strip()[:40]}")
            job.request = job_request(spec, defaults, out_dir)
            if job.request.out in first_of:
                raise UsageError(f'"out" {spec["out"]} is also line {first_of[job.request.out]}\'s')
            first_of[job.request.out] = number
        except UsageError as error:
            job.request, job.error = None, str(error)
        jobs.append(job)
    return jobs


def check_costs(jobs: list[Job], options: ModelOptions, launch: Launch, cfg_parallel: bool) -> None:
    """Rank 0, before any weights load: each job still to render is estimated (estimate.py); one that would take
    over an hour or not fit fails alone with the reason. Prints the total."""
    todo = [job for job in jobs if job.error is None and not job.request.out.exists()]
    if not todo:
        return
    shape, (device, dtype) = ModelShape.of_folder(options), options.placement(launch.device)
    seconds, accepted = 0.0, 0
    for job in todo:
        found = estimate(job.request, shape, device, dtype, processes=2 if cfg_parallel else 1)
        try:
            check_estimate(job.request, found)
        except UsageError as error:
            job.error = str(error)
            continue
        seconds, accepted = seconds + found.seconds, accepted + 1
    print(f"Estimate: at least {duration(seconds)} of computing for {accepted} video(s) on {device}, shared by "
          f"{launch.world_size} process(es)", file=sys.stderr)


def plan(jobs: list[Job]) -> dict:
    """Rank 0's view, sent to all: the jobs to render (their video is not there yet) and a seed for each job
    that has none (both processes of a pair must use the same)."""
    pending = [i for i, job in enumerate(jobs) if job.error is None and not job.request.out.exists()]
    return {"pending": pending, "seeds": {i: random.randrange(2**31) for i in pending if jobs[i].request.seed is None}}


def my_share(jobs: list[Job], pending: list[int], launch: Launch, exchange: CFGParallel | None) -> list:
    """(job index, guidance half or None) for this process. With CFG-parallel the guided jobs go to the pairs
    in turn and the unguided ones to the processes in turn."""
    if exchange is None:
        return [(i, None) for i in shard(pending, launch.world_size, launch.rank)]
    guided = [i for i in pending if jobs[i].request.guidance > 1]
    unguided = [i for i in pending if jobs[i].request.guidance <= 1]
    return ([(i, exchange.half) for i in shard(guided, launch.world_size // 2, launch.rank // 2)]
            + [(i, None) for i in shard(unguided, launch.world_size, launch.rank)])


def render_share(pipe, jobs: list[Job], share: list, seeds: dict, exchange, launch: Launch) -> list[dict]:
    """Render this process's share; returns its finished and failed jobs (a pair's first process reports)."""
    results = []
    for i, half in tqdm(share, desc=f"rank {launch.rank}", unit="video", position=launch.local_rank,
                        file=sys.stderr, dynamic_ncols=True):
        job, writes = jobs[i], half in (None, 0)
        start = time.perf_counter()
        pipe.enable_cfg_parallel(exchange if half is not None else None)
        try:
            image = read_image(job.request.image)
            seed = seeds.get(i, job.request.seed)
            frames = render(pipe, job.request, image, seed, output_type="np" if writes else "latent")
            if writes:
                save_video(frames, job.request)
        except Exception as error:  # noqa: BLE001 - a job fails alone, whatever its error
            if half is not None and not isinstance(error, BAD_INPUT):
                raise  # the partner may be waiting in the exchange: stop, and let the rerun resume
            if writes:
                reason = str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
                results.append(job.failure(" ".join(reason.split())))
            continue
        if writes:
            results.append({"line": job.line, "out": job.spec["out"], "seed": seed,
                            "seconds": round(time.perf_counter() - start, 3)})
    return results


def write_failures(path: Path, failures: list[dict]):
    """Replace `path` with one JSON line per failed job, atomically; when none failed, remove it (a previous
    run's)."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    with _atomic_path(path) as tmp:
        Path(tmp).write_text("".join(json.dumps(failure) + "\n" for failure in failures), encoding="utf-8")


def run_jobs(path: Path, out_dir: Path, options: ModelOptions, defaults: VideoRequest, cfg_parallel: bool) -> int:
    """Render the job file `path` into `out_dir`; returns the exit status (1 when a job failed)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir is not a folder: {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = read_jobs(path, defaults, out_dir)
    # torchrun stops the other processes with SIGTERM when one fails: exit through Python, removing temp files
    with exit_on_sigterm(), process_group(options.device) as launch:
        if cfg_parallel and launch.world_size % 2:
            raise UsageError(f"--cfg-parallel pairs processes: it needs an even number of them "
                                 f"(torchrun --nproc-per-node 2 ...), got {launch.world_size}")
        if launch.is_main:
            check_costs(jobs, options, launch, cfg_parallel)
        todo = launch.broadcast(plan(jobs) if launch.is_main else None)
        exchange = cfg_pairs(launch) if cfg_parallel else None
        unguided = [jobs[i].name for i in todo["pending"] if jobs[i].request.guidance <= 1]
        if exchange is not None and unguided and launch.is_main:
            print(f"i2vgen: warning: --cfg-parallel: {len(unguided)} job(s) have guidance <= 1, nothing to split; "
                  f"they are shared out one per process ({', '.join(unguided[:3])}...)", file=sys.stderr)
        share = my_share(jobs, todo["pending"], launch, exchange)
        load_start = time.perf_counter()
        pipe = None
        if share:  # a rerun with every video there loads no model
            pipe = load_pipeline(options, launch.device, verbose=launch.is_main)
            pipe.set_progress_bar_config(disable=True)  # one bar per process, over its videos
        loaded = time.perf_counter()
        results = launch.gather(render_share(pipe, jobs, share, todo["seeds"], exchange, launch))
        if not launch.is_main:
            return 0
        return summarize(jobs, todo, results, out_dir, time.perf_counter() - loaded,
                         loaded - load_start, launch.world_size)


def summarize(jobs, todo, results, out_dir: Path, seconds: float, load_seconds: float, processes: int) -> int:
    failures = sorted([job.failure(job.error) for job in jobs if job.error is not None]
                      + [result for result in results if "reason" in result], key=lambda f: f["line"])
    done = len(results) - sum("reason" in result for result in results)
    skipped = len(jobs) - len(todo["pending"]) - sum(job.error is not None for job in jobs)
    write_failures(out_dir / FAILURES, failures)
    print(f"i2vgen: {done} done, {skipped} skipped, {len(failures)} failed in {seconds:.1f} s on {processes} "
          f"process{'es' if processes > 1 else ''} after a {load_seconds:.1f} s model load: "
          f"{60 * done / seconds:.1f} videos per minute")
    for failure in failures:
        print(f"  failed: line {failure['line']}" + (f" ({failure['out']})" if failure["out"] else "")
              + f": {failure['reason']}")
    if failures:
        print(f"  (also in {out_dir / FAILURES})")
    for i, seed in todo["seeds"].items():  # so that a job without a seed can be made again
        if any(result["line"] == jobs[i].line and "reason" not in result for result in results):
            print(f"  {jobs[i].name}: seed {seed} (drawn)")
    return 1 if failures else 0
