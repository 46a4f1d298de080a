"""Feature caching across denoising steps (NEW: not in the reference; measured in docs/sampling.md).

Neighbouring denoising steps compute nearly the same deep features and nearly the same guidance difference, so a
call can reuse what an earlier call computed instead of recomputing it. Every `cache_interval`-th UNet call with a
given condition is a full pass and fills the cache; the calls in between are cached calls, which reuse

- DeepCache (Ma et al. 2024, "DeepCache: Accelerating Diffusion Models for Free"): the features entering up block
  `levels - 1 - cache_branch_id`. A cached call runs only the shallowest `cache_branch_id + 1` down and up blocks
  (conv_in, their skips, conv_out); the deeper blocks and the mid block are skipped.
- The guidance difference (FasterCache, Lv et al. 2024, sec. 3.3: the unconditional and conditional predictions
  differ by a slowly changing amount): with `cache_guidance`, a cached call of a condition with two groups of rows
  [unconditional, conditional] computes only the conditional rows and returns
  unconditional = conditional + (unconditional - conditional) of the last full pass.

`I2VGenXLUNet.enable_cache(CacheConfig(...))` switches it on; the UNet's block loop reads the `StepPlan` of each
call in one place (`_predict`). Entries are keyed by the condition object (`encode_condition`'s output, made once
per video), so a new video never reads an old one's features; the pipeline also clears the cache at the start and
end of every call (to free the features).
"""

from dataclasses import dataclass

import torch

from i2vgen.checks import check_int

MAX_ENTRIES = 2  # conditions remembered at once: two under sequential guidance (one per half), else one


@dataclass(frozen=True)
class CacheConfig:
    """A full pass every `cache_interval` calls; the calls between reuse its deep features (`cache_branch_id`:
    the shallowest level that still runs, None: all run) and/or its guidance difference (`cache_guidance`)."""

    cache_interval: int = 2
    cache_branch_id: int | None = 0
    cache_guidance: bool = False

    def __post_init__(self):
        check_int("cache_interval", self.cache_interval, 1)
        if self.cache_branch_id is not None:
            check_int("cache_branch_id", self.cache_branch_id, 0)
        if not isinstance(self.cache_guidance, bool):
            raise TypeError(f"cache_guidance must be True or False, got {self.cache_guidance!r}")
        if self.cache_branch_id is None and not self.cache_guidance:
            raise ValueError("a CacheConfig must cache something: set cache_branch_id (0 = shallowest level) "
                             "or cache_guidance=True")


class _Entry:
    """What the full passes of one condition left: the call count, the deep features and the guidance difference."""

    def __init__(self, condition):
        self.condition, self.calls = condition, 0
        self.deep: torch.Tensor | None = None  # ((k b f), c, h, w) entering the cached up block
        self.guidance: torch.Tensor | None = None  # (B, C, F, H, W): unconditional - conditional


class StepPlan:
    """What one UNet call runs: `levels` down/up levels (all of them in a full pass), the mid block or not
    (`reads_deep`), whether only the conditional rows run, and the exchange with the cache at up block `up_index`."""

    def __init__(self, entry: _Entry, full: bool, levels: int, branch_id: int | None, cache_guidance: bool):
        self.entry, self.full = entry, full
        self.up_index = None if branch_id is None else levels - 1 - branch_id
        self.reads_deep = not full and branch_id is not None  # the deep blocks and the mid block are skipped
        self.levels = branch_id + 1 if self.reads_deep else levels
        condition = entry.condition
        self.store_guidance = full and cache_guidance and condition.context.shape[0] == 2 * len(condition.image_latents)
        self.conditional_only = not full and cache_guidance and entry.guidance is not None

    def deep_features(self, x: torch.Tensor) -> torch.Tensor:
        """At up block `up_index`: a full pass stores x and goes on with it; a cached call takes the stored
        features instead (its last rows: the conditional ones when only those run)."""
        if self.full:
            self.entry.deep = x
            return x
        return self.entry.deep[-x.shape[0]:]

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The call's prediction for every row: a full pass with two groups stores their difference; a
        conditional-only call puts the unconditional rows back in front."""
        if self.conditional_only:
            return torch.cat([out + self.entry.guidance, out])
        if self.store_guidance:
            uncond, cond = out.chunk(2)
            self.entry.guidance = uncond - cond
        return out


class StepCache:
    """One cache object owned by the UNet while caching is enabled; `plan(condition)` once per UNet call."""

    def __init__(self, config: CacheConfig, levels: int):
        if config.cache_branch_id is not None and config.cache_branch_id >= levels:
            raise ValueError(f"cache_branch_id must be below the UNet's {levels} levels (0 = shallowest); got "
                             f"{config.cache_branch_id}")
        self.config, self.levels = config, levels
        self.entries: list[_Entry] = []

    def clear(self):
        self.entries = []

    def plan(self, condition) -> StepPlan:
        entry = next((e for e in self.entries if e.condition is condition), None)
        if entry is None:
            entry = _Entry(condition)
            self.entries = [*self.entries[-(MAX_ENTRIES - 1):], entry]
        c = self.config
        full = entry.calls % c.cache_interval == 0
        entry.calls += 1
        return StepPlan(entry, full, self.levels, c.cache_branch_id, c.cache_guidance)
