"""Video clips to GLM-4.6V vision inputs: sampled frames, one size, temporal pairs, timestamps (numpy only).

Contract
- `prepare_video(source, config, options=..., max_video_tokens=..., limits=...)` decodes a clip
  (edge/vision/video.py), samples frames like transformers (edge/vision/video_sampling.py), resizes every
  sampled frame to one size from the video `smart_resize` (temporal factor, factor = patch * merge, pixel
  bounds counting all frames), with torch's uint8 antialiased bicubic (edge/vision/resample.py, bit-exact with
  what torchvision runs on CPU), normalises like transformers' fused rescale+normalize (float32
  (x - mean/rescale) / (std/rescale)) and returns a frozen `PreparedVideo`.
- `PreparedVideo.groups`: one `FrameGroup` per two consecutive sampled frames (T0 != T1, no duplication
  except transformers' own odd-count padding), each with pixel_patches [gh*gw, C*T*P*P] in the same 2x2
  merge-block row order as edge/vision/image.py, grid_thw (1, gh, gw), merged rows x cols (LLM tokens in
  raster order), and its timestamp (the group's first frame index / fps) with the text f"{ts:.1f} seconds".
  The groups concatenated equal transformers' `pixel_values_videos`; `video_grid_thw` is (groups, gh, gw).
- The prompt for one clip (what transformers' processor expands `<|video|>` into) is, per group:
  `<|begin_of_image|>` + `<|image|>` x n_tokens + `<|end_of_image|>` + timestamp text; see `prompt_text`.
- `max_video_tokens` (per request) bounds the image tokens of the clip: it caps smart_resize's pixel budget
  (tokens * factor^2 * temporal_patch_size pixels, the unit transformers counts in); a clip that needs more even
  at the smallest size raises VideoTokenBudgetError saying how many frames would fit.
- Cache keys: `PreparedVideo.cache_key` = sha256(content hash, sampling options, indices, config, size);
  `FrameGroup.cache_key` adds the group's position, so equal keys mean equal patches.
- `VideoConfig.from_video_preprocessor_config(cfg)`: the checkpoint's video_preprocessor_config.json when the
  checkpoint has one, else transformers' `Glm46VVideoProcessor` class defaults (listed below; a test checks
  them against transformers).
Pure functions; no module-level mutable state.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge.errors import CheckpointError, InputError, VideoError, VideoTokenBudgetError
from edge.vision.image import PatchConfig
from edge.vision.resample import resize_bicubic_aa
from edge.vision.video import VideoLimits, VideoMetadata, decode_frames, open_video, probe
from edge.vision.video_sampling import SamplingOptions, sample_frames

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PILImageResampling.BICUBIC, transformers' video default (the only one implemented)
MAX_ASPECT_RATIO = 200
BEGIN_IMAGE, IMAGE, END_IMAGE = "<|begin_of_image|>", "<|image|>", "<|end_of_image|>"


@dataclass(frozen=True)
class VideoConfig(PatchConfig):
    """Video preprocessing settings; min/max_pixels are HF's size.shortest_edge/longest_edge and count every
    sampled frame (temporal factor rounding included). Defaults: transformers' Glm46VVideoProcessor."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 112 * 112
    max_pixels: int = 28 * 28 * 2 * 30000
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    @classmethod
    def from_video_preprocessor_config(cls, cfg: Mapping | None) -> VideoConfig:
        """From a checkpoint's video_preprocessor_config.json dict; None gives the class defaults."""
        cfg = cfg or {}
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb", "do_sample_frames"):
            if cfg.get(flag, True) is not True:
                raise CheckpointError(f"video_preprocessor_config {flag}={cfg[flag]!r}; only true is supported")
        if int(cfg.get("resample", BICUBIC)) != BICUBIC:
            raise CheckpointError(f"video_preprocessor_config resample={cfg['resample']!r}; "
                                  "only bicubic (3) is supported")
        size = cfg.get("size") or {}
        out = cls._from_json(cfg, size.get("shortest_edge", cls.min_pixels), size.get("longest_edge", cls.max_pixels),
                             "video_preprocessor_config")
        if out.temporal_patch_size != 2:
            raise CheckpointError(f"video_preprocessor_config temporal_patch_size={out.temporal_patch_size}; "
                                  "GLM-4.6V pairs frames (2)")
        return out



def smart_resize(num_frames: int, height: int, width: int, *, temporal_factor: int = 2, factor: int = 28,
                 min_pixels: int = 112 * 112, max_pixels: int = 28 * 28 * 2 * 30000) -> tuple[int, int]:
    """(height, width) for all frames of a clip, as transformers' glm46v video `smart_resize`."""
    if num_frames < temporal_factor:
        raise VideoError(f"{num_frames} sampled frame(s); at least {temporal_factor} are needed")
    if height <= 0 or width <= 0:
        raise VideoError(f"video frames are {width}x{height}; both sides must be at least 1")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise VideoError(f"video aspect ratio {max(height, width) / min(height, width):.1f}:1; "
                         f"at most {MAX_ASPECT_RATIO}:1 is allowed")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def check_budget(max_video_tokens: int | None) -> None:
    if max_video_tokens is not None and (isinstance(max_video_tokens, bool) or not isinstance(max_video_tokens, int)
                                         or max_video_tokens < 1):
        raise InputError(f"max_video_tokens must be a positive integer, got {max_video_tokens!r}")


def plan_size(num_frames: int, height: int, width: int, config: VideoConfig,
              max_video_tokens: int | None = None) -> tuple[int, int]:
    """Resized (height, width) for `num_frames` sampled frames within the optional token budget. The budget is
    hard: if rounding up to the minimum size would pass it, the minimum is dropped (as edge/vision/image.py)."""
    check_budget(max_video_tokens)
    max_pixels = config.max_pixels
    if max_video_tokens is not None:
        max_pixels = min(max_pixels, max_video_tokens * config.pixels_per_token)
    kw = dict(temporal_factor=config.temporal_patch_size, factor=config.factor, max_pixels=max_pixels)
    h, w = smart_resize(num_frames, height, width, min_pixels=min(config.min_pixels, max_pixels), **kw)
    groups = num_frames // config.temporal_patch_size

    def tokens(h: int, w: int) -> int:
        return groups * (h // config.factor) * (w // config.factor)

    if max_video_tokens is None or tokens(h, w) <= max_video_tokens:
        return h, w
    h, w = smart_resize(num_frames, height, width, min_pixels=1, **kw)
    if tokens(h, w) <= max_video_tokens:
        return h, w
    per_group = tokens(h, w) // groups
    fit = max_video_tokens // per_group * config.temporal_patch_size
    raise VideoTokenBudgetError(
        f"{num_frames} sampled frames need at least {tokens(h, w)} video tokens ({w}x{h} pixels, {per_group} tokens "
        f"per pair of frames) but the budget is {max_video_tokens}; {fit} frames would fit"
        + (f" (ask for max_frames={fit})" if fit else "; raise the budget"),
        needed=tokens(h, w), allowed=max_video_tokens, frames_that_fit=fit)


@dataclass(frozen=True, eq=False)
class FrameGroup:
    pixel_patches: np.ndarray  # float32 [gh*gw, C*T*P*P], read-only; rows in 2x2 merge-block order
    grid_thw: tuple[int, int, int]  # (1, gh, gw)
    n_tokens: int  # merged_rows * merged_cols
    merged_rows: int
    merged_cols: int
    frame_indices: tuple[int, int]  # the two sampled frames (T0, T1)
    timestamp: float  # first frame index / fps
    timestamp_text: str  # f"{timestamp:.1f} seconds", written after the group's <|end_of_image|>
    cache_key: str


@dataclass(frozen=True, eq=False)
class PreparedVideo:
    groups: tuple[FrameGroup, ...]
    metadata: VideoMetadata
    frame_indices: tuple[int, ...]  # sampled, padded to even, in order
    resized_size: tuple[int, int]  # (w, h)
    n_tokens: int  # image tokens of all groups (timestamp text and markers not counted)
    sha256: str  # of the clip bytes
    cache_key: str

    @property
    def n_frames(self) -> int:
        return len(self.frame_indices)

    @property
    def video_grid_thw(self) -> tuple[int, int, int]:
        _, gh, gw = self.groups[0].grid_thw
        return len(self.groups), gh, gw

    def pixel_values_videos(self) -> np.ndarray:
        """transformers' layout: the groups' patches concatenated, [groups*gh*gw, C*T*P*P]."""
        return np.concatenate([g.pixel_patches for g in self.groups])

    def prompt_text(self) -> str:
        """What transformers' processor puts in place of `<|video|>` (between begin/end_of_video)."""
        return "".join(f"{BEGIN_IMAGE}{IMAGE * g.n_tokens}{END_IMAGE}{g.timestamp_text}" for g in self.groups)


def normalize(frames: np.ndarray, config: VideoConfig) -> np.ndarray:
    """uint8 [..., 3] -> float32, as transformers' fused rescale+normalize: (x - mean/r) / (std/r) in float32."""
    mean = np.asarray(config.image_mean, np.float32) * np.float32(1.0 / config.rescale_factor)
    std = np.asarray(config.image_std, np.float32) * np.float32(1.0 / config.rescale_factor)
    return (frames.astype(np.float32) - mean) / std


def patchify_pair(pair: np.ndarray, config: VideoConfig) -> np.ndarray:
    """float32 [T, h, w, C] (T = temporal_patch_size) -> [gh*gw, C*T*P*P] in merge-block order."""
    t, h, w, c = pair.shape
    p, m = config.patch_size, config.merge_size
    gh, gw = h // p, w // p
    x = pair.reshape(t, gh // m, m, p, gw // m, m, p, c)  # T bh mh ph bw mw pw C
    x = x.transpose(1, 4, 2, 5, 7, 0, 3, 6)  # bh bw mh mw C T ph pw
    return np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p))


def timestamp_text(seconds: float) -> str:
    return f"{seconds:.1f} seconds"


def prepare_video(source: bytes | bytearray | memoryview | str | os.PathLike, config: VideoConfig | None = None, *,
                  options: SamplingOptions = SamplingOptions(), max_video_tokens: int | None = None,
                  limits: VideoLimits = VideoLimits()) -> PreparedVideo:
    """Decode, sample, resize, normalise and group one clip (see the module contract)."""
    config = config or VideoConfig()
    check_budget(max_video_tokens)
    src = open_video(source, limits)
    meta = probe(src, limits)
    indices = sample_frames(meta.total_frames, meta.fps, meta.duration,
                            temporal_patch_size=config.temporal_patch_size, options=options)
    h, w = plan_size(len(indices), meta.height, meta.width, config, max_video_tokens)
    key = hashlib.sha256(f"{src.sha256}|{options.key()}|{indices}|{config.fingerprint()}|{w}x{h}".encode()).hexdigest()
    rows, cols, t = h // config.factor, w // config.factor, config.temporal_patch_size
    pairs = [tuple(indices[g * t:(g + 1) * t]) for g in range(len(indices) // t)]
    groups, frames = [], {}
    for index, rgb in decode_frames(src, indices, meta, limits):  # build each group as soon as its frames exist
        frames[index] = resize_bicubic_aa(rgb, h, w)
        while len(groups) < len(pairs) and all(i in frames for i in pairs[len(groups)]):
            g, pair = len(groups), pairs[len(groups)]
            patches = patchify_pair(normalize(np.stack([frames[i] for i in pair]), config), config)
            patches.flags.writeable = False
            ts = pair[0] / meta.fps
            grid = (1, h // config.patch_size, w // config.patch_size)
            groups.append(FrameGroup(pixel_patches=patches, grid_thw=grid,
                                     n_tokens=rows * cols, merged_rows=rows, merged_cols=cols, frame_indices=pair,
                                     timestamp=ts, timestamp_text=timestamp_text(ts),
                                     cache_key=hashlib.sha256(f"{key}|group{g}".encode()).hexdigest()))
            for i in pair:
                frames.pop(i, None)
    return PreparedVideo(groups=tuple(groups), metadata=meta, frame_indices=tuple(indices), resized_size=(w, h),
                         n_tokens=rows * cols * len(groups), sha256=src.sha256, cache_key=key)
