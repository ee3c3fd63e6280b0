"""edge.engine.llama on its own: options, device choice, quantized files, buffers and positions."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from convert.checkpoint import Checkpoint
from convert.pipeline import convert_decoder
from edge.engine.llama import Decoder, cpu_has_amx, gpu_layers
from edge.errors import DecoderError, OptionError
from edge.options import RuntimeOptions


@pytest.fixture(scope="module")
def q8_decoder(tiny_checkpoint, tmp_path_factory):
    path = convert_decoder(Checkpoint(tiny_checkpoint), tmp_path_factory.mktemp("q8"), "Q8_0")
    with Decoder(str(path), RuntimeOptions(ctx_size=512, batch_size=32, ubatch_size=16, threads=2)) as dec:
        yield dec


def test_quantized_decoder_runs_with_safe_buffers(q8_decoder):
    # On AMX CPUs llama.cpp's extra buffers crash quantized decodes; they must be off there.
    assert q8_decoder.extra_buffers == (not cpu_has_amx())
    ids = q8_decoder.tokenize("[gMASK]<sop><|user|>\nHello there<|assistant|>\n")
    q8_decoder.truncate(0)
    q8_decoder.decode_tokens(ids, 0)
    logits = q8_decoder.logits()
    assert logits.shape == (q8_decoder.n_vocab,) and np.isfinite(logits).all()


def test_long_inputs_are_split_at_n_batch(q8_decoder):
    ids = q8_decoder.tokenize("word " * 60)
    assert len(ids) > 2 * q8_decoder.n_batch
    q8_decoder.truncate(0)
    q8_decoder.decode_tokens(ids, 0)
    a = q8_decoder.logits()
    emb = np.zeros((3 * q8_decoder.n_batch, q8_decoder.n_embd), dtype=np.float32)
    pos = np.zeros((4, emb.shape[0]), dtype=np.int32)
    pos[:3] = len(ids)
    q8_decoder.decode_embeddings(emb, pos)  # 96 rows > n_batch 32: split, never a GGML abort
    q8_decoder.truncate(len(ids))
    q8_decoder.decode_tokens(ids[-1:], len(ids))  # positions after the removed image are free again
    assert np.isfinite(q8_decoder.logits()).all() and not np.array_equal(a, q8_decoder.logits())


def test_bad_shapes_are_refused(q8_decoder):
    with pytest.raises(DecoderError, match="image embeddings have shape"):
        q8_decoder.decode_embeddings(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.int32))
    with pytest.raises(DecoderError, match="positions have shape"):
        q8_decoder.decode_embeddings(np.zeros((2, q8_decoder.n_embd), np.float32), np.zeros((3, 2), np.int32))


@pytest.mark.parametrize("kwargs, message", [
    (dict(device="tpu"), "device"), (dict(kv_type="q2"), "kv-type"), (dict(flash_attn="maybe"), "flash"),
    (dict(ctx_size=256, batch_size=512), "batch-size"),
])
def test_options_are_validated(kwargs, message):
    with pytest.raises(OptionError, match=message):
        RuntimeOptions(**kwargs)


def test_gpu_device_on_cpu_build_is_refused():
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has GPU offload")
    assert gpu_layers("cpu") == 0 and gpu_layers("auto") == 0
    with pytest.raises(DecoderError, match="without GPU offload"):
        gpu_layers("cuda")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DecoderError, match="could not load"):
        Decoder(str(tmp_path / "nope.gguf"), RuntimeOptions(ctx_size=512))
