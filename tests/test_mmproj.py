"""The llama.cpp-compatible mmproj GGUF: keys/tensors as llama.cpp expects, loads in mtmd, same embeddings.

Tolerances (tiny checkpoint, embeddings of magnitude ~1): llama.cpp computes the patch embedding with F16
im2col and its matmuls in its own order, so an F32/F16 mmproj agrees with our fp32 ONNX + numpy projector to
~1e-3 max abs (measured 4e-4..9e-4); Q8_0 also quantizes activations to 8 bit (measured 2.7e-2, cosine 0.9997).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from convert.checkpoint import Checkpoint
from convert.mmproj_gguf import export_mmproj
from edge.errors import ConversionError
from tests.conftest import png_bytes

TOL = {"F32": (5e-3, 0.99999), "F16": (5e-3, 0.99999), "Q8_0": (0.1, 0.999)}  # max abs, min cosine


@pytest.fixture(scope="module")
def mmproj_dir(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("mmproj")
    for quant in TOL:
        export_mmproj(tiny_checkpoint, out, quant)
    return out


def _fields(path: Path) -> tuple[dict, dict]:
    r = GGUFReader(path)
    keys = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in r.tensors}
    return keys, tensors


def expected_names(depth: int) -> set[str]:
    """The tensor names clip.cpp loads for PROJECTOR_TYPE_GLM4V (clip-impl.h TN_* with prefix `v`)."""
    names = {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.patch_embd.bias", "v.norm_embd.weight",
             "v.position_embd.weight", "v.post_ln.weight", "mm.patch_merger.weight", "mm.patch_merger.bias",
             "mm.model.fc.weight", "mm.post_norm.weight", "mm.post_norm.bias", "mm.gate.weight", "mm.up.weight",
             "mm.down.weight"}
    for i in range(depth):
        names |= {f"v.blk.{i}.{n}.weight" for n in ("ln1", "attn_qkv", "attn_out", "ln2", "ffn_gate", "ffn_up", "ffn_down")}
    return names


@pytest.mark.parametrize("quant", list(TOL))
def test_keys_and_tensors_as_llama_cpp_expects(mmproj_dir, tiny_checkpoint, quant):
    ckpt = Checkpoint(tiny_checkpoint)
    v, t = ckpt.spec.vision, ckpt.spec.text
    keys, tensors = _fields(mmproj_dir / f"mmproj-{quant}.gguf")
    assert keys["general.architecture"] == "clip" and keys["general.type"] == "mmproj"
    assert keys["clip.projector_type"] == "glm4v"
    assert keys["clip.has_vision_encoder"] is True and keys["clip.use_silu"] is True
    assert "clip.use_gelu" not in keys
    expect = {
        "clip.vision.projection_dim": t.hidden_size, "clip.vision.image_size": v.image_size,
        "clip.vision.patch_size": v.patch_size, "clip.vision.embedding_length": v.hidden_size,
        "clip.vision.feed_forward_length": v.intermediate_size, "clip.vision.block_count": v.depth,
        "clip.vision.attention.head_count": v.num_heads,
    }
    for key, value in expect.items():
        assert keys[key] == value, key
    assert keys["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(v.rms_norm_eps)
    np.testing.assert_allclose(keys["clip.vision.image_mean"], [0.48145466, 0.4578275, 0.40821073], rtol=1e-6)
    np.testing.assert_allclose(keys["clip.vision.image_std"], [0.26862954, 0.26130258, 0.27577711], rtol=1e-6)
    assert set(tensors) == expected_names(v.depth)

    # ggml shapes (innermost first) and the converter's type rules.
    assert list(tensors["v.patch_embd.weight"].shape) == [v.patch_size, v.patch_size, 3, v.hidden_size]
    assert list(tensors["mm.patch_merger.weight"].shape) == [2, 2, v.hidden_size, v.out_hidden_size]
    assert list(tensors["v.position_embd.weight"].shape) == [v.hidden_size, (v.image_size // v.patch_size) ** 2]
    matrix = {"F32": T.F32, "F16": T.F16, "Q8_0": T.Q8_0}[quant]
    conv = T.F16 if quant == "F16" else T.F32
    for name, tensor in tensors.items():
        if name in ("v.patch_embd.weight", "v.patch_embd.weight.1", "mm.patch_merger.weight"):
            want = conv
        elif len(tensor.shape) == 1 or name == "v.position_embd.weight":
            want = T.F32
        else:
            want = matrix
        assert tensor.tensor_type == want, name

    # The Conv3d kernel is split along T into the two Conv2d kernels (values, F32 file).
    if quant == "F32":
        w = ckpt.get("model.visual.patch_embed.proj.weight")
        np.testing.assert_array_equal(np.asarray(tensors["v.patch_embd.weight"].data), w[:, :, 0])
        np.testing.assert_array_equal(np.asarray(tensors["v.patch_embd.weight.1"].data), w[:, :, 1])
        d = ckpt.get("model.visual.downsample.weight")
        np.testing.assert_array_equal(np.asarray(tensors["mm.patch_merger.weight"].data), d)


def test_unknown_quant_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ConversionError, match="Q4_0"):
        export_mmproj(tiny_checkpoint, tmp_path, "Q4_0")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def ours(tiny_bundle):
    from edge.bundle import load_bundle
    from edge.vision.numpy_projector import Projector
    from edge.vision.encoder import VisionEncoder

    bundle = load_bundle(tiny_bundle)
    return VisionEncoder(bundle.vision_path("fp32"), provider="cpu", threads=2), Projector(bundle.projector_path)


@pytest.mark.parametrize("quant", list(TOL))
def test_mtmd_loads_it_and_embeddings_match_ours(mmproj_dir, tiny_bundle, ours, quant):
    from benchmarks.mtmd_peer import MtmdPeer
    from edge.vision.image import ImageConfig, prepare_image
    from edge.bundle import load_bundle
    from edge.vision.encoder import image_embeddings

    bundle = load_bundle(tiny_bundle)
    config = ImageConfig.from_preprocessor_config(bundle.manifest["preprocessor"])
    encoder, projector = ours
    max_abs, min_cos = TOL[quant]
    with MtmdPeer(bundle.decoder_path, mmproj_dir / f"mmproj-{quant}.gguf", n_ctx=1024, kv_type="f32",
                  flash_attn="off", threads=2) as peer:
        for width, height, seed in ((112, 84, 1), (224, 280, 2)):  # sides multiples of 28: same grid both ways
            img = png_bytes(width, height, seed=seed)
            prepared = prepare_image(img, config)
            want = image_embeddings(encoder, projector, prepared.pixel_patches, prepared.grid_thw)
            got, grid = peer.image_embeddings(img)
            assert grid == (prepared.merged_rows, prepared.merged_cols)
            assert got.shape == want.shape
            err = float(np.abs(got - want).max())
            cos = float((got.ravel() @ want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
            assert err <= max_abs and cos >= min_cos, (quant, width, height, err, cos)
            assert err > 0  # really llama.cpp's numbers, not ours echoed back


def test_mtmd_prompt_evaluates_with_image(mmproj_dir, tiny_bundle):
    """A whole prompt through mtmd (text + image chunks, M-RoPE positions) gives a valid first token."""
    from benchmarks.mtmd_peer import MtmdPeer
    from edge.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    with MtmdPeer(bundle.decoder_path, mmproj_dir / "mmproj-F16.gguf", n_ctx=1024, threads=2) as peer:
        prompt = f"[gMASK]<sop><|user|>\n{peer.marker}What is this?<|assistant|>\n"
        t = peer.first_token(prompt, [png_bytes(112, 84, seed=1)])
    assert t.image_tokens == 12 and 0 <= t.token < peer.n_vocab
    assert t.n_tokens > t.image_tokens and t.vision > 0 and t.prefill > 0


CONVERTER = Path(os.environ.get("LLAMA_CPP_CONVERTER",
                                "/tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py"))


@pytest.mark.skipif(not CONVERTER.is_file(), reason="llama.cpp's convert_hf_to_gguf.py not available "
                    "(set LLAMA_CPP_CONVERTER)")
def test_byte_identical_to_llama_cpp_converter(mmproj_dir, tiny_checkpoint, tmp_path):
    """llama.cpp's own `convert_hf_to_gguf.py --mmproj` writes the same tensors, bytes included, and clip keys."""
    import subprocess
    import sys

    ref = tmp_path / "ref.gguf"
    subprocess.run([sys.executable, str(CONVERTER), str(tiny_checkpoint), "--mmproj", "--outtype", "f16",
                    "--outfile", str(ref)], check=True, capture_output=True, timeout=600)
    ko, to = _fields(mmproj_dir / "mmproj-F16.gguf")
    kr, tr = _fields(ref)
    assert {k: v for k, v in ko.items() if k.startswith("clip.")} == {k: v for k, v in kr.items() if k.startswith("clip.")}
    assert set(to) == set(tr)
    for name in to:
        assert to[name].tensor_type == tr[name].tensor_type, name
        assert list(to[name].shape) == list(tr[name].shape), name
        assert np.asarray(to[name].data).tobytes() == np.asarray(tr[name].data).tobytes(), name
