"""Projector: GGUF writer (convert/projector_gguf.py) read back with gguf.GGUFReader, and the numpy projector
(edge/vision/numpy_projector.py) against transformers' downsample + merger, alone (random ViT-like input)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGUFReader

from convert.checkpoint import Checkpoint
from convert.projector_gguf import ARCH, downsample_matrix, export_projector
from edge.errors import BundleError, ConversionError, VisionError
from edge.vision.numpy_projector import Projector, erf, gelu

torch = pytest.importorskip("torch")

EXPECTED_TYPES = {  # quant -> (matrix type, vector type)
    "F32": ("F32", "F32"),
    "F16": ("F16", "F32"),
    "Q8_0": ("Q8_0", "F32"),
}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> Checkpoint:
    return Checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def files(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("projector")
    return {q: export_projector(ckpt, out, q) for q in EXPECTED_TYPES}


@pytest.fixture(scope="module")
def vit_output(ckpt):
    """A stand-in for the ViT output of a 6x10 patch grid: [60, hidden], unit scale."""
    return np.random.default_rng(3).standard_normal((60, ckpt.spec.vision.hidden_size)).astype(np.float32)


@pytest.mark.parametrize("quant", list(EXPECTED_TYPES))
def test_gguf_read_back(quant, ckpt, files):
    v = ckpt.spec.vision
    reader = GGUFReader(files[quant])
    assert files[quant].name == f"projector-{quant}.gguf"
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    assert field("general.architecture") == ARCH
    assert field(f"{ARCH}.format_version") == 1
    assert field(f"{ARCH}.vision_hidden_size") == v.hidden_size
    assert field(f"{ARCH}.out_hidden_size") == v.out_hidden_size
    assert field(f"{ARCH}.intermediate_size") == v.intermediate_size
    assert field(f"{ARCH}.spatial_merge_size") == v.spatial_merge_size
    assert field(f"{ARCH}.hidden_act") == "silu"
    assert math.isclose(field(f"{ARCH}.layer_norm_eps"), 1e-5, rel_tol=1e-6)
    o, h, i = v.out_hidden_size, v.hidden_size, v.intermediate_size
    expected = {  # numpy order [rows, cols]; GGUF stores ne reversed
        "downsample.weight": (o, 4 * h), "downsample.bias": (o,), "merger.proj.weight": (o, o),
        "merger.post_projection_norm.weight": (o,), "merger.post_projection_norm.bias": (o,),
        "merger.gate_proj.weight": (i, o), "merger.up_proj.weight": (i, o), "merger.down_proj.weight": (o, i),
    }
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == set(expected)
    matrix_type, vector_type = EXPECTED_TYPES[quant]
    for name, shape in expected.items():
        t = tensors[name]
        assert tuple(int(d) for d in reversed(t.shape)) == shape, name
        assert t.tensor_type.name == (matrix_type if len(shape) == 2 else vector_type), name


def test_downsample_matrix_equals_conv(ckpt):
    """[out, 4*hidden] matrix on 4 consecutive block rows == transformers' view/permute/Conv2d."""
    w = torch.randn(8, 5, 2, 2, dtype=torch.float64)
    x = torch.randn(12, 5, dtype=torch.float64)  # 3 merge blocks of 4 rows (dy, dx order)
    ref = torch.nn.functional.conv2d(x.view(-1, 2, 2, 5).permute(0, 3, 1, 2), w).view(-1, 8)
    ours = x.numpy().reshape(3, 20) @ downsample_matrix(w.numpy()).T
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-12, atol=1e-12)


def test_f32_matches_transformers_merger(files, vit_output, hf_model):
    visual = hf_model.model.visual
    with torch.no_grad():
        x = torch.from_numpy(vit_output).view(-1, 2, 2, vit_output.shape[1]).permute(0, 3, 1, 2)
        ref = visual.merger(visual.downsample(x).view(-1, visual.config.out_hidden_size)).numpy()
    out = Projector(files["F32"])(vit_output)
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    print(f"projector F32 max rel err {rel:.2e}")
    assert out.shape == (15, visual.config.out_hidden_size)
    assert rel < 1e-5


@pytest.mark.parametrize("quant,min_cos", [("F16", 0.99999), ("Q8_0", 0.999)])
def test_quantized_projector_cosine(quant, min_cos, files, vit_output):
    ref = Projector(files["F32"])(vit_output)
    out = Projector(files[quant])(vit_output)
    print(f"projector {quant}: 1-cosine vs F32 {1 - cosine(out, ref):.1e}")
    assert cosine(out, ref) > min_cos


def test_erf_and_gelu_accuracy():
    z = np.concatenate([np.linspace(-7, 7, 200_001), [0.0, -0.0, 1e-300, 2.0, -2.0, 6.0, 30.0, np.inf, -np.inf]])
    ref = np.array([math.erf(v) for v in z])
    assert np.abs(erf(z) - ref).max() < 1e-13
    assert erf(np.array([[0.5, -3.0]])).shape == (1, 2)
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 4
    ref = torch.nn.functional.gelu(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(gelu(x), ref, rtol=2e-7, atol=1e-7)


def test_projector_errors(ckpt, files, tmp_path):
    with pytest.raises(BundleError, match="missing"):
        Projector(tmp_path / "projector-F32.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(BundleError):
        Projector(tmp_path / "junk.gguf")
    p = Projector(files["F32"])
    with pytest.raises(VisionError, match="multiple of 4"):
        p(np.zeros((6, ckpt.spec.vision.hidden_size), np.float32))
    with pytest.raises(VisionError, match="expected"):
        p(np.zeros((8, 3), np.float32))
    with pytest.raises(ConversionError, match="Q4_K"):
        export_projector(ckpt, tmp_path, "Q4_K")
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".projector-")]
