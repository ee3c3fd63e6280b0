"""`glm-edge convert`: an HF checkpoint folder -> a glm-edge bundle folder.

Every output file is written under a temporary name in the output folder and renamed only when complete,
so an interrupted or failed conversion never leaves a file that looks finished.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from convert.atomic import atomic_output
from convert.checkpoint import Checkpoint
from convert.decoder_gguf import write_float_gguf
from convert.quantize import BYTES_PER_WEIGHT, FLOAT_QUANTS, check_quant, llama_quantize
from edge import __version__
from edge.errors import ConversionError


def decoder_weight_count(ckpt: Checkpoint) -> int:
    return sum(
        int(np.prod(info.shape)) for name, info in ckpt.tensors.items() if not name.startswith(("model.visual.", "visual."))
    )


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConversionError(
            f"{folder}: not enough disk space: conversion needs about {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free"
        )


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="w", unit_scale=True, desc=desc)


def convert_decoder(ckpt: Checkpoint, out_dir: Path, quant: str, progress: bool = False) -> Path:
    """Write `decoder-<QUANT>.gguf` into `out_dir`; returns its path."""
    quant = check_quant(quant)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = decoder_weight_count(ckpt)
    needed = int(n * BYTES_PER_WEIGHT[quant]) + (0 if quant in FLOAT_QUANTS else 2 * n)
    check_free_space(out_dir, needed)
    final = out_dir / f"decoder-{quant}.gguf"
    bar = _progress(n, f"decoder {quant}", progress)
    try:
        with atomic_output(final) as tmp:
            if quant in FLOAT_QUANTS:
                write_float_gguf(ckpt, tmp, quant, __version__, bar)
            else:
                # bf16 sources make a BF16 intermediate lossless; llama.cpp quantizes from it.
                mid = tmp.with_suffix(".bf16")
                try:
                    write_float_gguf(ckpt, mid, "BF16", __version__, bar)
                    llama_quantize(mid, tmp, quant)
                finally:
                    mid.unlink(missing_ok=True)
    finally:
        if bar is not None:
            bar.close()
    return final
