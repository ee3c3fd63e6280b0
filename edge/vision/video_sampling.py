"""Which frames of a clip GLM-4.6V sees: transformers' `Glm46VVideoProcessor.sample_frames`, in plain Python.

Contract
- `sample_frames(total_frames, fps, duration)` returns the same frame indices (into the decoded frame
  sequence) as transformers' `sample_frames` given `VideoMetadata(total_num_frames, fps, duration)` - the
  metadata transformers' PyAV loader computes (see edge/vision/video.py). Defaults reproduce transformers
  exactly: target fps 3 for clips up to 30 s, 1 up to 300 s, else 0.5; at most 640 frames; the clip is
  considered only up to 2400 s; duplicates dropped; an odd count padded by repeating the last index.
- Per-request knobs (`SamplingOptions`), named as Qwen-VL / vLLM users know them:
  `fps` = frames sampled per second of video (as `fps` in qwen-vl-utils and vLLM's video loader); it replaces
  transformers' dynamic rate, which in these units is 6 fps up to 30 s, 2 fps up to 300 s, then 1 fps
  (transformers counts temporal patches of 2 frames: its target_fps 3 / 1 / 0.5). `max_frames` caps the
  sampled frames (rounded down to the temporal patch size, at least one patch; vLLM's closest knob is
  `--media-io-kwargs '{"video": {"num_frames": N}}'`). With neither given the result is transformers' own.
Pure functions; no module-level mutable state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.errors import InputError, NoVideoFramesError

# transformers' constants in Glm46VVideoProcessor.sample_frames (not checkpoint settings: the class hard-codes them).
DYNAMIC_FPS = ((30, 3.0), (300, 1.0), (2400, 0.5))
MAX_FRAMES = 640
MAX_DURATION = 2400
MAX_FPS_OVERRIDE = 60.0


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request overrides; None keeps transformers' behaviour."""

    fps: float | None = None  # sampled frames per second of video (transformers' target_fps * 2)
    max_frames: int | None = None  # cap on sampled frames (one temporal patch = 2 frames minimum)

    def __post_init__(self):
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not (
                    0 < self.fps <= MAX_FPS_OVERRIDE and math.isfinite(self.fps)):
                raise InputError(f"video fps must be a number in (0, {MAX_FPS_OVERRIDE:g}], got {self.fps!r}")
        if self.max_frames is not None:
            if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or not (
                    2 <= self.max_frames <= MAX_FRAMES):
                raise InputError(f"video max_frames must be an integer in [2, {MAX_FRAMES}], got {self.max_frames!r}")

    def key(self) -> str:
        """Stable text for cache keys."""
        return f"fps={self.fps!r};max_frames={self.max_frames!r}"


def target_fps(duration: float) -> float:
    """transformers' target_fps in temporal patches (frame pairs) per second: 3 up to 30 s, 1 up to 300 s, then
    0.5 (duration capped at 2400 s)."""
    effective = min(duration, MAX_DURATION)
    for limit, rate in DYNAMIC_FPS:
        if effective <= limit:
            return rate
    return DYNAMIC_FPS[-1][1]


def sample_frames(total_frames: int, fps: float, duration: float | None = None, *, temporal_patch_size: int = 2,
                  options: SamplingOptions = SamplingOptions()) -> list[int]:
    """Sorted-by-walk frame indices, as `Glm46VVideoProcessor.sample_frames` (see the module contract)."""
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise InputError(f"video fps metadata must be positive, got {fps!r}")
    if total_frames < 1:
        raise NoVideoFramesError("the video has no frames")
    max_idx = total_frames - 1
    duration = duration or round(max_idx / fps) + 1  # `or`: a zero duration falls back, as in transformers
    effective = min(duration, MAX_DURATION)
    rate = options.fps / temporal_patch_size if options.fps is not None else target_fps(duration)
    cap = MAX_FRAMES
    if options.max_frames is not None:
        cap = min(cap, max(temporal_patch_size, options.max_frames - options.max_frames % temporal_patch_size))
    extract_t = min(int(effective * rate * temporal_patch_size), cap)

    if total_frames < extract_t:
        indices = np.linspace(0, max_idx, extract_t, dtype=int).tolist()
    else:
        indices, current, step, max_second = [], 0, 1 / (temporal_patch_size * rate), int(duration)
        for i in range(total_frames):
            if i * (1 / fps) >= current:  # same float expression as transformers' timestamps list
                current += step
                indices.append(i)
                if current >= max_second:
                    break
    if len(indices) < extract_t:
        start, end = (indices[0], indices[-1]) if indices else (0, max_idx)
        indices = np.linspace(start, end, extract_t, dtype=int).tolist()
    elif len(indices) > extract_t:
        indices = np.linspace(0, max_idx, extract_t, dtype=int).tolist()
    unique = list(dict.fromkeys(indices))
    if len(unique) & 1:
        unique.append(unique[-1])
    if not unique:
        raise NoVideoFramesError(
            f"sampling a {duration:.3g} s clip ({total_frames} frames at {fps:.4g} fps) at "
            f"{rate * temporal_patch_size:g} frames per second keeps no frame; the clip must last at least "
            f"{1 / (rate * temporal_patch_size):.3g} s at this rate, or ask for a higher fps")
    return unique

