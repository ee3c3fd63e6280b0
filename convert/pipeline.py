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


def vision_weight_counts(ckpt: Checkpoint) -> tuple[int, int]:
    """(vision tower weights, projector weights): the projector is downsample + merger."""
    tower = projector = 0
    for name, info in ckpt.tensors.items():
        if name.startswith(("model.visual.", "visual.")):
            n = int(np.prod(info.shape))
            if ".downsample." in name or ".merger." in name:
                projector += n
            else:
                tower += n
    return tower, projector


# Bytes per weight on disk: the vision encoder per dtype, and what making it needs besides (int8 is quantized
# from an fp32 file plus onnxruntime's shape-inferred copy of it, both deleted afterwards).
VISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
VISION_SCRATCH = {"fp32": 0.0, "fp16": 0.0, "int8": 8.0}
PROJECTOR_BYTES = {"F32": 4.0, "F16": 2.0, "Q8_0": 1.07}


def conversion_disk_need(ckpt: Checkpoint, quant: str, vision_dtypes=("fp32",), projector_quant: str = "F16",
                         mmproj_quants=()) -> int:
    """Bytes of free disk a whole bundle conversion needs at its peak: every output, plus the largest
    intermediate alive at one time (the BF16 decoder that llama.cpp quantizes from, or int8's fp32 graph)."""
    quant = check_quant(quant)
    n = decoder_weight_count(ckpt)
    tower, projector = vision_weight_counts(ckpt)
    outputs = n * BYTES_PER_WEIGHT[quant] + projector * PROJECTOR_BYTES.get(projector_quant, 4.0)
    outputs += sum(tower * VISION_BYTES[d] for d in dict.fromkeys(vision_dtypes) if d in VISION_BYTES)
    outputs += sum((tower + projector) * PROJECTOR_BYTES.get(q, 4.0) for q in dict.fromkeys(mmproj_quants))
    scratch = [0.0 if quant in FLOAT_QUANTS else 2.0 * n]
    scratch += [tower * VISION_SCRATCH[d] for d in vision_dtypes if d in VISION_SCRATCH]
    return int(outputs + max(scratch)) + (64 << 20)  # + metadata, tokenizer, manifest


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
