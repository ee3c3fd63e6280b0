"""Checkpoints saved with the older prefixes (`visual.*`, `model.layers.*`) convert to the same bundle."""

from __future__ import annotations

import shutil

from convert.bundle_writer import convert_checkpoint
from convert.checkpoint import LEGACY_PREFIXES, Checkpoint
from convert.safetensors_writer import write_shards
from edge.bundle import load_bundle


def legacy_copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if not f.name.startswith("model"):
            shutil.copy(f, dst / f.name)
    ckpt = Checkpoint(src)
    renamed = []
    for name, info in ckpt.tensors.items():
        old = next((o + name[len(n):] for o, n in LEGACY_PREFIXES if name.startswith(n)), name)
        renamed.append((old, info.shape, lambda name=name: [ckpt.get(name)]))
    write_shards(dst, renamed, 3)
    return dst


def test_legacy_names_give_the_same_bundle(tiny_checkpoint, tmp_path):
    legacy = legacy_copy(tiny_checkpoint, tmp_path / "legacy")
    assert Checkpoint(legacy).has("model.visual.patch_embed.proj.weight")
    assert any(k.startswith("visual.") for k in (legacy / "model.safetensors.index.json").read_text().split('"'))
    a = load_bundle(convert_checkpoint(tiny_checkpoint, tmp_path / "a", quant="F32", projector_quant="F32")).manifest
    b = load_bundle(convert_checkpoint(legacy, tmp_path / "b", quant="F32", projector_quant="F32")).manifest
    assert a["decoder"]["sha256"] == b["decoder"]["sha256"]
    assert a["projector"]["sha256"] == b["projector"]["sha256"]
    assert a["vision"]["fp32"]["files"][0]["sha256"] == b["vision"]["fp32"]["files"][0]["sha256"]
