"""Write a GGUF's tensors one at a time: every tensor info first, then each tensor loaded, encoded and written
in turn, so peak memory is one tensor, not the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quant_shape_to_byte_shape

TensorPlan = tuple[str, tuple[int, ...], GGMLQuantizationType, Callable[[], np.ndarray]]


def write_streamed(writer: GGUFWriter, tensors: Iterable[TensorPlan],
                   on_tensor: Callable[[int], None] | None = None) -> None:
    """Header, metadata, tensor infos, then data. `load()` returns the tensor already encoded as its type
    (its bytes are written as they are); `on_tensor(n_weights)` is called after each one (progress)."""
    loaders = []
    for name, shape, dtype, load in tensors:
        byte_shape = quant_shape_to_byte_shape(shape, dtype)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=dtype)
        loaders.append((load, int(np.prod(shape))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for load, n in loaders:
        writer.write_tensor_data(np.ascontiguousarray(load()).view(np.uint8))
        if on_tensor is not None:
            on_tensor(n)
