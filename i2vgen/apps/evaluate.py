"""`i2vgen eval FOLDER`: the metrics of i2vgen.evaluation over a folder of videos (docs/evaluation.md).

A bare folder of .gif / .mp4 files is enough for the metrics that need only the video; a `metadata.csv` in it
(columns file_name, and any of image, prompt, ground_truth) or a job file (`--jobs`, its "out", "image" and
"prompt") adds each video's first-frame image, prompt and ground-truth clip. CLIP, DINO and VideoMAE metrics
run when `--clip`, `--dino`, `--videomae` name local model folders (never downloaded); FVD needs `--videomae`
and `--real FOLDER`. Results go to FOLDER (or `--out`): eval_videos.json and eval_videos.csv (one record per
video), eval_summary.json (mean, std and count of each metric, and what was skipped and why), each written
atomically; the summary is printed as a table. `i2vgen eval --compare A B` prints two summaries side by side.
"""

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from i2vgen.apps.render import UsageError, read_image
from i2vgen.evaluation import consistency, features, fidelity, fvd, temporal
from i2vgen.preprocess import center_crop_wide
from i2vgen.video import _atomic_path, read_video

VIDEO_SUFFIXES = (".gif", ".mp4")
METADATA_COLUMNS = ("file_name", "image", "prompt", "ground_truth")
VIDEOS_JSON, VIDEOS_CSV, SUMMARY_JSON = "eval_videos.json", "eval_videos.csv", "eval_summary.json"


@dataclass
class Entry:
    """One video and what the metadata says about it."""

    video: Path
    image: Path | None = None
    prompt: str | None = None
    ground_truth: Path | None = None


@dataclass
class Models:
    """The feature extractors given on the command line, each (model, tokenizer) or None."""

    clip: tuple | None = None
    dino: tuple | None = None
    videomae: tuple | None = None
    skipped: dict = field(default_factory=dict)  # metric names -> why they did not run


def list_videos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"FOLDER is not a folder of videos: {folder}")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."))
    if not videos:
        raise UsageError(f"no .gif or .mp4 videos in {folder}")
    return videos


def read_metadata(folder: Path, videos: list[Path]) -> dict[str, Entry]:
    """file name -> Entry, from FOLDER/metadata.csv if there is one (paths in it relative to FOLDER)."""
    entries = {video.name: Entry(video) for video in videos}
    path = folder / "metadata.csv"
    if not path.is_file():
        return entries
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    columns = set(rows[0]) if rows else set()
    if rows and ("file_name" not in columns or columns - set(METADATA_COLUMNS)):
        raise UsageError(f"{path}: columns must be file_name and any of image, prompt, ground_truth; got {sorted(columns)}")
    for number, row in enumerate(rows, 2):
        if row["file_name"] not in entries:
            raise UsageError(f"{path} line {number}: no video {row['file_name']!r} in {folder}")
        entry = entries[row["file_name"]]
        entry.image = folder / row["image"] if row.get("image") else None
        entry.prompt = row.get("prompt") or None
        entry.ground_truth = folder / row["ground_truth"] if row.get("ground_truth") else None
    return entries


def read_job_file(path: Path, folder: Path, entries: dict[str, Entry]) -> None:
    """Add each job's image and prompt to the entry of its "out" video (jobs.py's format)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--jobs: cannot read {path}: {error}") from None
    for number, line in enumerate(lines, 1):
        try:
            spec = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            raise UsageError(f"--jobs {path} line {number}: not a JSON object") from None
        entry = entries.get(str(Path(spec.get("out", "")))) if isinstance(spec, dict) else None
        if entry is not None:
            entry.image = Path(spec["image"]) if spec.get("image") else entry.image
            entry.prompt = spec.get("prompt") or entry.prompt


def frames_of(path: Path, what: str) -> np.ndarray:
    try:
        return read_video(path).astype(np.float64) / 255.0
    except (ValueError, ImportError) as error:
        raise UsageError(f"{what}: {error}") from None


def input_image(entry: Entry, height: int, width: int) -> np.ndarray:
    """The entry's first-frame image cropped and resized to the video's size as the pipeline does it."""
    image = read_image(str(entry.image))
    return np.asarray(center_crop_wide(image, (width, height)), dtype=np.float64) / 255.0


def weights_free_metrics(video: np.ndarray, entry: Entry) -> dict:
    """Every metric that needs no learned weights: fidelity to the image and ground truth when given, flicker,
    colour drift over the last and first quarter of the frames, Farneback motion (when OpenCV is there)."""
    from i2vgen.evaluation import motion

    window = max(1, len(video) // 4)
    shift = temporal.colour_shift(video, window)
    result = {"frames": len(video), "temporal_flickering": temporal.temporal_flickering(video),
              "colour_drift": temporal.colour_drift(video, window),
              **{f"colour_shift_{c}": float(s) for c, s in zip("rgb", shift)}}
    if entry.image is not None:
        image = input_image(entry, *video.shape[1:3])
        result |= {"first_frame_psnr": fidelity.first_frame_psnr(video, image),
                   "first_frame_ssim": fidelity.first_frame_ssim(video, image)}
    if entry.ground_truth is not None:
        truth = frames_of(entry.ground_truth, f"ground truth of {entry.video.name}")
        if truth.shape != video.shape:
            raise UsageError(f"ground truth {entry.ground_truth} is {truth.shape}, its video {entry.video.name} {video.shape}")
        result |= {"ground_truth_psnr": float(np.mean(fidelity.per_frame_psnr(video, truth))),
                   "ground_truth_ssim": float(np.mean(fidelity.per_frame_ssim(video, truth)))}
    try:
        flow = motion.optical_flow(video)
    except ImportError:
        return result
    return result | {"motion_magnitude": motion.motion_magnitude(flow), "dynamic_degree": float(motion.dynamic_degree(flow)),
                     **({"motion_acceleration": motion.motion_acceleration(flow)} if len(flow) > 1 else {})}


def model_metrics(video: np.ndarray, entry: Entry, models: Models) -> dict:
    """CLIP and DINO metrics, those that need the input image or the prompt only when the entry has them."""
    result = {}
    image = input_image(entry, *video.shape[1:3])[None] if entry.image is not None else None
    if models.clip is not None:
        model, tokenizer = models.clip
        frames = features.clip_image_features(model, video)
        result["background_consistency"] = consistency.frame_consistency(frames)
        if image is not None:
            result["clip_image_similarity"] = consistency.mean_similarity(frames, features.clip_image_features(model, image))
        if entry.prompt is not None:
            text = features.clip_text_features(model, tokenizer, [entry.prompt])
            result["clip_text_similarity"] = consistency.mean_similarity(frames, text)
    if models.dino is not None:
        frames = features.dino_features(models.dino[0], video)
        result["subject_consistency"] = consistency.frame_consistency(frames)
        if image is not None:
            result["i2v_subject_consistency"] = consistency.i2v_consistency(features.dino_features(models.dino[0], image), frames)
    return result


def summarize(records: list[dict]) -> dict:
    """Per metric: mean, standard deviation (n - 1) and how many videos have it."""
    names = [name for name in records[0]] + [n for r in records[1:] for n in r if n not in records[0]]
    summary = {}
    for name in dict.fromkeys(names):
        values = [r[name] for r in records if isinstance(r.get(name), (int, float))]
        if values:
            summary[name] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                             "n": len(values)}
    return summary


def skipped_reasons(entries: list[Entry], models: Models, real: Path | None) -> dict:
    """What did not run, and why, in plain words (the same words go to the terminal and the summary)."""
    reasons = dict(models.skipped)
    if not any(e.image for e in entries):
        reasons["first_frame_psnr, first_frame_ssim, clip_image_similarity, i2v_subject_consistency"] = (
            "no input images: give metadata.csv with an image column, or --jobs")
    if not any(e.prompt for e in entries):
        reasons["clip_text_similarity"] = "no prompts: give metadata.csv with a prompt column, or --jobs"
    if not any(e.ground_truth for e in entries):
        reasons["ground_truth_psnr, ground_truth_ssim"] = "no ground truth: give metadata.csv with a ground_truth column"
    if real is None or models.videomae is None:
        reasons["fvd"] = "needs --real FOLDER of real clips and --videomae MODEL_FOLDER"
    try:
        import cv2  # noqa: F401
    except ImportError:
        reasons["motion_magnitude, motion_acceleration, dynamic_degree"] = "needs OpenCV: pip install 'i2vgen[eval]'"
    return reasons


def frechet_video_distance(videos: list[np.ndarray], real: Path, videomae) -> float:
    model = videomae[0]
    fake = np.concatenate([features.videomae_features(model, video) for video in videos])
    clips = [frames_of(path, "--real") for path in list_videos(real)]
    return fvd.frechet_distance(fake, np.concatenate([features.videomae_features(model, clip) for clip in clips]))


def load_models(args) -> Models:
    models = Models()
    for kind, names in (("clip", "background_consistency, clip_image_similarity, clip_text_similarity"),
                        ("dino", "subject_consistency, i2v_subject_consistency")):
        if getattr(args, kind) is None:
            models.skipped[names] = f"no --{kind} model folder ({features.EXPECTED[kind]})"
    for kind in ("clip", "dino", "videomae"):
        if getattr(args, kind) is not None:
            try:
                setattr(models, kind, features.load_model(kind, getattr(args, kind)))
            except FileNotFoundError as error:
                raise UsageError(str(error)) from None
    return models


def evaluate_folder(folder: Path, models: Models, jobs: Path | None = None, real: Path | None = None) -> tuple[list, dict]:
    """(one record per video, the summary) for the videos in `folder`."""
    entries = read_metadata(folder, list_videos(folder))
    if jobs is not None:
        read_job_file(jobs, folder, entries)
    records, videos = [], []
    for entry in entries.values():
        video = frames_of(entry.video, "video")
        if len(video) < 2:
            raise UsageError(f"video {entry.video} has {len(video)} frame; the metrics need at least 2")
        records.append({"video": entry.video.name, **weights_free_metrics(video, entry), **model_metrics(video, entry, models)})
        videos.append(video)
    summary = {"folder": str(folder), "videos": len(records), "metrics": summarize(records),
               "skipped": skipped_reasons(list(entries.values()), models, real)}
    if real is not None and models.videomae is not None:
        summary["metrics"]["fvd"] = {"mean": frechet_video_distance(videos, real, models.videomae), "std": 0.0, "n": len(videos)}
    return records, summary


def write_results(out: Path, records: list[dict], summary: dict) -> None:
    """eval_videos.json, eval_videos.csv and eval_summary.json in `out`, each replaced atomically."""
    columns = list(dict.fromkeys(name for record in records for name in record))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    for name, content in ((VIDEOS_JSON, json.dumps(records, indent=1)), (VIDEOS_CSV, text.getvalue()),
                          (SUMMARY_JSON, json.dumps(summary, indent=1))):
        with _atomic_path(out / name) as tmp:
            Path(tmp).write_text(content + ("" if content.endswith("\n") else "\n"), encoding="utf-8")


def summary_table(summaries: dict[str, dict]) -> str:
    """The metrics of one or more summaries as a text table: mean ± std per folder, and B - A for two."""
    names = list(dict.fromkeys(n for s in summaries.values() for n in s["metrics"]))
    header = ["metric", *summaries] + (["B - A"] if len(summaries) == 2 else [])
    rows = []
    for name in names:
        cells = [s["metrics"].get(name) for s in summaries.values()]
        row = [name] + [f"{c['mean']:.4f} ± {c['std']:.4f} (n={c['n']})" if c else "-" for c in cells]
        if len(cells) == 2:
            row.append(f"{cells[1]['mean'] - cells[0]['mean']:+.4f}" if all(cells) else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def read_summary(folder: Path) -> dict:
    path = folder / SUMMARY_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--compare: no {SUMMARY_JSON} in {folder}; run `i2vgen eval {folder}` first") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"--compare: cannot read {path}: {error}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vgen eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, help="folder of .gif / .mp4 videos (and metadata.csv)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="two evaluated folders, side by side")
    parser.add_argument("--out", type=Path, help="folder for the results (default: FOLDER)")
    parser.add_argument("--jobs", type=Path, help="the job file the videos were made from (its image and prompt)")
    parser.add_argument("--clip", help="local folder of a transformers CLIPModel and its tokenizer")
    parser.add_argument("--dino", help="local folder of a transformers ViT or DINOv2 model")
    parser.add_argument("--videomae", help="local folder of a transformers VideoMAEModel (for FVD)")
    parser.add_argument("--real", type=Path, help="folder of real clips to compute FVD against (with --videomae)")
    return parser


def run(args) -> None:
    if args.compare:
        a, b = args.compare
        print(f"A = {a}\nB = {b}")
        print(summary_table({"A": read_summary(a), "B": read_summary(b)}))
        return
    if args.folder is None:
        raise UsageError("give FOLDER (a folder of videos) or --compare A B")
    list_videos(args.folder)
    if args.real is not None:
        list_videos(args.real)
    out = args.out or args.folder
    if not out.is_dir():
        raise UsageError(f"--out is not a folder: {out}")
    records, summary = evaluate_folder(args.folder, load_models(args), args.jobs, args.real)
    write_results(out, records, summary)
    print(summary_table({str(args.folder): summary}))
    for names, reason in summary["skipped"].items():
        print(f"skipped {names}: {reason}")
    print(f"wrote {out / VIDEOS_JSON}, {out / VIDEOS_CSV}, {out / SUMMARY_JSON}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UsageError as error:
        print(f"i2vgen eval: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError) as error:
        print(f"i2vgen eval: error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0
