"""Vision encoder: ONNX export (convert/vision_onnx.py) + runtime (edge/vision/encoder.py) against transformers fp32.

Parity is measured on the tiny reference checkpoint with random patches; errors are relative to the
largest reference magnitude. Measured here: fp32 ViT and embeddings ~2e-6, fp16 cosine ~0.99999999,
int8 cosine ~0.9999 (thresholds below leave margin).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import pytest

from convert.checkpoint import Checkpoint
from convert.projector_gguf import export_projector
from convert.vision_onnx import build_vision_model, describe_io, export_vision, visual_prefix
from edge.errors import VisionError
from edge.vision.numpy_projector import Projector
from edge.vision.encoder import (
    VisionEncoder,
    image_embeddings,
    io_description,
    pos_interp,
    rope_cos_sin,
    select_providers,
)

torch = pytest.importorskip("torch")

GRIDS = [(4, 4), (6, 10), (14, 8)]
FP32_MAX_REL = 1e-4


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def patches(gh: int, gw: int, ckpt: Checkpoint, seed: int = 0) -> np.ndarray:
    v = ckpt.spec.vision
    width = v.in_channels * v.temporal_patch_size * v.patch_size**2
    return np.random.default_rng([seed, gh, gw]).standard_normal((gh * gw, width)).astype(np.float32)


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint) -> Checkpoint:
    return Checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("vision-bundle")
    for dtype in ("fp32", "fp16", "int8"):
        export_vision(ckpt, out, dtype)
    export_projector(ckpt, out, "F32")
    return out


@pytest.fixture(scope="module")
def encoders(bundle):
    dtypes = ("fp32", "fp16", "int8")
    return {d: VisionEncoder(bundle / f"vision-encoder-{d}.onnx", provider="cpu", threads=1) for d in dtypes}


@pytest.fixture(scope="module")
def projector(bundle):
    return Projector(bundle / "projector-F32.gguf")


def hf_vision(hf_model, x: np.ndarray, grids: list[tuple[int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """transformers: (ViT output after post_layernorm, per-image embeddings) for a batch of images."""
    visual = hf_model.model.visual
    seen = {}
    hook = visual.post_layernorm.register_forward_hook(lambda m, i, o: seen.__setitem__("vit", o.detach().numpy()))
    try:
        with torch.no_grad():
            thw = torch.tensor([[1, gh, gw] for gh, gw in grids])
            feats = hf_model.model.get_image_features(torch.from_numpy(x), thw).pooler_output
    finally:
        hook.remove()
    return seen["vit"], [f.numpy() for f in feats]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_fp32_matches_transformers(grid, ckpt, encoders, projector, hf_model):
    gh, gw = grid
    x = patches(gh, gw, ckpt)
    ref_vit, (ref_emb,) = hf_vision(hf_model, x, [grid])
    vit = encoders["fp32"].encode(x, [1, gh, gw])
    emb = image_embeddings(encoders["fp32"], projector, x, [1, gh, gw])
    assert vit.shape == (gh * gw, ckpt.spec.vision.hidden_size)
    assert emb.shape == (gh * gw // 4, ckpt.spec.vision.out_hidden_size)
    print(f"grid {gh}x{gw}: vit max rel {rel_err(vit, ref_vit):.2e}, embeddings max rel {rel_err(emb, ref_emb):.2e}")
    assert rel_err(vit, ref_vit) < FP32_MAX_REL
    assert rel_err(emb, ref_emb) < FP32_MAX_REL


@pytest.mark.parametrize("dtype,min_cos", [("fp16", 0.999), ("int8", 0.99)])
def test_reduced_precision_cosine(dtype, min_cos, ckpt, encoders, projector, hf_model):
    for gh, gw in GRIDS:
        x = patches(gh, gw, ckpt)
        ref_vit, (ref_emb,) = hf_vision(hf_model, x, [(gh, gw)])
        vit = encoders[dtype].encode(x, [1, gh, gw])
        emb = projector(vit)
        print(f"{dtype} {gh}x{gw}: 1-cosine vit {1 - cosine(vit, ref_vit):.1e}, emb {1 - cosine(emb, ref_emb):.1e}")
        assert cosine(vit, ref_vit) > min_cos
        assert cosine(emb, ref_emb) > min_cos


def test_images_one_at_a_time_equal_hf_batch(ckpt, encoders, projector, hf_model):
    """No cross-image attention: two single-image calls equal transformers' packed two-image call."""
    grids = [(4, 6), (6, 4)]
    xs = [patches(gh, gw, ckpt, seed=7) for gh, gw in grids]
    _, ref = hf_vision(hf_model, np.concatenate(xs), grids)
    for x, (gh, gw), r in zip(xs, grids, ref):
        assert rel_err(image_embeddings(encoders["fp32"], projector, x, [1, gh, gw]), r) < FP32_MAX_REL


def test_standard_attention_graph(ckpt, hf_model, tmp_path):
    """The all-standard-ops graph (for providers without com.microsoft ops) has the same parity."""
    (path,) = export_vision(ckpt, tmp_path, "fp32", attention="standard")
    model = onnx.load(path)
    assert {o.domain for o in model.opset_import} == {""}
    assert "MultiHeadAttention" not in {n.op_type for n in model.graph.node}
    x = patches(6, 10, ckpt)
    ref_vit, _ = hf_vision(hf_model, x, [(6, 10)])
    assert rel_err(VisionEncoder(path, provider="cpu").encode(x, [1, 6, 10]), ref_vit) < FP32_MAX_REL


def test_shape_inputs_match_transformers(ckpt, hf_model):
    """Bicubic position resampling and 2-D rope, alone, for grids smaller and larger than the table."""
    import torch.nn.functional as F
    from transformers.vision_utils import get_vision_position_ids

    visual, v = hf_model.model.visual, ckpt.spec.vision
    side = v.image_size // v.patch_size
    table = ckpt.get(visual_prefix(ckpt) + "embeddings.position_embedding.weight")
    for gh, gw in [(2, 2), (4, 30), (50, 6)]:
        pos = get_vision_position_ids(torch.tensor([[1, gh, gw]]), v.spatial_merge_size)
        grid = torch.stack([(pos[:, 1] + 0.5) / gw * 2 - 1, (pos[:, 0] + 0.5) / gh * 2 - 1], -1)[None, :, None]
        src = torch.from_numpy(table).view(side, side, -1).permute(2, 0, 1)[None]
        ref = F.grid_sample(src, grid.float(), mode="bicubic", align_corners=False, padding_mode="border")
        ours = pos_interp(gh, gw, side, v.spatial_merge_size) @ table
        assert rel_err(ours, ref[0, :, :, 0].T.numpy()) < 1e-5
        cos, sin = visual.rotary_pos_emb(torch.zeros(1), pos)
        ours_cos, ours_sin = rope_cos_sin(gh, gw, v.head_dim, v.rope_theta, v.spatial_merge_size)
        np.testing.assert_allclose(ours_cos, cos.numpy(), atol=2e-6)
        np.testing.assert_allclose(ours_sin, sin.numpy(), atol=2e-6)


def test_graph_contract(ckpt, bundle, encoders):
    for dtype, enc in encoders.items():
        onnx.checker.check_model(str(bundle / f"vision-encoder-{dtype}.onnx"))
        assert enc.meta.dtype == dtype
        assert io_description(enc.meta) == describe_io(ckpt.spec.vision, dtype)
    desc = describe_io(ckpt.spec.vision)
    assert [a["name"] for a in desc["inputs"]] == ["pixel_patches", "pos_interp", "rope_cos", "rope_sin"]
    assert desc["inputs"][0]["shape"] == ["num_patches", 1176]
    assert desc["inputs"][1]["shape"] == ["num_patches", 576]
    assert desc["outputs"] == [{"name": "vision_hidden", "dtype": "float32", "shape": ["num_patches", 64]}]
    assert "MultiHeadAttention" in {n.op_type for n in onnx.load(bundle / "vision-encoder-fp32.onnx").graph.node}
    kinds = {n.op_type for n in onnx.load(bundle / "vision-encoder-int8.onnx").graph.node}
    assert "MatMulInteger" in kinds or "DynamicQuantizeMatMul" in kinds


def test_manifest_mismatch_raises(ckpt, bundle):
    path = bundle / "vision-encoder-fp32.onnx"
    good = describe_io(ckpt.spec.vision)
    VisionEncoder(path, provider="cpu", expected_io=good)
    wrong_width = {**good, "inputs": [dict(good["inputs"][0], shape=["num_patches", 588]), *good["inputs"][1:]]}
    with pytest.raises(VisionError, match="pixel_patches"):
        VisionEncoder(path, provider="cpu", expected_io=wrong_width)
    renamed = {**good, "outputs": [dict(good["outputs"][0], name="last_hidden_state")]}
    with pytest.raises(VisionError, match="outputs"):
        VisionEncoder(path, provider="cpu", expected_io=renamed)
    bare = onnx.load(path)
    del bare.metadata_props[:]
    onnx.save(bare, bundle / "no-meta.onnx")
    with pytest.raises(VisionError, match="metadata"):
        VisionEncoder(bundle / "no-meta.onnx", provider="cpu")
    with pytest.raises(VisionError, match="missing"):
        VisionEncoder(bundle / "absent.onnx")


def test_encode_rejects_bad_inputs(ckpt, encoders):
    enc = encoders["fp32"]
    x = patches(4, 4, ckpt)
    with pytest.raises(VisionError, match="shape"):
        enc.encode(x[:-1], [1, 4, 4])
    with pytest.raises(VisionError, match="t=1"):
        enc.encode(x, [2, 4, 2])
    with pytest.raises(VisionError, match="multiples"):
        enc.encode(patches(3, 4, ckpt), [1, 3, 4])


def test_provider_selection(caplog):
    with caplog.at_level(logging.INFO, logger="edge.vision.encoder"):
        assert select_providers("auto", ["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in caplog.text
    both = ["CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("auto", both) == both
    assert select_providers("coreml", both) == both
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("CUDAExecutionProvider", cuda) == cuda
    assert select_providers("auto", ["CoreMLExecutionProvider", *cuda]) == cuda  # CUDA ranks first
    with pytest.raises(VisionError, match="cuda"):
        select_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(VisionError, match="tensorrt"):
        select_providers("tensorrt", ["CPUExecutionProvider"])


def test_grid_cache_is_bounded(bundle):
    enc = VisionEncoder(bundle / "vision-encoder-fp32.onnx", provider="cpu", cache_entries=2)
    first = enc.grid_inputs(4, 4)
    assert enc.grid_inputs(4, 4) is first
    enc.grid_inputs(6, 4)
    enc.grid_inputs(4, 6)
    assert list(enc._cache) == [(6, 4), (4, 6)]
    small = VisionEncoder(bundle / "vision-encoder-fp32.onnx", provider="cpu", cache_bytes=100_000)
    small.grid_inputs(4, 4)  # 16 patches: ~45 kB
    small.grid_inputs(6, 4)  # 24 patches: ~68 kB, pushes the first one out
    assert list(small._cache) == [(6, 4)]
    small.grid_inputs(20, 20)  # larger than the budget alone: computed, not kept
    assert list(small._cache) == []


def test_external_data_and_legacy_prefix(ckpt, encoders, tmp_path, monkeypatch):
    """`.onnx.data` when large (threshold forced to 0); `visual.*` names convert to the same graph."""
    import convert.vision_onnx as vo

    monkeypatch.setattr(vo, "EXTERNAL_DATA_THRESHOLD", 0)
    files = export_vision(_Renamed(ckpt), tmp_path, "fp32")
    assert [f.name for f in files] == ["vision-encoder-fp32.onnx", "vision-encoder-fp32.onnx.data"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    x = patches(6, 4, ckpt)
    split = VisionEncoder(files[0], provider="cpu").encode(x, [1, 6, 4])
    np.testing.assert_array_equal(split, encoders["fp32"].encode(x, [1, 6, 4]))
    files = export_vision(ckpt, tmp_path / "int8", "int8")  # the quantizer's external-data path
    assert [f.name for f in files] == ["vision-encoder-int8.onnx", "vision-encoder-int8.onnx.data"]
    assert cosine(VisionEncoder(files[0], provider="cpu").encode(x, [1, 6, 4]), split) > 0.99


def test_attention_bias(ckpt, hf_model):
    """qkv bias (`attention_bias`, unverified for the real checkpoint) against transformers."""
    from transformers.models.glm4v.modeling_glm4v import Glm4vVisionModel

    biased = _WithQkvBias(ckpt)
    cfg = hf_model.config.vision_config.__class__(**{**hf_model.config.vision_config.to_dict(), "attention_bias": True})
    ref_model = Glm4vVisionModel(cfg).eval()
    state = {k: torch.from_numpy(biased.get("model.visual." + k)) for k in ref_model.state_dict()}
    ref_model.load_state_dict(state, strict=True)
    import onnxruntime as ort

    session = ort.InferenceSession(build_vision_model(biased).SerializeToString(), providers=["CPUExecutionProvider"])
    gh, gw = 6, 4
    x = patches(gh, gw, ckpt)
    seen = {}
    ref_model.post_layernorm.register_forward_hook(lambda m, i, o: seen.__setitem__("vit", o.detach().numpy()))
    with torch.no_grad():
        ref_model(torch.from_numpy(x), grid_thw=torch.tensor([[1, gh, gw]]))
    v = biased.spec.vision
    cos, sin = rope_cos_sin(gh, gw, v.head_dim, v.rope_theta, v.spatial_merge_size)
    side = v.image_size // v.patch_size
    feeds = {"pixel_patches": x, "pos_interp": pos_interp(gh, gw, side, 2), "rope_cos": cos, "rope_sin": sin}
    (out,) = session.run(None, feeds)
    assert rel_err(out, seen["vit"]) < FP32_MAX_REL


class _Renamed:
    """The checkpoint as an older `visual.*`-prefixed one."""

    def __init__(self, ckpt):
        self.ckpt, self.spec, self.path, self.config = ckpt, ckpt.spec, ckpt.path, ckpt.config

    def _real(self, name):
        return "model." + name if name.startswith("visual.") else "(hidden) " + name

    def has(self, name):
        return self.ckpt.has(self._real(name))

    def get(self, name, shape=None):
        return self.ckpt.get(self._real(name), shape)


class _WithQkvBias(_Renamed):
    """The checkpoint with attention_bias=True and random qkv biases."""

    def __init__(self, ckpt):
        super().__init__(ckpt)
        self.spec = dataclasses.replace(ckpt.spec, vision=dataclasses.replace(ckpt.spec.vision, attention_bias=True))

    def has(self, name):
        return name.endswith("attn.qkv.bias") or self.ckpt.has(name)

    def get(self, name, shape=None):
        if name.endswith("attn.qkv.bias"):
            n = 3 * self.spec.vision.hidden_size
            return np.random.default_rng(len(name)).standard_normal(n).astype(np.float32) * 0.5
        return self.ckpt.get(name, shape)
