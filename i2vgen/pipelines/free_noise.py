"""Long videos without training: FreeNoise (Qiu et al. 2024, "FreeNoise: Tuning-Free Longer Video Diffusion via
Noise Rescheduling"), with diffusers' names and meanings (`enable_free_noise` of its AnimateDiff pipelines).

Three parts, each in its own place:
- windowed temporal attention (sec. 3.3): the UNet's one switch, models/frame_windows.py;
- noise rescheduling (sec. 3.2): the initial noise of frames beyond the first window is made of the first
  window's noise, so every window starts from noise the model has seen together (`_reschedule_noise`, here);
- prompts that change over time: `{frame: prompt}` dicts, prompt_schedule.py (`_encode_prompt_schedule`, here).
docs/long_videos.md: how to use it, what it costs, how the image latents are laid out over a long video.
"""

import torch

from i2vgen.models.frame_windows import FrameWindows
from i2vgen.pipelines.prompt_schedule import check_prompt_schedule, lerp, per_frame_embeddings

NOISE_TYPES = ("shuffle_context", "repeat_context", "random")


class FreeNoiseMixin:
    """`enable_free_noise` / `disable_free_noise` and what the call needs from them."""

    _free_noise: FrameWindows | None = None
    _free_noise_noise_type: str = "random"
    _prompt_interpolation_callback = None

    def enable_free_noise(self, context_length: int = 16, context_stride: int = 4, weighting_scheme: str = "pyramid",
                          noise_type: str = "shuffle_context", prompt_interpolation_callback=None):
        """Generate videos longer than `context_length` (the model's training length; 16 for the released model):

        - every attention across frames runs within windows of `context_length` frames, one every
          `context_stride` frames (the last aligned to the video's end), fused per frame with the
          `weighting_scheme`'s weights: "flat", "pyramid" (default) or "delayed_reverse_sawtooth";
        - `noise_type`: "shuffle_context" (default: each block of `context_stride` frames past the first window
          takes the noise of the block `context_length` frames earlier, frames shuffled), "repeat_context" (the
          first window's noise repeated) or "random" (independent noise, as without FreeNoise);
        - `prompt_interpolation_callback(start_frame, end_frame, start, end)` replaces the linear interpolation
          between the embeddings (1, S, D) of two prompts of a `{frame: prompt}` dict; it returns
          (end_frame - start_frame + 1, S, D).
        Videos of at most `context_length` frames come out as without it (noise and attention alike)."""
        windows = FrameWindows(context_length, context_stride, weighting_scheme)  # checks the three
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {', '.join(NOISE_TYPES)}; got {noise_type!r}")
        self.set_prompt_interpolation(prompt_interpolation_callback)
        self._free_noise, self._free_noise_noise_type = windows, noise_type
        self.unet.enable_frame_windows(windows)

    def disable_free_noise(self):
        """Attention over all frames and independent noise again (prompt dicts keep working)."""
        self._free_noise = None
        self.unet.enable_frame_windows(None)

    def set_prompt_interpolation(self, callback=None):
        """How `{frame: prompt}` dicts blend between two given frames: callback(start_frame, end_frame, start, end)
        (see enable_free_noise); None: linear (`prompt_schedule.lerp`); `prompt_schedule.hold` cuts instead."""
        if callback is not None and not callable(callback):
            raise TypeError(f"prompt_interpolation_callback must be callable or None; got {type(callback).__name__}")
        self._prompt_interpolation_callback = callback

    @property
    def free_noise_enabled(self) -> bool:
        return self._free_noise is not None

    def _reschedule_noise(self, noise: torch.Tensor, generator) -> torch.Tensor:
        """FreeNoise's initial noise (B, C, F, h, w) from independent noise: frames past the first window repeat
        (or, shuffled in blocks of context_stride frames, re-use) the noise of the frames context_length earlier.
        The permutations come from `generator` (the first of a list), after the noise."""
        windows, noise_type, frames = self._free_noise, self._free_noise_noise_type, noise.shape[2]
        if windows is None or noise_type == "random" or frames <= windows.context_length:
            return noise
        length, stride = windows.context_length, windows.context_stride
        if noise_type == "repeat_context":
            return noise[:, :, torch.arange(frames) % length]
        generator = generator[0] if isinstance(generator, list) else generator
        noise = noise.clone()
        for start in range(length, frames, stride):
            size = min(stride, frames - start)
            order = torch.randperm(stride, generator=generator, device=generator.device if generator else "cpu")
            noise[:, :, start:start + size] = noise[:, :, start - length + order[:size].cpu()]
        return noise

    def _encode_prompt_schedule(self, prompt, negative_prompt, num_frames: int, guided: bool, clip_skip: int | None):
        """Per-frame prompt embeddings (1, F, S, D), and the negative prompt's when guided, from `{frame: prompt}`
        dicts or strings (a string holds for every frame). A schedule of one text is that text's plain
        embedding (1, S, D), so `{0: p}` gives the video `p` gives."""
        schedules = [_schedule("prompt", prompt, num_frames),
                     _schedule("negative_prompt", "" if negative_prompt is None else negative_prompt, num_frames)]
        if all(len(set(schedule.values())) == 1 for schedule in schedules):
            return self._encode_prompts([schedules[0][0]], schedules[1][0], None, None, guided, clip_skip)
        interpolate = self._prompt_interpolation_callback or lerp
        embeds = []
        for schedule in schedules[:1 + guided]:
            texts = self._encode_text(list(schedule.values()), self.tokenizer.model_max_length, clip_skip)
            embeds.append(per_frame_embeddings(list(schedule), texts, num_frames, interpolate)[None])
        return embeds[0], embeds[1] if guided else None


def _schedule(name: str, prompt, num_frames: int) -> dict[int, str]:
    return {0: prompt} if isinstance(prompt, str) else check_prompt_schedule(name, prompt, num_frames)
