"""Lazy, torch-free access to an HF GLM-4.6V-Flash checkpoint folder.

`Checkpoint(path)` validates `config.json` (dense GLM-4.6V / GLM-4.1V layout only), indexes every tensor of
the safetensors shards from their headers, and returns tensors one at a time as float32 numpy arrays
(bf16 widened by a bit shift), memory-mapped so that a 20 GB checkpoint streams through a few GB of RAM.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.safetensors_writer import to_bf16_bits
from edge.errors import CheckpointError

ACCEPTED_ARCHITECTURES = {"Glm4vForConditionalGeneration", "Glm46VForConditionalGeneration"}
ACCEPTED_MODEL_TYPES = {"glm4v", "glm46v"}
# Older checkpoints (transformers 4.x saves of GLM-4.1V/4.6V) spell the prefixes differently; tensors are
# indexed under the transformers 5 names.
LEGACY_PREFIXES = (
    ("visual.", "model.visual."),
    ("model.layers.", "model.language_model.layers."),
    ("model.embed_tokens.", "model.language_model.embed_tokens."),
    ("model.norm.", "model.language_model.norm."),
)
_DTYPES = {"BF16": None, "F16": np.float16, "F32": np.float32, "F64": np.float64}
_ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
ROW_BLOCK_BYTES = 64 << 20  # float32 bytes of one row block in iter_rows: bounded conversion memory


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in the file
    nbytes: int


def _rope(section: dict) -> dict:
    """Rope parameters from either spelling: transformers 5 `rope_parameters` or older top-level keys."""
    params = dict(section.get("rope_parameters") or {})
    legacy = section.get("rope_scaling") or {}
    for key in ("rope_theta", "partial_rotary_factor"):
        if key not in params and key in section:
            params[key] = section[key]
    if "mrope_section" not in params and "mrope_section" in legacy:
        params["mrope_section"] = legacy["mrope_section"]
    return params


@dataclass(frozen=True)
class TextSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: tuple[int, ...]
    max_position_embeddings: int

    @property
    def rotary_dims(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@dataclass(frozen=True)
class VisionSpec:
    hidden_size: int
    depth: int
    num_heads: int
    out_hidden_size: int
    intermediate_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    image_size: int
    in_channels: int
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    text: TextSpec
    vision: VisionSpec
    image_token_id: int
    image_start_token_id: int
    image_end_token_id: int
    tie_word_embeddings: bool


def _need(section: dict, key: str, where: str):
    if key not in section:
        raise CheckpointError(f"config.json: `{where}.{key}` is missing; a GLM-4.6V-Flash config has it")
    return section[key]


def parse_config(config: dict) -> ModelSpec:
    """Validate an HF config dict and read the numbers glm-edge needs (never hard-coded)."""
    arch = (config.get("architectures") or [None])[0]
    model_type = config.get("model_type")
    if model_type == "glm4v_moe" or (arch and "Moe" in arch):
        raise CheckpointError(
            f"config.json: architecture {arch or model_type} is the MoE GLM-4.5V/4.6V (106B); "
            "glm-edge supports the dense GLM-4.6V-Flash / GLM-4.1V layout only"
        )
    if arch not in ACCEPTED_ARCHITECTURES and model_type not in ACCEPTED_MODEL_TYPES:
        raise CheckpointError(
            f"config.json: architecture {arch!r} (model_type {model_type!r}) is not supported; "
            f"expected one of {sorted(ACCEPTED_ARCHITECTURES)}"
        )
    t = _need(config, "text_config", "")
    v = _need(config, "vision_config", "")
    rope = _rope(t)
    heads = _need(t, "num_attention_heads", "text_config")
    hidden = _need(t, "hidden_size", "text_config")
    text = TextSpec(
        hidden_size=hidden,
        num_layers=_need(t, "num_hidden_layers", "text_config"),
        num_heads=heads,
        num_kv_heads=t.get("num_key_value_heads") or heads,
        head_dim=t.get("head_dim") or hidden // heads,
        intermediate_size=_need(t, "intermediate_size", "text_config"),
        vocab_size=_need(t, "vocab_size", "text_config"),
        rms_norm_eps=float(t.get("rms_norm_eps", 1e-5)),
        rope_theta=float(_need(rope, "rope_theta", "text_config.rope_parameters")),
        partial_rotary_factor=float(rope.get("partial_rotary_factor", 0.5)),
        mrope_section=tuple(_need(rope, "mrope_section", "text_config.rope_parameters")),
        max_position_embeddings=int(t.get("max_position_embeddings", 131072)),
    )
    vrope = _rope(v)
    vision = VisionSpec(
        hidden_size=_need(v, "hidden_size", "vision_config"),
        depth=_need(v, "depth", "vision_config"),
        num_heads=_need(v, "num_heads", "vision_config"),
        out_hidden_size=_need(v, "out_hidden_size", "vision_config"),
        intermediate_size=_need(v, "intermediate_size", "vision_config"),
        patch_size=v.get("patch_size", 14),
        temporal_patch_size=v.get("temporal_patch_size", 2),
        spatial_merge_size=v.get("spatial_merge_size", 2),
        image_size=v.get("image_size", 336),
        in_channels=v.get("in_channels", 3),
        rms_norm_eps=float(v.get("rms_norm_eps", 1e-5)),
        rope_theta=float(vrope.get("rope_theta", 10000.0)),
        attention_bias=bool(v.get("attention_bias", False)),
    )
    if sum(text.mrope_section) * 2 != text.rotary_dims:
        raise CheckpointError(
            f"config.json: mrope_section {list(text.mrope_section)} sums to {sum(text.mrope_section)} pairs "
            f"but the rotary dims are {text.rotary_dims} ({text.rotary_dims // 2} pairs)"
        )
    return ModelSpec(
        architecture=arch or model_type,
        text=text,
        vision=vision,
        image_token_id=_need(config, "image_token_id", ""),
        image_start_token_id=_need(config, "image_start_token_id", ""),
        image_end_token_id=_need(config, "image_end_token_id", ""),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is this an HF GLM-4.6V-Flash checkpoint folder?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def _read_header(file: Path) -> dict[str, TensorInfo]:
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 << 20):
            raise CheckpointError(f"{file}: corrupt safetensors header (claims {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{file}: corrupt safetensors header ({e})") from e
    infos = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = meta["dtype"]
        if dtype not in _DTYPES:
            raise CheckpointError(f"{file}: tensor {name} has dtype {dtype}; expected BF16, F16 or F32")
        begin, end = meta["data_offsets"]
        shape = tuple(meta["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]:
            raise CheckpointError(f"{file}: tensor {name} byte range does not match shape {shape}")
        if 8 + n + end > size:
            raise CheckpointError(
                f"{file}: truncated: tensor {name} ends at byte {8 + n + end} but the file has {size}; "
                "re-download this shard"
            )
        infos[name] = TensorInfo(name, dtype, shape, file, 8 + n + begin, end - begin)
    return infos


def canonical_name(name: str) -> str:
    for old, new in LEGACY_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


class Checkpoint:
    """A validated HF checkpoint folder with lazy float32 tensor access."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a folder; give the HF checkpoint folder")
        self.config = read_json(self.path / "config.json")
        self.spec = parse_config(self.config)
        self.tensors = self._index()

    def _index(self) -> dict[str, TensorInfo]:
        index_file = self.path / "model.safetensors.index.json"
        if index_file.is_file():
            weight_map = read_json(index_file).get("weight_map") or {}
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            weight_map = None
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors shards found")
        tensors: dict[str, TensorInfo] = {}
        for name in files:
            shard = self.path / name
            if not shard.is_file():
                raise CheckpointError(f"{shard}: shard listed in model.safetensors.index.json is missing")
            tensors.update(_read_header(shard))
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise CheckpointError(
                    f"{self.path}: {len(missing)} tensors of the index are in no shard (first: {missing[0]})"
                )
        return {canonical_name(name): info for name, info in tensors.items()}

    def has(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name} is missing from the checkpoint") from None

    def _checked(self, name: str, shape: tuple[int, ...] | None) -> TensorInfo:
        info = self._info(name)
        if shape is not None and tuple(shape) != info.shape:
            raise CheckpointError(
                f"{self.path}: tensor {name} has shape {list(info.shape)}, expected {list(shape)} from config.json"
            )
        return info

    def _raw(self, info: TensorInfo) -> np.ndarray:
        return np.memmap(info.file, dtype=np.uint8, mode="r", offset=info.start, shape=(info.nbytes,))

    @staticmethod
    def _float32(info: TensorInfo, raw: np.ndarray) -> np.ndarray:
        if info.dtype == "BF16":
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return raw.view(_DTYPES[info.dtype]).astype(np.float32)

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor `name` as a new float32 array; `shape`, when given, is checked."""
        info = self._checked(name, shape)
        return self._float32(info, self._raw(info)).reshape(info.shape)

    def iter_rows(self, name: str, shape: tuple[int, ...] | None = None, bf16_bits: bool = False,
                  max_bytes: int | None = None) -> Iterator[np.ndarray]:
        """Tensor `name` as consecutive blocks of rows (float32, or bf16 bit patterns with `bf16_bits`), each at
        most about `max_bytes` (default ROW_BLOCK_BYTES) as float32. Read with plain file reads, not a mapping:
        a 151552 x 4096 table then never sits in memory whole, neither as float32 nor as mapped file pages."""
        info = self._checked(name, shape)
        row_shape = info.shape[1:] if len(info.shape) > 1 else info.shape
        n_rows = info.shape[0] if len(info.shape) > 1 else 1
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * _ITEMSIZE[info.dtype]
        step = max(1, (max_bytes or ROW_BLOCK_BYTES) // (int(np.prod(row_shape, dtype=np.int64)) * 4))
        with open(info.file, "rb") as f:
            f.seek(info.start)
            for start in range(0, n_rows, step):
                count = min(step, n_rows - start)
                raw = np.fromfile(f, dtype=np.uint8, count=count * row_bytes)
                if raw.size != count * row_bytes:
                    raise CheckpointError(f"{info.file}: truncated inside tensor {name}; re-download this shard")
                if bf16_bits:
                    block = raw.view(np.uint16) if info.dtype == "BF16" else to_bf16_bits(self._float32(info, raw))
                else:
                    block = self._float32(info, raw)
                yield block.reshape(((count,) if len(info.shape) > 1 else ()) + row_shape)

    def get_bf16_bits(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor `name` as bf16 bit patterns (uint16): a read-only file mapping when stored as BF16, so
        copying a 151552 x 4096 embedding to a BF16 GGUF never holds it in RAM as float32."""
        info = self._checked(name, shape)
        if info.dtype == "BF16":
            return self._raw(info).view(np.uint16).reshape(info.shape)
        return to_bf16_bits(self.get(name)).reshape(info.shape)
