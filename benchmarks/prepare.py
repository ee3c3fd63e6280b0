"""Everything the benchmarks need, made once into a cache folder and reused.

    <cache>/<size>-t<text layers>-v<vision depth>-s<seed>/
        checkpoint/            reference HF checkpoint (convert/reference.py; `wide` = real widths and vocab)
        bundle-Q4_K_M/         glm-edge bundles, fp32 + int8 vision, F16 projector
        bundle-Q8_0/
        mmproj-F16.gguf        llama.cpp mmproj of the same vision weights (convert/mmproj_gguf.py)
        mmproj-Q8_0.gguf
        images/                test images as PNG bytes, sides multiples of 28 (both preprocessors agree)

Each artifact appears atomically (its writer renames when complete), so an interrupted preparation
resumes where it stopped. A stamp with the converter version invalidates the folder when conversion code changes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.bundle_writer import convert_checkpoint
from convert.mmproj_gguf import export_mmproj
from convert.reference import write_reference
from edge import __version__

BUNDLE_QUANTS = ("Q4_K_M", "Q8_0")
MMPROJ_QUANTS = ("F16", "Q8_0")
VISION_DTYPES = ("fp32", "int8")
PROJECTOR_QUANT = "F16"
STAMP = "prepared.json"


@dataclass(frozen=True)
class Artifacts:
    root: Path
    size: str
    text_layers: int
    vision_depth: int

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    def bundle(self, quant: str) -> Path:
        return self.root / f"bundle-{quant}"

    def decoder(self, quant: str) -> Path:
        return self.bundle(quant) / f"decoder-{quant}.gguf"

    def mmproj(self, quant: str) -> Path:
        return self.root / f"mmproj-{quant}.gguf"

    def image(self, name: str) -> Path:
        return self.root / "images" / f"{name}.png"


def image_png(width: int, height: int, seed: int = 0) -> bytes:
    """A deterministic photo-like test image (smooth gradients + texture) as PNG bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                     127 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", flush=True)


@contextmanager
def native_log_to(path: Path):
    """Send what native code (llama.cpp's quantizer, onnxruntime) writes to stderr into `path` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def prepare(cache: Path, size: str, text_layers: int, vision_depth: int, images: dict[str, tuple[int, int]],
            seed: int = 0, bundle_quants=BUNDLE_QUANTS, mmproj_quants=MMPROJ_QUANTS) -> Artifacts:
    root = Path(cache) / f"{size}-t{text_layers}-v{vision_depth}-s{seed}"
    art = Artifacts(root, size, text_layers, vision_depth)
    stamp = {"converter_version": __version__, "size": size, "text_layers": text_layers,
             "vision_depth": vision_depth, "seed": seed}
    stamp_file = root / STAMP
    if root.exists() and (not stamp_file.is_file() or json.loads(stamp_file.read_text()) != stamp):
        _log(f"{root}: made by another converter version; rebuilding")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")

    if not (art.checkpoint / "config.json").is_file():
        t = time.perf_counter()
        _log(f"writing {size} reference checkpoint ({text_layers} text layers, {vision_depth} vision blocks)")
        write_reference(art.checkpoint, size=size, seed=seed, text_layers=text_layers, vision_depth=vision_depth)
        _log(f"  done in {time.perf_counter() - t:.0f} s")
    for quant in bundle_quants:
        if not (art.bundle(quant) / "manifest.json").is_file():
            t = time.perf_counter()
            _log(f"converting bundle {quant} (vision {', '.join(VISION_DTYPES)}; native log in {root / 'prepare.log'})")
            with native_log_to(root / "prepare.log"):
                convert_checkpoint(art.checkpoint, art.bundle(quant), quant=quant, vision_dtypes=VISION_DTYPES,
                                   projector_quant=PROJECTOR_QUANT)
            _log(f"  done in {time.perf_counter() - t:.0f} s")
    for quant in mmproj_quants:
        if not art.mmproj(quant).is_file():
            t = time.perf_counter()
            _log(f"writing mmproj {quant}")
            export_mmproj(art.checkpoint, root, quant)
            _log(f"  done in {time.perf_counter() - t:.0f} s")
    (root / "images").mkdir(exist_ok=True)
    for i, (name, (w, h)) in enumerate(sorted(images.items())):
        path = art.image(name)
        if not path.is_file():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(image_png(w, h, seed=i))
            tmp.replace(path)
    return art
