"""The ONNX vision encoder: onnxruntime session, its input contract, and its shape-dependent inputs.

Contract of a `vision-encoder-<DTYPE>.onnx` (written by `convert/vision_onnx.py`, one image per call):

    pixel_patches  float32 [num_patches, C*T*P*P]  rows in 2x2 merge-block order (edge/vision/image.py)
    pos_interp     float32 [num_patches, G*G]      bicubic weights over the G x G position table
    rope_cos       float32 [num_patches, head_dim] 2-D rotary cos, rotate-half layout
    rope_sin       float32 [num_patches, head_dim]
    ->  vision_hidden float32 [num_patches, hidden]  (after post_layernorm, before the projector)

The learned position table stays inside the model as a weight; the runtime only supplies what depends on
the grid (gh, gw): the resampling weights (torch `grid_sample` bicubic, A=-0.75, align_corners=False,
border clamp) and the rotary cos/sin, both computed here in numpy and cached per grid. The numbers needed
for that (hidden size, head dim, table side, merge size, rope theta) are read from the model's metadata,
so a `.onnx` file is self-describing. At load, the session's inputs/outputs are checked against the
expected description (the manifest's, when given): a mismatch raises `VisionError`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from edge.errors import VisionError

if TYPE_CHECKING:  # pragma: no cover
    from edge.vision.projector import ProjectorLike

log = logging.getLogger(__name__)

INPUT_NAMES = ("pixel_patches", "pos_interp", "rope_cos", "rope_sin")
OUTPUT_NAME = "vision_hidden"
PATCH_DIM = "num_patches"
META_PREFIX = "glm_edge.vision."
FORMAT_VERSION = 1
BICUBIC_A = -0.75

# Short names accepted for `provider`, and the order `auto` tries them in. TensorRT is never picked by
# `auto`: it builds an engine per new input shape, which a dynamic patch count makes slow; ask for it.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
}
AUTO_ORDER = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}


@dataclass(frozen=True)
class VisionMeta:
    """Numbers the runtime needs besides the graph; stored as `glm_edge.vision.*` model metadata."""

    hidden_size: int
    num_heads: int
    head_dim: int
    in_features: int
    pos_grid: int  # side G of the learned G x G position table
    spatial_merge_size: int
    rope_theta: float
    dtype: str  # weight precision of the graph: fp32 | fp16 | int8
    format_version: int = FORMAT_VERSION

    def to_props(self) -> dict[str, str]:
        return {META_PREFIX + f.name: str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> VisionMeta:
        values = {}
        for f in fields(cls):
            key = META_PREFIX + f.name
            if key not in props:
                raise VisionError(f"{where}: metadata key {key!r} is missing; reconvert with glm-edge convert")
            try:
                values[f.name] = {"int": int, "float": float, "str": str}[f.type](props[key])
            except ValueError:
                raise VisionError(f"{where}: metadata {key}={props[key]!r} is not a valid {f.type}") from None
        meta = cls(**values)
        if meta.format_version != FORMAT_VERSION:
            raise VisionError(
                f"{where}: vision format version {meta.format_version}, this runtime reads {FORMAT_VERSION}; "
                "reconvert the checkpoint with this glm-edge version"
            )
        return meta


def io_description(meta: VisionMeta) -> dict:
    """Every input/output of the encoder: name, dtype, shape (str = symbolic dim). For the manifest."""
    n = PATCH_DIM
    spec = lambda name, width: {"name": name, "dtype": "float32", "shape": [n, width]}  # noqa: E731
    return {
        "inputs": [
            spec("pixel_patches", meta.in_features),
            spec("pos_interp", meta.pos_grid * meta.pos_grid),
            spec("rope_cos", meta.head_dim),
            spec("rope_sin", meta.head_dim),
        ],
        "outputs": [spec(OUTPUT_NAME, meta.hidden_size)],
    }


# --- shape-dependent inputs (pure numpy; depend only on the grid) -------------------------------


def block_positions(gh: int, gw: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each patch in 2x2 merge-block order: blocks raster, then dy, dx inside a block."""
    rows = np.arange(gh).reshape(gh // merge, merge, 1, 1)
    cols = np.arange(gw).reshape(1, 1, gw // merge, merge)
    r = np.broadcast_to(rows, (gh // merge, merge, gw // merge, merge)).transpose(0, 2, 1, 3).reshape(-1)
    c = np.broadcast_to(cols, (gh // merge, merge, gw // merge, merge)).transpose(0, 2, 1, 3).reshape(-1)
    return r, c


def bicubic_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out_size, in_size] weights of torch bicubic sampling (A=-0.75, align_corners=False, border clamp)."""
    x = (np.arange(out_size, dtype=np.float64) + 0.5) * in_size / out_size - 0.5
    x0 = np.floor(x)
    t = x - x0
    a = BICUBIC_A
    taps = [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
    ]
    m = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    for k, w in enumerate(taps):
        idx = np.clip(x0.astype(np.int64) - 1 + k, 0, in_size - 1)
        np.add.at(m, (rows, idx), w)
    return m


def pos_interp(gh: int, gw: int, grid: int, merge: int) -> np.ndarray:
    """[gh*gw, grid*grid] float32: row n resamples the position table at patch n (block order)."""
    wy, wx = bicubic_matrix(gh, grid), bicubic_matrix(gw, grid)
    r, c = block_positions(gh, gw, merge)
    return (wy[r][:, :, None] * wx[c][:, None, :]).reshape(gh * gw, grid * grid).astype(np.float32)


def rope_cos_sin(gh: int, gw: int, head_dim: int, theta: float, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, head_dim] float32 cos/sin: angles [row*inv, col*inv] repeated twice, inv = theta^(-2j/(head_dim/2))."""
    half = head_dim // 2
    inv = (1.0 / theta ** (np.arange(0, half, 2, dtype=np.float64) / half)).astype(np.float32)
    r, c = block_positions(gh, gw, merge)
    freqs = np.concatenate([r[:, None].astype(np.float32) * inv, c[:, None].astype(np.float32) * inv], axis=1)
    emb = np.concatenate([freqs, freqs], axis=1)
    return np.cos(emb), np.sin(emb)


# --- providers ----------------------------------------------------------------------------------


def select_providers(choice: str = "auto", available: list[str] | None = None) -> list[str]:
    """Provider list for a session: the requested (or best available) one, then CPU as fallback."""
    available = list(ort.get_available_providers() if available is None else available)
    if choice == "auto":
        best = next((p for p in AUTO_ORDER if p in available), None)
        if best is None:
            raise VisionError(f"no usable onnxruntime execution provider; available: {available}")
        log.info("vision encoder: provider auto -> %s (available: %s)", best, ", ".join(available))
    else:
        best = PROVIDER_ALIASES.get(choice.lower(), choice)
        if best not in available:
            names = sorted({k for k, v in PROVIDER_ALIASES.items() if v in available} | {"auto"})
            raise VisionError(
                f"execution provider {choice!r} is not available in this onnxruntime build; "
                f"choose one of {names} (installed providers: {available})"
            )
    return [best] if best == "CPUExecutionProvider" else [best, "CPUExecutionProvider"]


# --- the session ----------------------------------------------------------------------------------


def _session_io(session: ort.InferenceSession) -> dict:
    def one(arg):
        shape = [d if isinstance(d, int) else str(d) for d in arg.shape]
        return {"name": arg.name, "dtype": _ORT_TYPES.get(arg.type, arg.type), "shape": shape}

    return {"inputs": [one(a) for a in session.get_inputs()], "outputs": [one(a) for a in session.get_outputs()]}


def check_io(actual: dict, expected: dict, where: str) -> None:
    """Raise VisionError naming the first difference between two io descriptions."""
    for kind in ("inputs", "outputs"):
        got = {a["name"]: a for a in actual.get(kind, [])}
        want = {a["name"]: a for a in expected.get(kind, [])}
        if set(got) != set(want):
            raise VisionError(f"{where}: {kind} are {sorted(got)}, expected {sorted(want)}; reconvert the bundle")
        for name, w in want.items():
            g = got[name]
            if g["dtype"] != w["dtype"] or list(g["shape"]) != list(w["shape"]):
                raise VisionError(
                    f"{where}: {kind[:-1]} {name!r} is {g['dtype']}{list(g['shape'])}, "
                    f"expected {w['dtype']}{list(w['shape'])}; reconvert the bundle"
                )


class VisionEncoder:
    """One onnxruntime session over a vision-encoder ONNX file; `encode` runs one image."""

    def __init__(
        self,
        path: str | Path,
        *,
        provider: str = "auto",
        threads: int | None = None,
        expected_io: dict | None = None,
        cache_entries: int = 8,
        cache_bytes: int = 256 << 20,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise VisionError(f"{self.path}: vision encoder model file is missing")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or 0)  # 0: onnxruntime's default (physical cores)
        options.inter_op_num_threads = 1
        # The encoder shares the machine with llama.cpp's threads: do not busy-wait between runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = select_providers(provider)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own unexported exception types
            raise VisionError(f"{self.path}: onnxruntime could not load the vision encoder: {e}") from e
        self.providers = self.session.get_providers()
        if self.providers[0] != providers[0]:  # e.g. CUDA listed but its libraries failed to load
            log.warning("vision encoder: asked for %s, onnxruntime runs on %s", providers[0], self.providers[0])
        self.meta = VisionMeta.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        actual = _session_io(self.session)
        check_io(actual, io_description(self.meta), str(self.path))
        if expected_io is not None:
            check_io(actual, expected_io, f"{self.path} (against the manifest)")
        self._cache: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self._cache_entries, self._cache_bytes = int(cache_entries), int(cache_bytes)
        self._lock = threading.Lock()  # sessions run concurrently; the cache is the only shared state

    def grid_inputs(self, gh: int, gw: int) -> dict[str, np.ndarray]:
        """pos_interp / rope_cos / rope_sin for a gh x gw grid; cached, least recently used evicted first."""
        key = (gh, gw)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        m = self.meta
        cos, sin = rope_cos_sin(gh, gw, m.head_dim, m.rope_theta, m.spatial_merge_size)
        value = {"pos_interp": pos_interp(gh, gw, m.pos_grid, m.spatial_merge_size), "rope_cos": cos, "rope_sin": sin}
        for array in value.values():
            array.setflags(write=False)
        with self._lock:
            self._cache[key] = value
            while self._cache and (
                len(self._cache) > self._cache_entries
                or sum(a.nbytes for v in self._cache.values() for a in v.values()) > self._cache_bytes
            ):
                self._cache.popitem(last=False)
        return value

    def encode(self, prepared_patches: np.ndarray, grid_thw) -> np.ndarray:
        """[gh*gw, hidden] float32 ViT output for one image's patches ([gh*gw, C*T*P*P], block order)."""
        t, gh, gw = (int(v) for v in np.asarray(grid_thw).reshape(-1))
        merge = self.meta.spatial_merge_size
        if t != 1:
            raise VisionError(
                f"grid_thw {[t, gh, gw]}: one image (t=1) per call; encode video frame pairs one at a time"
            )
        if gh <= 0 or gw <= 0 or gh % merge or gw % merge:
            raise VisionError(f"grid_thw {[t, gh, gw]}: gh and gw must be positive multiples of {merge}")
        patches = np.ascontiguousarray(prepared_patches, dtype=np.float32)
        if patches.shape != (gh * gw, self.meta.in_features):
            raise VisionError(
                f"patches have shape {list(patches.shape)}, expected {[gh * gw, self.meta.in_features]} "
                f"for grid_thw {[t, gh, gw]}"
            )
        feeds = {"pixel_patches": patches, **self.grid_inputs(gh, gw)}
        try:
            (out,) = self.session.run([OUTPUT_NAME], feeds)
        except Exception as e:  # onnxruntime raises its own unexported exception types
            raise VisionError(f"vision encoder failed on grid {[gh, gw]}: {e}") from e
        return out


def image_embeddings(
    encoder: VisionEncoder, projector: ProjectorLike, prepared_patches: np.ndarray, grid_thw
) -> np.ndarray:
    """[gh*gw/4, out_hidden] decoder input embeddings of one image: ViT then projector."""
    hidden = encoder.encode(prepared_patches, grid_thw)
    if projector.hidden_size != encoder.meta.hidden_size:
        raise VisionError(
            f"projector expects vision width {projector.hidden_size}, the encoder gives {encoder.meta.hidden_size}"
        )
    return projector(hidden)
