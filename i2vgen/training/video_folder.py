"""A folder of your own clips and their captions, in the layouts users already have.

    my_clips/metadata.csv     file_name,text[,fps,start,end]   (Hugging Face's folder-dataset convention)
    my_clips/metadata.jsonl   {"file_name": ..., "text": ..., "fps": ..., "start": ..., "end": ...} per line
    my_clips/clip.mp4 + my_clips/clip.txt                      (no metadata file: a caption beside each clip)

A clip is a video file (mp4, webm, mov, mkv, gif), decoded with PyAV (`pip install 'i2vgen[video]'`: FFmpeg
ships inside its wheel), or a folder of frames (png, jpg, jpeg, webp), read in name order. Optional columns:
`fps` overrides the file's frame rate (a folder of frames needs it), `start`/`end` pick a time range in seconds.

Every problem with one clip (missing file, empty caption, unreadable or truncated video, no frames) is a
`ClipError` whose message is one line naming the file; `scan_folder` collects them so that the run can skip
those clips and list them. A folder with no clips at all, or a metadata file that cannot be read, is a
DataError.
"""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


class DataError(ValueError):
    """A problem with the training data; the message is one line naming the file."""


class ClipError(DataError):
    """One clip that cannot be used (the run skips it and lists it)."""


@dataclass(frozen=True)
class Clip:
    """One entry of the folder: where its frames are, its caption, and what the metadata overrides."""

    path: Path
    caption: str
    fps: float | None = None  # overrides the file's frame rate
    start: float | None = None  # seconds
    end: float | None = None


def _number(row: dict, key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ClipError(f"{where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (key == "fps" and number == 0):
        raise ClipError(f"{where}: {key} must be a {'positive' if key == 'fps' else 'non-negative'} number, "
                        f"got {value!r}")
    return number


def _read_metadata(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the metadata file ({error})") from None
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        columns = set(rows[0]) if rows else set()
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: line {number} is not JSON ({error.msg})") from None
                if not isinstance(rows[-1], dict):
                    raise DataError(f"{path}: line {number} is not a JSON object")
        columns = set().union(*rows) if rows else set()
    missing = {"file_name", "text"} - columns
    if rows and missing:
        raise DataError(f"{path}: needs the columns file_name and text; missing {sorted(missing)}")
    return rows


def _clip_from_row(folder: Path, row: dict, where: str) -> Clip:
    name = row.get("file_name") or ""
    path = folder / name
    if not name or not path.exists():
        raise ClipError(f"{where}: file {str(path)!r} named by the metadata does not exist")
    caption = row.get("text")
    if not isinstance(caption, str) or not caption.strip():
        raise ClipError(f"{where}: the caption of {path} is empty")
    clip = Clip(path, caption.strip(), _number(row, "fps", where), _number(row, "start", where),
                _number(row, "end", where))
    if clip.start is not None and clip.end is not None and clip.end <= clip.start:
        raise ClipError(f"{where}: end ({clip.end}) must be after start ({clip.start}) for {path}")
    return clip


def _is_clip(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES or (path.is_dir() and any(_frame_files(path)))


def _clip_with_caption_file(path: Path) -> Clip:
    caption_file = path.with_suffix(".txt") if path.is_file() else path.parent / f"{path.name}.txt"
    if not caption_file.exists():
        raise ClipError(f"{path}: no caption: expected {caption_file.name} beside it (or a metadata.csv)")
    caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
    if not caption:
        raise ClipError(f"{caption_file}: the caption is empty")
    return Clip(path, caption)


def scan_folder(folder) -> tuple[list[Clip], list[str]]:
    """The clips of `folder` and one message per clip that cannot be used (which is then left out).

    With a metadata file its rows name the clips; otherwise every video file or folder of frames with a
    same-name `.txt` caption beside it is one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data_dir {str(folder)!r} is not a folder")
    metadata = [folder / name for name in METADATA_FILES if (folder / name).exists()]
    clips, problems = [], []
    if metadata:
        for number, row in enumerate(_read_metadata(metadata[0]), 2 if metadata[0].suffix == ".csv" else 1):
            try:
                clips.append(_clip_from_row(folder, row, f"{metadata[0]} line {number}"))
            except ClipError as error:
                problems.append(str(error))
    else:
        for path in sorted(p for p in folder.iterdir() if _is_clip(p)):
            try:
                clips.append(_clip_with_caption_file(path))
            except ClipError as error:
                problems.append(str(error))
    if not clips and not problems:
        raise DataError(f"data_dir {str(folder)!r} has no clips: expected a metadata.csv or metadata.jsonl "
                         f"(file_name,text) or video files ({', '.join(VIDEO_SUFFIXES)}) or folders of frames "
                         f"with a same-name .txt caption")
    return clips, problems


# ---- decoding ----

def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def _in_range(clip: Clip, index: int, fps: float) -> bool:
    time = index / fps
    return (clip.start is None or time >= clip.start) and (clip.end is None or time < clip.end)


def _decode_video(clip: Clip, transform) -> tuple[list, float]:
    try:
        import av  # the optional extra i2vgen[video]
    except ImportError:
        raise DataError(f"{clip.path}: decoding video files needs PyAV: pip install 'i2vgen[video]'") from None

    try:
        with av.open(str(clip.path)) as container:
            if not container.streams.video:
                raise ClipError(f"{clip.path}: has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = clip.fps or (float(rate) if rate else None)
            if not fps:
                raise ClipError(f"{clip.path}: the file states no frame rate; give it an fps column in the metadata")
            frames = [transform(frame.to_image()) for index, frame in enumerate(container.decode(stream))
                      if _in_range(clip, index, fps)]
            stated = stream.frames
    except av.error.FFmpegError as error:
        raise ClipError(f"{clip.path}: cannot decode the video ({type(error).__name__}: {error.strerror})") from None
    if clip.start is None and clip.end is None and stated and len(frames) < stated:
        raise ClipError(f"{clip.path}: truncated: the file states {stated} frames, only {len(frames)} decode")
    return frames, fps


def read_frames(clip: Clip, transform=lambda image: image) -> tuple[list, float]:
    """The clip's frames (each passed through `transform`, a function of an RGB PIL image, as it is decoded so
    that a long clip never sits in memory at full size) and its frame rate."""
    if clip.path.is_dir():
        if clip.fps is None:
            raise ClipError(f"{clip.path}: a folder of frames needs an fps column in the metadata")
        files = [f for i, f in enumerate(_frame_files(clip.path)) if _in_range(clip, i, clip.fps)]
        try:
            frames = [transform(PIL.Image.open(f).convert("RGB")) for f in files]
        except (OSError, PIL.UnidentifiedImageError) as error:
            raise ClipError(f"{clip.path}: cannot read a frame ({error})") from None
        fps = clip.fps
    elif clip.path.suffix.lower() in VIDEO_SUFFIXES:
        frames, fps = _decode_video(clip, transform)
    else:
        raise ClipError(f"{clip.path}: not a clip: use a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder "
                        f"of frames ({', '.join(FRAME_SUFFIXES)})")
    if not frames:
        raise ClipError(f"{clip.path}: has no frames" + (" in the asked time range" if clip.start or clip.end else ""))
    return frames, fps
