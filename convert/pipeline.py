"""`glm-edge convert`: an HF checkpoint folder -> a glm-edge bundle folder.

Every output file is written under a temporary name in the output folder and renamed only when complete,
so an interrupted or failed conversion never leaves a file that looks finished.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

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


@contextmanager
def atomic_output(final: Path):
    """Yield a temp path beside `final`; rename it to `final` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o644)  # mkstemp makes 0600 files; bundles are meant to be shared read-only
        tmp_path.replace(final)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise ConversionError(f"{final.parent}: disk full while writing {final.name}") from e
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
