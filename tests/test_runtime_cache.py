"""KV-prefix reuse, the image cache, the embedding path and context overflow on the tiny exact bundle."""

from __future__ import annotations

import numpy as np
import pytest

from convert.checkpoint import Checkpoint
from edge.errors import ContextOverflowError
from edge.engine.chunks import image_positions
from edge.runtime import Runtime
from tests.conftest import png_bytes

GREEDY = dict(temperature=0.0, repetition_penalty=1.0, max_tokens=16)


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    rt = Runtime.load(tiny_bundle, device="cpu", vision_dtype="fp32", ctx_size=1024, batch_size=64, ubatch_size=32,
                      kv_type="f32", flash_attn="off", threads=2)
    yield rt
    rt.close()


def conversation(img: bytes) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "What is this?"}]}]


def test_second_turn_reuses_kv_and_image_cache(runtime):
    img = png_bytes(112, 84, seed=11)
    first_msgs = conversation(img)
    first = runtime.chat(first_msgs, **GREEDY)
    encoded = runtime.stats.images_encoded

    second_msgs = first_msgs + [
        {"role": "assistant", "content": "It looks like a gradient."},
        {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Again, the same picture?"}]},
    ]
    warm = runtime.chat(second_msgs, **GREEDY)
    # The first image stays in the KV prefix (not encoded, not even looked up); the repeated one hits the cache.
    assert runtime.stats.images_encoded == encoded
    assert warm.usage.images_cached == 1
    assert warm.usage.cached_tokens > first.usage.prompt_tokens // 2

    runtime.forget_prefix()
    runtime.decoder.truncate(0)
    runtime.image_cache = type(runtime.image_cache)(runtime.image_cache.max_bytes)
    cold = runtime.chat(second_msgs, **GREEDY)
    assert cold.usage.cached_tokens == 0
    assert runtime.stats.images_encoded == encoded + 1  # one encode serves both copies of the image
    assert cold.token_ids == warm.token_ids


def test_identical_request_twice_is_identical(runtime):
    msgs = [{"role": "user", "content": "Tell me about 2 cats."}]
    a = runtime.chat(msgs, **GREEDY)
    b = runtime.chat(msgs, **GREEDY)
    assert b.usage.cached_tokens == b.usage.prompt_tokens - 1  # all but the last prompt token reused
    assert a.token_ids == b.token_ids


def test_embedding_path_equals_token_path(runtime, tiny_checkpoint):
    dec = runtime.decoder
    runtime.forget_prefix()
    table = Checkpoint(tiny_checkpoint).get("model.language_model.embed_tokens.weight")
    ids = dec.tokenize("[gMASK]<sop><|user|>\nHello there, what is in this photo?<|assistant|>\n")
    dec.truncate(0)
    dec.decode_tokens(ids, 0)
    by_tokens = dec.logits()
    dec.truncate(0)
    k, n = 4, 5
    dec.decode_tokens(ids[:k], 0, logits_last=False)
    pos = np.repeat(np.arange(k, k + n, dtype=np.int32)[None], 4, axis=0)
    pos[3] = 0
    dec.decode_embeddings(table[ids[k:k + n]], pos)
    dec.decode_tokens(ids[k + n:], k + n)
    by_embeddings = dec.logits()
    dec.truncate(0)
    np.testing.assert_allclose(by_embeddings, by_tokens, atol=1e-5)


def test_image_positions_section_major():
    pos = image_positions(10, 2, 3)
    assert pos.tolist() == [[10] * 6, [10, 10, 10, 11, 11, 11], [10, 11, 12, 10, 11, 12], [0] * 6]


def test_context_overflow_is_typed_with_numbers(runtime):
    text = "word " * 3000
    with pytest.raises(ContextOverflowError) as info:
        runtime.chat([{"role": "user", "content": text}], **GREEDY)
    err = info.value
    assert err.allowed == runtime.decoder.n_ctx and err.needed > err.allowed
    assert str(err.needed) in str(err) and str(err.allowed) in str(err)
    # The runtime is still usable afterwards.
    assert runtime.chat([{"role": "user", "content": "Hi"}], **GREEDY).usage.completion_tokens > 0


def test_generation_stops_at_context_end(runtime):
    text = "word " * 490  # two tokens each: the prompt nearly fills the 1024-token context
    done = runtime.chat([{"role": "user", "content": text}], temperature=0.0, max_tokens=500)
    assert done.finish_reason == "length"
    assert done.usage.prompt_tokens + done.usage.completion_tokens <= runtime.decoder.n_ctx


def test_stop_string_cuts_output(runtime):
    msgs = [{"role": "user", "content": "Describe a red bicycle."}]
    full = runtime.chat(msgs, **GREEDY)
    assert len(full.text) > 6
    stop = full.text[3:6]
    cut = runtime.chat(msgs, stop=(stop,), **GREEDY)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


def test_known_image_is_not_preprocessed_again(runtime, monkeypatch):
    import edge.runtime as rt_module

    calls = []
    real = rt_module.prepare_image
    monkeypatch.setattr(rt_module, "prepare_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    img = png_bytes(98, 70, seed=21)
    first = runtime.chat(conversation(img), **GREEDY)
    assert len(calls) == 1
    again = runtime.chat(conversation(img), **GREEDY)
    assert len(calls) == 1  # layout facts came from the memo, the embedding from the KV prefix
    assert again.token_ids == first.token_ids
    runtime.forget_prefix()
    runtime.decoder.truncate(0)
    runtime.image_cache = type(runtime.image_cache)(runtime.image_cache.max_bytes)
    cold = runtime.chat(conversation(img), **GREEDY)
    assert len(calls) == 2  # embedding needed and not cached: prepared again, lazily
    assert cold.token_ids == first.token_ids


def test_projector_engine_is_selectable(tiny_bundle):
    from edge.vision.numpy_projector import Projector

    with Runtime.load(tiny_bundle, device="cpu", ctx_size=512, threads=1, projector="numpy") as rt:
        assert isinstance(rt.projector, Projector)
