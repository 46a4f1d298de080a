"""Prompts that change over time: `{frame: prompt}` -> one text embedding per frame.

As diffusers' FreeNoise takes them: frame 0 is required; the last prompt holds to the last frame; between two
given frames a and b the embeddings are interpolated, `interpolate(a, b, start, end)` returning the b - a + 1
embeddings of frames a..b (linear by default, `lerp`). Each frame's cross-attention then reads its own
embedding, so a window of the temporal layers sees the prompts of its frames.
"""

import torch

from i2vgen.checks import check_int, check_text


def check_prompt_schedule(name: str, schedule, num_frames: int) -> dict[int, str]:
    """A {frame: prompt} dict with frame 0, frames in [0, num_frames), text values -> sorted by frame."""
    if not isinstance(schedule, dict) or not schedule:
        raise TypeError(f"{name} as a schedule must be a non-empty dict {{frame: prompt}}, got {schedule!r}")
    for frame, text in schedule.items():
        check_int(f"{name} frame", frame, 0, num_frames - 1)
        check_text(f"{name}[{frame}]", text)
    if 0 not in schedule:
        raise ValueError(f"{name} needs a prompt for frame 0 (the video starts with it); got frames "
                         f"{sorted(schedule)}")
    return dict(sorted(schedule.items()))


def lerp(start_frame: int, end_frame: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of two embeddings (1, S, D) over frames start_frame..end_frame -> (n, S, D).
    torch.lerp returns `start` and `end` exactly at the two ends."""
    weights = torch.linspace(0, 1, end_frame - start_frame + 1, dtype=start.dtype, device=start.device)
    return torch.lerp(start, end, weights[:, None, None])


def hold(start_frame: int, end_frame: int, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """No blending: each prompt holds until the frame the next one is given at (a cut between prompts)."""
    return torch.cat([start.expand(end_frame - start_frame, *start.shape[1:]), end])


INTERPOLATIONS = {"linear": lerp, "hold": hold}  # by name, for the applications


def per_frame_embeddings(frames: list[int], embeddings: torch.Tensor, num_frames: int, interpolate=lerp
                         ) -> torch.Tensor:
    """The embeddings (K, S, D) of the prompts at `frames` (sorted, starting at 0) -> (num_frames, S, D)."""
    keys = [*frames, num_frames - 1] if frames[-1] != num_frames - 1 else list(frames)
    embeddings = torch.cat([embeddings, embeddings[-1:]]) if len(keys) > len(frames) else embeddings
    out = embeddings[:1].repeat(num_frames, 1, 1)  # one frame: frame 0's prompt
    for i, (a, b) in enumerate(zip(keys, keys[1:])):
        part = interpolate(a, b, embeddings[i:i + 1], embeddings[i + 1:i + 2])
        if tuple(part.shape) != (b - a + 1, *embeddings.shape[1:]):
            raise ValueError(f"the prompt interpolation callback must return the {b - a + 1} embeddings of frames "
                             f"{a}..{b}, shape {(b - a + 1, *embeddings.shape[1:])}; got {tuple(part.shape)}")
        out[a:b + 1] = part
    return out
