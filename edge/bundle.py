"""Bundles: the folder `glm-edge convert` writes, described by `manifest.json`, loaded and verified here.

```
manifest.json                 format + version, converter version, source config hash, sha256 and size of every
                              file, token ids, preprocessing and generation configs, vision I/O description
decoder-<QUANT>.gguf          GLM-4 decoder + tokenizer + chat template (llama.cpp)
projector-<QUANT>.gguf        downsample + merger
vision-encoder-<DTYPE>.onnx   ViT (+ .onnx.data for large fp32 graphs)
mmproj-<QUANT>.gguf           optional (`--mmproj`): the same vision weights for llama.cpp's mtmd / llama-server
```
The runtime reads exactly one manifest version and refuses others with a message saying how to reconvert.
Every file's size is checked at each load; its sha256 on the first load and again whenever its size or
modification time changed since (a `.verified.json` stamp beside the manifest, when the folder is writable).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edge.errors import BundleError

FORMAT = "glm-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STAMP = ".verified.json"


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def decoder_path(self) -> Path:
        return self.path / self.manifest["decoder"]["path"]

    @property
    def projector_path(self) -> Path:
        return self.path / self.manifest["projector"]["path"]

    @property
    def vision_variants(self) -> list[str]:
        return list(self.manifest["vision"])

    def vision_path(self, dtype: str | None = None) -> Path:
        variants = self.manifest["vision"]
        dtype = dtype or next(iter(variants))
        if dtype not in variants:
            raise BundleError(f"{self.path}: no {dtype} vision encoder in this bundle; it has {', '.join(variants)}")
        return self.path / variants[dtype]["files"][0]["path"]

    def vision_io(self, dtype: str) -> dict:
        return self.manifest["vision"][dtype]["io"]

    @property
    def tokens(self) -> dict:
        return self.manifest["tokens"]


def _records(manifest: dict) -> list[dict]:
    records = [manifest["decoder"], manifest["projector"]]
    for variant in manifest["vision"].values():
        records.extend(variant["files"])
    records.extend(manifest.get("mmproj", []))  # optional llama.cpp peer files
    return records


def load_bundle(path: str | os.PathLike, verify: str = "auto") -> Bundle:
    """Read and check a bundle. verify: "auto" (hash when changed), "full" (always hash), "size"."""
    root = Path(path)
    mf = root / MANIFEST
    if not mf.is_file():
        raise BundleError(
            f"{root}: no {MANIFEST}; this is not a glm-edge bundle (convert an HF checkpoint with `glm-edge convert`)"
        )
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mf}: corrupt manifest ({e}); reconvert the bundle") from e
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{mf}: bundle format {manifest.get('format')!r} version {manifest.get('format_version')!r}; this "
            f"glm-edge reads {FORMAT!r} version {FORMAT_VERSION}: reconvert with `glm-edge convert HF_DIR OUT_DIR`"
        )
    try:
        records = _records(manifest)
    except (KeyError, TypeError) as e:
        raise BundleError(f"{mf}: manifest lacks {e}; reconvert the bundle") from e
    stamp = _read_stamp(root)
    fresh = {}
    for rec in records:
        file = root / rec["path"]
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle; reconvert or copy the file again")
        st = file.stat()
        if st.st_size != rec["bytes"]:
            raise BundleError(
                f"{file}: {st.st_size} bytes, the manifest says {rec['bytes']} (truncated or replaced); "
                "copy it again or reconvert"
            )
        key = [st.st_size, st.st_mtime_ns, rec["sha256"]]
        if verify == "full" or (verify == "auto" and stamp.get(rec["path"]) != key):
            if sha256_file(file) != rec["sha256"]:
                raise BundleError(f"{file}: sha256 does not match the manifest (corrupted); copy it again or reconvert")
        fresh[rec["path"]] = key
    if verify != "size" and fresh != stamp:
        _write_stamp(root, fresh)
    return Bundle(root, manifest)


def _read_stamp(root: Path) -> dict:
    try:
        return json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(root: Path, stamp: dict) -> None:
    tmp = root / (STAMP + ".tmp")
    try:
        tmp.write_text(json.dumps(stamp))
        tmp.replace(root / STAMP)
    except OSError:
        pass  # a read-only bundle is verified again next time; that is all
