"""The GLM-4.6V projector in numpy: ViT output [N, hidden] -> decoder image embeddings [N/m^2, out_hidden].

Loads `projector-<QUANT>.gguf` (written by `convert/projector_gguf.py`; F32, F16 or Q8_0, dequantized to
float32 once at load) and computes, for each block of m*m consecutive rows (one 2x2 merge block):

    concat(rows) @ downsample.T + b -> @ proj.T -> LayerNorm(eps, weight, bias) -> GELU(erf)
    -> down(silu(gate(h)) * up(h))

matching transformers' `Glm4vVisionModel` downsample + `Glm4vVisionPatchMerger` in float32. The exact
(erf) GELU uses `erf` below: float64 Chebyshev fits of erf(z)/z (|z| < 2) and exp(z^2) erfc(z)
(2 <= |z| < 6), made at import from `math.erf`/`math.erfc`; absolute error below 1e-13, about 70 ms per
6M values (numpy has no erf; scipy is not a dependency).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from edge.errors import BundleError, VisionError

ARCH = "glm-edge-projector"
FORMAT_VERSION = 1
ROW_CHUNK = 1024  # merged rows per step: bounds the [rows, intermediate] temporaries
_REQUIRED = (
    "downsample.weight", "downsample.bias", "merger.proj.weight", "merger.post_projection_norm.weight",
    "merger.post_projection_norm.bias", "merger.gate_proj.weight", "merger.up_proj.weight",
    "merger.down_proj.weight",
)


def _cheb_fit(f, deg: int, lo: float, hi: float) -> np.ndarray:
    """Chebyshev coefficients (on [-1, 1] mapped to [lo, hi]) interpolating scalar f at deg+1 nodes."""
    return np.polynomial.chebyshev.chebinterpolate(
        lambda u: np.array([f(lo + (v + 1) * (hi - lo) / 2) for v in np.atleast_1d(u)]), deg
    )


def _erf_small_poly(deg: int, split: float) -> np.ndarray:
    """Power-series coefficients in t = z^2 of erf(z)/z on |z| < split (Horner is 3x cheaper than Clenshaw)."""
    cheb = _cheb_fit(lambda t: math.erf(math.sqrt(t)) / math.sqrt(t), deg, 0.0, split**2)
    in_u = np.polynomial.Polynomial(np.polynomial.chebyshev.cheb2poly(cheb))
    coef = in_u(np.polynomial.Polynomial([-1.0, 2.0 / split**2])).coef  # substitute u = 2t/split^2 - 1
    coef.setflags(write=False)
    return coef


_ERF_SPLIT, _ERF_ONE = 2.0, 6.0  # erfc(6) < 2.2e-17: erf is 1.0 in float64 beyond
_ERF_SMALL = _erf_small_poly(14, _ERF_SPLIT)
_ERFCX_LARGE = _cheb_fit(lambda z: math.exp(z * z) * math.erfc(z), 18, _ERF_SPLIT, _ERF_ONE)
_ERFCX_LARGE.setflags(write=False)
ERF_CHUNK = 1 << 15  # elements per step: temporaries stay in cache (17x faster than whole-array ops)


def _erf_chunk(x: np.ndarray, out: np.ndarray) -> None:
    t = np.square(x)
    np.minimum(t, _ERF_SPLIT**2, out=t)
    out[...] = _ERF_SMALL[-1]
    for c in _ERF_SMALL[-2::-1]:
        out *= t
        out += c
    out *= x
    large = np.abs(x) >= _ERF_SPLIT
    if large.any():
        z = np.abs(x[large])
        u = (2.0 * np.minimum(z, _ERF_ONE) - (_ERF_SPLIT + _ERF_ONE)) / (_ERF_ONE - _ERF_SPLIT)
        v = 1.0 - np.exp(-z * z) * np.polynomial.chebyshev.chebval(u, _ERFCX_LARGE)
        v[z >= _ERF_ONE] = 1.0
        out[large] = np.copysign(v, x[large])


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorized float64 error function (absolute error < 1e-13)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    out = np.empty_like(flat)
    for s in range(0, flat.size, ERF_CHUNK):
        _erf_chunk(flat[s : s + ERF_CHUNK], out[s : s + ERF_CHUNK])
    return out.reshape(np.shape(x))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x), evaluated in float64 chunk by chunk; returns float32."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    buf = np.empty(min(ERF_CHUNK, flat.size), dtype=np.float64)
    for s in range(0, flat.size, ERF_CHUNK):
        x64 = flat[s : s + ERF_CHUNK].astype(np.float64)
        e = buf[: x64.size]
        _erf_chunk(x64 * (1.0 / math.sqrt(2.0)), e)
        e += 1.0
        e *= x64
        e *= 0.5
        out[s : s + ERF_CHUNK] = e
    return out.reshape(np.shape(x))


def _silu(x: np.ndarray) -> np.ndarray:
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))  # x * sigmoid(x), no overflow for large |x|


def _field(reader: GGUFReader, key: str, path: Path):
    field = reader.get_field(key)
    if field is None:
        raise BundleError(f"{path}: GGUF key {key!r} is missing; reconvert the bundle")
    return field.contents()


def _tensor(t) -> np.ndarray:
    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        data = np.array(t.data, dtype=np.float32)
    else:
        data = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32, copy=False)
    return data.reshape(tuple(int(d) for d in reversed(t.shape)))


class Projector:
    """Projector weights in float32 and the forward pass; call it on one image's ViT output."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise BundleError(f"{self.path}: projector file is missing")
        try:
            reader = GGUFReader(self.path)
        except (ValueError, OSError) as e:
            raise BundleError(f"{self.path}: not a readable GGUF file ({e})") from e
        arch = _field(reader, "general.architecture", self.path)
        if arch != ARCH:
            raise BundleError(f"{self.path}: GGUF architecture {arch!r}, expected {ARCH!r}")
        version = _field(reader, f"{ARCH}.format_version", self.path)
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{self.path}: projector format version {version}, this runtime reads {FORMAT_VERSION}; "
                "reconvert the checkpoint with this glm-edge version"
            )
        self.hidden_size = int(_field(reader, f"{ARCH}.vision_hidden_size", self.path))
        self.out_hidden_size = int(_field(reader, f"{ARCH}.out_hidden_size", self.path))
        self.intermediate_size = int(_field(reader, f"{ARCH}.intermediate_size", self.path))
        self.merge = int(_field(reader, f"{ARCH}.spatial_merge_size", self.path))
        self.eps = float(_field(reader, f"{ARCH}.layer_norm_eps", self.path))
        self.types = {t.name: t.tensor_type.name for t in reader.tensors}
        w = {t.name: _tensor(t) for t in reader.tensors}
        missing = [n for n in _REQUIRED if n not in w]
        if missing:
            raise BundleError(f"{self.path}: projector tensors missing: {missing}")
        out, inter, k = self.out_hidden_size, self.intermediate_size, self.merge**2 * self.hidden_size
        expected = {
            "downsample.weight": (out, k), "downsample.bias": (out,), "merger.proj.weight": (out, out),
            "merger.post_projection_norm.weight": (out,), "merger.post_projection_norm.bias": (out,),
            "merger.gate_proj.weight": (inter, out), "merger.up_proj.weight": (inter, out),
            "merger.down_proj.weight": (out, inter),
        }
        for name, shape in expected.items():
            if w[name].shape != shape:
                raise BundleError(f"{self.path}: tensor {name} has shape {list(w[name].shape)}, expected {list(shape)}")
        self.weights = w

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        y = x @ self.weights[name + ".weight"].T
        bias = self.weights.get(name + ".bias")
        return y + bias if bias is not None else y

    def _merged(self, x: np.ndarray) -> np.ndarray:
        h = self._linear(x, "downsample")
        h = self._linear(h, "merger.proj").astype(np.float64)
        mean = h.mean(axis=-1, keepdims=True)
        var = np.square(h - mean).mean(axis=-1, keepdims=True)
        h = ((h - mean) / np.sqrt(var + self.eps)).astype(np.float32)
        norm = "merger.post_projection_norm"
        h = gelu(h * self.weights[norm + ".weight"] + self.weights[norm + ".bias"])
        act = _silu(self._linear(h, "merger.gate_proj")) * self._linear(h, "merger.up_proj")
        return self._linear(act, "merger.down_proj")

    def __call__(self, vision_hidden: np.ndarray) -> np.ndarray:
        """[N, hidden] ViT output (merge-block row order) -> [N / merge^2, out_hidden] float32."""
        x = np.asarray(vision_hidden, dtype=np.float32)
        group = self.merge**2
        if x.ndim != 2 or x.shape[1] != self.hidden_size or x.shape[0] % group:
            raise VisionError(
                f"projector input has shape {list(x.shape)}, "
                f"expected [N, {self.hidden_size}] with N a multiple of {group}"
            )
        rows = x.reshape(-1, group * self.hidden_size)
        out = np.empty((rows.shape[0], self.out_hidden_size), dtype=np.float32)
        for start in range(0, rows.shape[0], ROW_CHUNK):
            out[start : start + ROW_CHUNK] = self._merged(rows[start : start + ROW_CHUNK])
        return out
