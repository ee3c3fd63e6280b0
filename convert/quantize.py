"""Quantized decoder files through llama.cpp's own quantizer (llama_model_quantize via llama-cpp-python).

No hand-written quantizer: K-quants choose per-tensor types (and fall back where a row length such as
13696 is not a multiple of 256) exactly as llama.cpp's `llama-quantize` does.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import ConversionError

# llama_ftype values from llama.h
LLAMA_FTYPES = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
FLOAT_QUANTS = ("F32", "F16", "BF16")
ALL_QUANTS = FLOAT_QUANTS + tuple(LLAMA_FTYPES)

# llama.cpp quantizes each tensor in slabs of rows of at most this many bytes (source + float32 + output), so a
# 151552 x 4096 table never needs its float32 copy whole; the source tensor's mapped pages are released after it.
QUANTIZE_BUFFER_BYTES = 512 << 20

# Approximate bytes per weight of the output file, for the free-space check before converting.
BYTES_PER_WEIGHT = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 1.07, "Q6_K": 0.83, "Q5_K_M": 0.72,
                    "Q4_K_M": 0.62, "Q4_0": 0.57}


def check_quant(quant: str) -> str:
    q = quant.upper()
    if q not in ALL_QUANTS:
        raise ConversionError(f"unknown quant type {quant!r}; allowed: {', '.join(ALL_QUANTS)}")
    return q


def llama_quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> None:
    """Quantize GGUF `src` (F32/F16/BF16) to `dst` with llama.cpp; metadata is copied unchanged."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[quant]
    params.nthread = threads or os.cpu_count() or 1
    params.max_buf_size = QUANTIZE_BUFFER_BYTES
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise ConversionError(f"llama.cpp failed to quantize {src.name} to {quant} (code {rc})")
