"""Antialiased bicubic resize of uint8 RGB frames, as torch computes it for torchvision on CPU (numpy only).

transformers' video processors resize uint8 frame tensors with `torchvision.transforms.v2.functional.resize`
(bicubic, antialias=True). On CPU torchvision hands the uint8 tensor straight to
`torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)` (its
`_do_native_uint8_resize_on_cpu` is true for bicubic), whose uint8 kernel is Pillow's separable resampler with
16-bit fixed-point weights: a horizontal pass to a uint8 intermediate, then a vertical pass. This module
reproduces that kernel:
- per axis, scale = in/out; support = 2 * max(scale, 1); for output i, center = scale * (i + 0.5),
  taps xmin = max(int(center - support + 0.5), 0) .. min(int(center + support + 0.5), in) - 1, weights
  cubic(a=-0.5)((x - center + 0.5) / max(scale, 1)) normalised to sum 1 (in float64);
- weights become int16: precision p = the largest p < 22 with int(0.5 + wmax * 2^(p+1)) < 2^15, wmax the
  largest weight of the axis; w_int = round-half-away(w * 2^p);
- out = clip((sum(pixel * w_int) + 2^(p-1)) >> p, 0, 255) per pass.
Pillow's own BICUBIC (22-bit weights) differs from this by up to 2 LSB; the float path torchvision takes on
GPU or without AVX2 (interpolate on float32, clamp, round) differs by up to ~20 LSB on noisy frames, because it
does not clip the intermediate. Measured differences against torch are in tests/test_video.py.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_A = -0.5  # torch's antialiased bicubic uses Pillow's a=-0.5 (the non-antialiased path uses -0.75)


def _cubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((_A + 2.0) * x - (_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * _A
    return 0.0


@lru_cache(maxsize=64)
def axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(start index [out], int32 weights [out, K], precision bits) for one axis; K = taps per output."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, taps), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), taps)
        w = [_cubic((j + xmin - center + 0.5) * invscale) for j in range(xsize)]
        total = sum(w)
        if total != 0.0:
            w = [v / total for v in w]
        starts[i] = xmin
        weights[i, :xsize] = w
    wmax = float(weights.max())
    precision = 0
    while precision < 22 and int(0.5 + wmax * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    ints = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return starts, ints, precision


def _pass(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass over `axis` (0 = rows, 1 = columns) of a uint8 [H, W, C] array."""
    in_size = x.shape[axis]
    starts, w, precision = axis_weights(in_size, out_size)
    shape = list(x.shape)
    shape[axis] = out_size
    acc = np.full(shape, 1 << (precision - 1), np.int32)
    for k in range(w.shape[1]):
        idx = np.minimum(starts + k, in_size - 1)  # taps past the edge carry weight 0
        wk = w[:, k]
        if not wk.any():
            continue
        taken = np.take(x, idx, axis=axis).astype(np.int32)
        acc += taken * (wk[:, None, None] if axis == 0 else wk[None, :, None])
    return np.clip(acc >> precision, 0, 255).astype(np.uint8)


def resize_bicubic_aa(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C], horizontal pass then vertical (see the module contract)."""
    if frame.dtype != np.uint8 or frame.ndim != 3:
        raise ValueError(f"expected a uint8 [H, W, C] frame, got {frame.dtype} {frame.shape}")
    out = frame
    if width != frame.shape[1]:
        out = _pass(out, 1, width)
    if height != frame.shape[0]:
        out = _pass(out, 0, height)
    return np.ascontiguousarray(out)
