"""Write a whole glm-edge bundle from an HF checkpoint folder (see edge/bundle.py for the format).

Each part is written to a temporary name and renamed when complete; `manifest.json` goes last, so a folder
without a current manifest is never taken for a finished bundle. Free disk for every output and the largest
intermediate is checked before anything is written.

Reuse: the vision encoder and projector do not depend on the decoder quant. `reuse_from` names other bundles
(for example the same checkpoint at another quant); a file whose bundle was converted by this converter
version from vision weights with the same sha256 (`source.vision_sha256`, hashed from the tensors' bytes) is
hard-linked (or copied across file systems) instead of exported again, and checked against that bundle's
manifest sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from convert.checkpoint import Checkpoint, read_json
from convert.decoder_gguf import config_sha256, describe_vocab
from convert.projector_gguf import QUANTS as PROJECTOR_QUANTS  # also the mmproj types
from convert.mmproj_gguf import export_mmproj
from convert.atomic import atomic_output
from convert.pipeline import check_free_space, conversion_disk_need, convert_decoder
from convert.projector_gguf import export_projector
from convert.vision_onnx import describe_io, export_vision
from edge import __version__
from edge.bundle import FORMAT, FORMAT_VERSION, MANIFEST, file_record
from edge.errors import CheckpointError, ConversionError

VISION_DTYPES = ("fp32", "fp16", "int8")
EOG_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")

log = logging.getLogger(__name__)


def token_ids(ckpt: Checkpoint) -> dict:
    vocab = describe_vocab(ckpt.path)
    missing = [t for t in EOG_TOKENS + ("<|begin_of_image|>", "<|end_of_image|>", "<|image|>") if t not in vocab]
    if missing:
        raise CheckpointError(f"{ckpt.path}/tokenizer.json: special tokens {missing} are missing")
    if vocab["<|image|>"] != ckpt.spec.image_token_id:
        raise CheckpointError(
            f"{ckpt.path}: config.json image_token_id {ckpt.spec.image_token_id} is not the tokenizer's "
            f"<|image|> id {vocab['<|image|>']}"
        )
    return {
        "image": vocab["<|image|>"],
        "image_start": vocab["<|begin_of_image|>"],
        "image_end": vocab["<|end_of_image|>"],
        "eog": sorted(vocab[t] for t in EOG_TOKENS),
    }


def vision_sha256(ckpt: Checkpoint) -> str:
    """sha256 of the vision config and every vision/projector tensor (name, dtype, shape, bytes): the identity
    of what the vision encoder and projector files are made from."""
    h = hashlib.sha256(json.dumps(ckpt.config.get("vision_config"), sort_keys=True).encode())
    for name in sorted(n for n in ckpt.tensors if n.startswith("model.visual.")):
        info = ckpt.tensors[name]
        h.update(f"{name}|{info.dtype}|{list(info.shape)}".encode())
        with open(info.file, "rb") as f:
            f.seek(info.start)
            left = info.nbytes
            while left:
                block = f.read(min(left, 16 << 20))
                if not block:
                    raise CheckpointError(f"{info.file}: truncated inside tensor {name}; re-download this shard")
                h.update(block)
                left -= len(block)
    return h.hexdigest()


def _reusable(candidates: Sequence[Path], vision_id: str) -> list[tuple[Path, dict]]:
    """(folder, manifest) of the bundles among `candidates` made by this converter from the same vision weights."""
    found = []
    for folder in candidates:
        try:
            manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (manifest.get("format_version") == FORMAT_VERSION and manifest.get("converter_version") == __version__
                and (manifest.get("source") or {}).get("vision_sha256") == vision_id):
            found.append((Path(folder), manifest))
    return found


def _link_records(src: Path, records: list[dict], out_dir: Path) -> list[Path] | None:
    """Hard-link (or copy) `records` from bundle `src` into out_dir; None (and nothing left behind) when a file
    is missing or its sha256 is not the manifest's."""
    made = []
    try:
        for rec in records:
            source, target = src / rec["path"], out_dir / rec["path"]
            tmp = out_dir / f".{rec['path']}.reuse"
            tmp.unlink(missing_ok=True)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            if file_record(tmp) != {"path": tmp.name, "bytes": rec["bytes"], "sha256": rec["sha256"]}:
                tmp.unlink()
                raise ValueError(f"{source}: not the file its manifest describes")
            tmp.replace(target)
            made.append(target)
    except (OSError, ValueError) as e:
        log.info("not reusing %s: %s", src, e)
        for f in made:
            f.unlink(missing_ok=True)
        return None
    return made


def _reuse_vision(found, dtype: str, out_dir: Path) -> list[Path] | None:
    for folder, manifest in found:
        variant = (manifest.get("vision") or {}).get(dtype)
        if variant and (files := _link_records(folder, variant["files"], out_dir)) is not None:
            log.info("vision encoder %s reused from %s", dtype, folder)
            return files
    return None


def _reuse_projector(found, quant: str, out_dir: Path) -> Path | None:
    for folder, manifest in found:
        rec = manifest.get("projector") or {}
        if rec.get("quant") == quant and (files := _link_records(folder, [rec], out_dir)) is not None:
            log.info("projector %s reused from %s", quant, folder)
            return files[0]
    return None


def convert_checkpoint(hf_dir: Path, out_dir: Path, quant: str = "Q4_K_M", vision_dtypes=("fp32",),
                       projector_quant: str = "F16", mmproj_quants=(), progress: bool = False,
                       reuse_from: Sequence[Path] = ()) -> Path:
    """Convert `hf_dir` into the bundle folder `out_dir`; returns out_dir.

    `reuse_from`: bundles whose vision encoder / projector files may be reused (see the module doc)."""
    for dtype in vision_dtypes:
        if dtype not in VISION_DTYPES:
            raise ConversionError(f"unknown vision dtype {dtype!r}; allowed: {', '.join(VISION_DTYPES)}")
    if projector_quant not in PROJECTOR_QUANTS:
        raise ConversionError(f"unknown projector type {projector_quant!r}; allowed: {', '.join(PROJECTOR_QUANTS)}")
    mmproj_quants = list(dict.fromkeys(mmproj_quants))
    for q in mmproj_quants:
        if q not in PROJECTOR_QUANTS:
            raise ConversionError(f"unknown mmproj type {q!r}; allowed: {', '.join(PROJECTOR_QUANTS)}")
    ckpt = Checkpoint(hf_dir)
    preprocessor = read_json(ckpt.path / "preprocessor_config.json")
    generation_file = ckpt.path / "generation_config.json"
    generation = read_json(generation_file) if generation_file.is_file() else {}
    video_file = ckpt.path / "video_preprocessor_config.json"  # absent: the runtime uses transformers' defaults
    video_preprocessor = read_json(video_file) if video_file.is_file() else None
    tokens = token_ids(ckpt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_free_space(out_dir, conversion_disk_need(ckpt, quant, vision_dtypes, projector_quant, mmproj_quants))

    started = time.perf_counter()
    vision_id = vision_sha256(ckpt)
    found = _reusable(reuse_from, vision_id)
    decoder = convert_decoder(ckpt, out_dir, quant, progress=progress)
    projector = _reuse_projector(found, projector_quant, out_dir) or export_projector(ckpt, out_dir, projector_quant)
    vision = {}
    for dtype in dict.fromkeys(vision_dtypes):
        files = _reuse_vision(found, dtype, out_dir) or export_vision(ckpt, out_dir, dtype)
        vision[dtype] = {"files": [file_record(f) for f in files], "io": describe_io(ckpt.spec.vision, dtype)}
    mmproj = [{**file_record(export_mmproj(ckpt, out_dir, q)), "quant": q} for q in mmproj_quants]

    spec = ckpt.spec
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "converter_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conversion_seconds": round(time.perf_counter() - started, 1),
        "source": {"architecture": spec.architecture, "config_sha256": config_sha256(ckpt), "folder": ckpt.path.name,
                   "vision_sha256": vision_id},
        "model": {
            "text_hidden_size": spec.text.hidden_size,
            "text_layers": spec.text.num_layers,
            "vocab_size": spec.text.vocab_size,
            "context_length": spec.text.max_position_embeddings,
            "vision_hidden_size": spec.vision.hidden_size,
            "vision_depth": spec.vision.depth,
            "spatial_merge_size": spec.vision.spatial_merge_size,
        },
        "decoder": {**file_record(decoder), "quant": quant.upper()},
        "projector": {**file_record(projector), "quant": projector_quant},
        "vision": vision,
        "mmproj": mmproj,
        "tokens": tokens,
        "preprocessor": preprocessor,
        "generation": generation,
        "video_preprocessor": video_preprocessor,
    }
    with atomic_output(out_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir
