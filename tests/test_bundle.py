"""Bundle manifest: written complete by the converter, refused with a precise message when damaged."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from edge.bundle import FORMAT_VERSION, MANIFEST, STAMP, load_bundle
from edge.errors import BundleError


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    (dst / STAMP).unlink(missing_ok=True)
    return dst


def test_manifest_describes_every_file(tiny_bundle):
    bundle = load_bundle(tiny_bundle, verify="full")
    m = bundle.manifest
    assert m["format_version"] == FORMAT_VERSION and m["converter_version"]
    assert m["decoder"]["quant"] == "F32" and bundle.decoder_path.is_file()
    assert set(bundle.vision_variants) == {"fp32", "fp16", "int8"}
    for variant in bundle.vision_variants:
        io = bundle.vision_io(variant)
        assert [i["name"] for i in io["inputs"]] == ["pixel_patches", "pos_interp", "rope_cos", "rope_sin"]
    assert m["preprocessor"]["merge_size"] == 2 and m["generation"]["top_k"] == 2
    listed = {m["decoder"]["path"], m["projector"]["path"]} | {
        f["path"] for v in m["vision"].values() for f in v["files"]}
    on_disk = {p.name for p in tiny_bundle.iterdir() if not p.name.startswith(".")} - {MANIFEST}
    assert listed == on_disk  # nothing half-written or unlisted beside the manifest
    assert all(len(r["sha256"]) == 64 for r in [m["decoder"], m["projector"]])


def test_first_load_hashes_then_stamps(bundle_copy):
    load_bundle(bundle_copy)
    stamp = json.loads((bundle_copy / STAMP).read_text())
    assert set(stamp) >= {"decoder-F32.gguf", "projector-F32.gguf"}


def test_corrupted_file_is_refused_by_name(bundle_copy):
    load_bundle(bundle_copy)
    target = bundle_copy / "projector-F32.gguf"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))  # same size, new mtime: the stamp no longer matches, so it is hashed
    with pytest.raises(BundleError, match=r"projector-F32\.gguf: sha256 does not match"):
        load_bundle(bundle_copy)


def test_corruption_with_restored_mtime_is_found_by_full_verify(bundle_copy):
    load_bundle(bundle_copy)
    target = bundle_copy / "decoder-F32.gguf"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[-10] ^= 0x01
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    load_bundle(bundle_copy)  # "auto" trusts an unchanged size + mtime
    with pytest.raises(BundleError, match="decoder-F32.gguf: sha256"):
        load_bundle(bundle_copy, verify="full")


def test_truncated_file_is_refused(bundle_copy):
    target = bundle_copy / "vision-encoder-int8.onnx"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(BundleError, match=r"vision-encoder-int8\.onnx: .* bytes, the manifest says"):
        load_bundle(bundle_copy, verify="size")


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "vision-encoder-fp16.onnx").unlink()
    with pytest.raises(BundleError, match="vision-encoder-fp16.onnx: missing"):
        load_bundle(bundle_copy)


def test_other_format_version_is_refused_with_the_fix(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="reconvert with `glm-edge convert"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a glm-edge bundle"):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{broken")
    with pytest.raises(BundleError, match="corrupt manifest"):
        load_bundle(tmp_path)


def test_runtime_refuses_a_vision_variant_the_bundle_lacks(tiny_bundle):
    with pytest.raises(BundleError, match="no bf16 vision encoder"):
        load_bundle(tiny_bundle).vision_path("bf16")
