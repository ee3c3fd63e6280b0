"""Bounded-memory conversion: tensors written in row blocks give byte-identical GGUFs to whole-tensor writes, a
truncated shard is caught inside a tensor, and the whole-bundle disk check counts every output and intermediate."""

from __future__ import annotations

import shutil
from collections import namedtuple

import numpy as np
import pytest

import convert.checkpoint as checkpoint_mod
from convert import pipeline
from convert.bundle_writer import convert_checkpoint
from convert.checkpoint import Checkpoint
from convert.pipeline import conversion_disk_need, convert_decoder, decoder_weight_count, vision_weight_counts
from edge.errors import CheckpointError, ConversionError


@pytest.mark.parametrize("quant", ["F32", "F16", "BF16"])
def test_row_blocks_write_the_same_file(tiny_checkpoint, tmp_path, monkeypatch, quant):
    whole = convert_decoder(Checkpoint(tiny_checkpoint), tmp_path / "whole", quant).read_bytes()
    monkeypatch.setattr(checkpoint_mod, "ROW_BLOCK_BYTES", 3000)  # a few rows per block, odd counts
    blocks = convert_decoder(Checkpoint(tiny_checkpoint), tmp_path / "blocks", quant).read_bytes()
    assert blocks == whole


def test_iter_rows_equals_get(tiny_checkpoint):
    ckpt = Checkpoint(tiny_checkpoint)
    name = "model.language_model.embed_tokens.weight"
    blocks = list(ckpt.iter_rows(name, max_bytes=5 * 256 * 4))
    assert [b.shape[0] for b in blocks[:2]] == [5, 5] and len(blocks) == -(-ckpt.shape(name)[0] // 5)
    assert np.array_equal(np.concatenate(blocks), ckpt.get(name))
    bits = np.concatenate(list(ckpt.iter_rows(name, bf16_bits=True, max_bytes=7 * 256 * 4)))
    assert np.array_equal(bits, ckpt.get_bf16_bits(name))


def test_truncated_shard_inside_a_tensor(tiny_checkpoint, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, src)
    ckpt = Checkpoint(src)
    name = "model.language_model.embed_tokens.weight"
    info = ckpt.tensors[name]
    with open(info.file, "r+b") as f:
        f.truncate(info.start + info.nbytes // 2)
    with pytest.raises(CheckpointError, match="truncated inside tensor"):
        list(ckpt.iter_rows(name))


def test_disk_need_counts_outputs_and_the_largest_intermediate(tiny_checkpoint, tmp_path, monkeypatch):
    ckpt = Checkpoint(tiny_checkpoint)
    n = decoder_weight_count(ckpt)
    tower, projector = vision_weight_counts(ckpt)
    assert tower > 0 and projector > 0
    q4 = conversion_disk_need(ckpt, "Q4_K_M", ("fp32",), "F16")
    f16 = conversion_disk_need(ckpt, "F16", ("fp32",), "F16")
    assert q4 - f16 == pytest.approx(n * (0.62 - 2.0) + 2 * n, abs=2)  # Q4_K_M output + its BF16 intermediate
    with_int8 = conversion_disk_need(ckpt, "F16", ("fp32", "int8"), "F16")
    assert with_int8 - f16 == pytest.approx(tower * (1 + 8), abs=2)  # int8 output + its fp32 scratch
    written = convert_checkpoint(tiny_checkpoint, tmp_path / "b", quant="F16", vision_dtypes=("fp32", "int8"))
    total = sum(p.stat().st_size for p in written.iterdir())
    assert total <= with_int8

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: Usage(1 << 40, (1 << 40) - with_int8 + 1, with_int8 - 1))
    with pytest.raises(ConversionError, match="not enough disk space"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "c", quant="F16", vision_dtypes=("fp32", "int8"))
    assert not list((tmp_path / "c").iterdir())  # refused before anything was written


def test_int8_encoder_equals_onnxruntime_quantize_dynamic(tiny_checkpoint, tmp_path):
    """Our streamed int8 graph computes exactly what onnxruntime's quantizer makes of the fp32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from convert.vision_onnx import export_vision
    from edge.vision.encoder import VisionEncoder

    ckpt = Checkpoint(tiny_checkpoint)
    fp32 = export_vision(ckpt, tmp_path / "fp32", "fp32")[0]
    ours = export_vision(ckpt, tmp_path / "int8", "int8")[0]
    shaped, reference = tmp_path / "shaped.onnx", tmp_path / "reference.onnx"
    quant_pre_process(fp32, shaped, skip_optimization=True)
    quantize_dynamic(shaped, reference, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=["patch_embed.matmul", "pos_embed.matmul"], per_channel=True,
                     extra_options={"MatMulConstBOnly": True})
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((6 * 4, 1176)).astype(np.float32)
    encoder = VisionEncoder(ours, provider="cpu")
    got = encoder.encode(x, [1, 6, 4])
    session = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"pixel_patches": x, **encoder.grid_inputs(6, 4)})[0]
    np.testing.assert_array_equal(got, expected)
