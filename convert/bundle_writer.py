"""Write a whole glm-edge bundle from an HF checkpoint folder (see edge/bundle.py for the format).

Each part is written to a temporary name and renamed when complete; `manifest.json` goes last, so a folder
without a current manifest is never taken for a finished bundle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from convert.checkpoint import Checkpoint, read_json
from convert.decoder_gguf import config_sha256, describe_vocab
from convert.projector_gguf import QUANTS as PROJECTOR_QUANTS  # also the mmproj types
from convert.mmproj_gguf import export_mmproj
from convert.atomic import atomic_output
from convert.pipeline import convert_decoder
from convert.projector_gguf import export_projector
from convert.vision_onnx import describe_io, export_vision
from edge import __version__
from edge.bundle import FORMAT, FORMAT_VERSION, MANIFEST, file_record
from edge.errors import CheckpointError, ConversionError

VISION_DTYPES = ("fp32", "fp16", "int8")
EOG_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")


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


def convert_checkpoint(hf_dir: Path, out_dir: Path, quant: str = "Q4_K_M", vision_dtypes=("fp32",),
                       projector_quant: str = "F16", mmproj_quants=(), progress: bool = False) -> Path:
    """Convert `hf_dir` into the bundle folder `out_dir`; returns out_dir."""
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

    started = time.perf_counter()
    decoder = convert_decoder(ckpt, out_dir, quant, progress=progress)
    projector = export_projector(ckpt, out_dir, projector_quant)
    vision = {}
    for dtype in dict.fromkeys(vision_dtypes):
        files = export_vision(ckpt, out_dir, dtype)
        vision[dtype] = {"files": [file_record(f) for f in files], "io": describe_io(ckpt.spec.vision, dtype)}
    mmproj = [{**file_record(export_mmproj(ckpt, out_dir, q)), "quant": q} for q in mmproj_quants]

    spec = ckpt.spec
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "converter_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "conversion_seconds": round(time.perf_counter() - started, 1),
        "source": {"architecture": spec.architecture, "config_sha256": config_sha256(ckpt), "folder": ckpt.path.name},
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
