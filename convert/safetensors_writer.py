"""Streaming writer of sharded bf16 safetensors in the HF layout (`model-0000x-of-0000y.safetensors` + index).

Tensors are given as (name, shape, chunks) where `chunks()` yields float32 row blocks; each block is rounded
to bf16 (nearest, ties to even, as torch does) and written straight to disk, so memory stays at one block.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

TensorSource = tuple[str, tuple[int, ...], Callable[[], Iterable[np.ndarray]]]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))
    return (rounded >> 16).astype(np.uint16)


def _split(tensors: list[TensorSource], n_shards: int) -> list[list[TensorSource]]:
    sizes = [int(np.prod(shape, dtype=np.int64)) * 2 for _, shape, _ in tensors]
    target = sum(sizes) / max(1, n_shards)
    shards: list[list[TensorSource]] = [[]]
    filled = 0
    for tensor, nbytes in zip(tensors, sizes):
        if shards[-1] and filled + nbytes / 2 > target * len(shards) and len(shards) < n_shards:
            shards.append([])
        shards[-1].append(tensor)
        filled += nbytes
    return shards


def _write_one(path: Path, tensors: list[TensorSource], progress) -> int:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, chunks in tensors:
            written = 0
            for block in chunks():
                data = to_bf16_bits(block).tobytes()
                f.write(data)
                written += len(data)
            expected = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if written != expected:
                raise ValueError(f"{name}: wrote {written} bytes, shape {list(shape)} needs {expected}")
            if progress is not None:
                progress.update(written)
    return offset


def write_shards(folder: Path, tensors: list[TensorSource], n_shards: int, progress: bool = False) -> None:
    """Write `tensors` into `n_shards` shard files plus `model.safetensors.index.json` inside `folder`."""
    shards = _split(tensors, n_shards)
    total = sum(int(np.prod(shape, dtype=np.int64)) * 2 for _, shape, _ in tensors)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="weights")
    weight_map = {}
    try:
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            _write_one(folder / name, shard, bar)
            weight_map.update({tensor_name: name for tensor_name, _, _ in shard})
    finally:
        if bar is not None:
            bar.close()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
