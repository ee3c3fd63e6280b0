"""Write a GGUF's tensors one at a time: every tensor info first, then each tensor loaded, encoded and written
in turn, so peak memory is one tensor, not the model; a tensor given as `RowBlocks` is written block by block,
so peak memory is one block of rows (the 151552 x 4096 embedding and output tables of the real model)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quant_shape_to_byte_shape

from edge.errors import ConversionError


class RowBlocks:
    """A tensor's encoded bytes as consecutive row blocks. GGUFWriter.write_tensor_data takes it in place of an
    array (it needs only `nbytes` and `tofile`), so padding and tensor order stay the writer's."""

    def __init__(self, name: str, nbytes: int, blocks: Iterable[np.ndarray]):
        self.name, self.nbytes, self._blocks = name, nbytes, blocks

    def tofile(self, fout) -> None:
        written = 0
        for block in self._blocks:
            data = np.ascontiguousarray(block).view(np.uint8)
            data.tofile(fout)
            written += data.nbytes
        if written != self.nbytes:
            raise ConversionError(f"tensor {self.name}: wrote {written} bytes, its type and shape need {self.nbytes}")


TensorPlan = tuple[str, tuple[int, ...], GGMLQuantizationType, Callable[[], "np.ndarray | Iterable[np.ndarray]"]]


def write_streamed(writer: GGUFWriter, tensors: Iterable[TensorPlan],
                   on_tensor: Callable[[int], None] | None = None) -> None:
    """Header, metadata, tensor infos, then data. `load()` returns the tensor already encoded as its type (an
    array, or an iterable of encoded row blocks in order); its bytes are written as they are.
    `on_tensor(n_weights)` is called after each one (progress)."""
    loaders = []
    for name, shape, dtype, load in tensors:
        byte_shape = quant_shape_to_byte_shape(shape, dtype)
        nbytes = int(np.prod(byte_shape))
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=dtype)
        loaders.append((name, load, nbytes, int(np.prod(shape))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, load, nbytes, n in loaders:
        data = load()
        if isinstance(data, np.ndarray):
            writer.write_tensor_data(np.ascontiguousarray(data).view(np.uint8))
        else:
            writer.write_tensor_data(RowBlocks(name, nbytes, data))
        if on_tensor is not None:
            on_tensor(n)
