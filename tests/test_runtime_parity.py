"""The runtime (llama.cpp decoder + ONNX vision + projector) generates exactly what transformers generates.

Tiny checkpoint, F32 decoder with an F32 KV cache and flash attention off, fp32 vision, F32 projector.
n_batch=64 / n_ubatch=16 so that long prompts and large images cross batch boundaries.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.runtime import Runtime
from tests.conftest import png_bytes
from tests.hf_reference import hf_greedy, hf_last_logits

N_NEW = 24


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    rt = Runtime.load(tiny_bundle, device="cpu", vision_dtype="fp32", ctx_size=2048, batch_size=64, ubatch_size=16,
                      kv_type="f32", flash_attn="off", threads=2)
    yield rt
    rt.close()


def image_part(data: bytes) -> dict:
    return {"type": "image", "image": data}


def ours(runtime, messages, **kwargs):
    done = runtime.chat(messages, temperature=0.0, repetition_penalty=1.0, max_tokens=N_NEW, **kwargs)
    return done


def hf_messages(messages):
    """The same conversation as transformers' template sees it (image parts carry no data there)."""
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            m = {**m, "content": [{"type": "image"} if p.get("type") == "image" else p for p in m["content"]]}
        out.append(m)
    return out


def check_same(runtime, hf_model, hf_tokenizer, messages, images=(), **kwargs):
    prepared = [runtime.prepare(runtime.prompt.build(messages)[1][i]) for i in range(len(images))]
    done = ours(runtime, messages, **kwargs)
    expected = hf_greedy(hf_model, hf_tokenizer, hf_messages(messages), prepared, max_new_tokens=N_NEW, **kwargs)
    assert done.token_ids == expected
    assert len(expected) >= 8  # a meaningful continuation, not an immediate stop
    return done


def test_text_only(runtime, hf_model, hf_tokenizer):
    check_same(runtime, hf_model, hf_tokenizer, [{"role": "user", "content": "Describe a red bicycle."}])


def test_one_image(runtime, hf_model, hf_tokenizer):
    img = png_bytes(100, 70, seed=1)
    msgs = [{"role": "user", "content": [image_part(img), {"type": "text", "text": "What is in the picture?"}]}]
    check_same(runtime, hf_model, hf_tokenizer, msgs, images=[img])


def test_two_images_in_one_message(runtime, hf_model, hf_tokenizer):
    a, b = png_bytes(56, 112, seed=2), png_bytes(140, 84, seed=3)
    msgs = [{"role": "user", "content": [image_part(a), {"type": "text", "text": "and"}, image_part(b), {"type": "text", "text": "Compare."}]}]
    check_same(runtime, hf_model, hf_tokenizer, msgs, images=[a, b])


def test_image_in_second_user_turn(runtime, hf_model, hf_tokenizer):
    img = png_bytes(84, 84, seed=4)
    msgs = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": [image_part(img), {"type": "text", "text": "Describe this."}]},
    ]
    check_same(runtime, hf_model, hf_tokenizer, msgs, images=[img])


def test_image_inside_tool_result(runtime, hf_model, hf_tokenizer):
    img = png_bytes(70, 98, seed=5)
    tools = [{"type": "function", "function": {"name": "zoom", "description": "Zoom into the image",
                                               "parameters": {"type": "object", "properties": {"factor": {"type": "number"}}}}}]
    msgs = [
        {"role": "user", "content": "Zoom in twice."},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": '{"factor": 2}'}}]},
        {"role": "tool", "content": [{"type": "text", "text": "zoomed:"}, image_part(img)]},
    ]
    hf_msgs = hf_messages(msgs)
    hf_msgs[1] = {**hf_msgs[1], "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": {"factor": 2}}}]}
    prepared = [runtime.prepare(runtime.prompt.build(msgs, tools)[1][0])]
    done = ours(runtime, msgs, tools=tools)
    assert done.token_ids == hf_greedy(hf_model, hf_tokenizer, hf_msgs, prepared, max_new_tokens=N_NEW, tools=tools)


def test_prompt_longer_than_batch(runtime, hf_model, hf_tokenizer):
    text = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 12)
    chunks = runtime.prompt.build([{"role": "user", "content": text}])[0]
    assert sum(len(c.tokens) for c in chunks) > 2 * runtime.decoder.n_batch
    check_same(runtime, hf_model, hf_tokenizer, [{"role": "user", "content": text}])


def test_image_with_more_tokens_than_batch(runtime, hf_model, hf_tokenizer):
    img = png_bytes(336, 252, seed=6)  # 12 x 9 merged = 108 image tokens > n_batch 64 > n_ubatch 16
    msgs = [{"role": "user", "content": [image_part(img), {"type": "text", "text": "Describe."}]}]
    im = runtime.prepare(runtime.prompt.build(msgs)[1][0])
    assert im.n_tokens > runtime.decoder.n_batch
    check_same(runtime, hf_model, hf_tokenizer, msgs, images=[img])


def test_thinking_off(runtime, hf_model, hf_tokenizer):
    msgs = [{"role": "user", "content": "Answer briefly: what color is the sky?"}]
    check_same(runtime, hf_model, hf_tokenizer, msgs, enable_thinking=False)


def test_last_logits_close_with_two_images(runtime, hf_model, hf_tokenizer):
    a, b = png_bytes(100, 70, seed=7), png_bytes(60, 200, seed=8)
    msgs = [{"role": "user", "content": [image_part(a), image_part(b), {"type": "text", "text": "Which is larger?"}]}]
    prepared = [runtime.prepare(r) for r in runtime.prompt.build(msgs)[1]]
    prompt = runtime.build_prompt(msgs)
    with runtime.engine.acquire(prompt.chunks, reuse=False) as lease:
        ours_logits = lease.prompt_logits(runtime.embed(prompt, lease.plan.missing_media))
    ref = hf_last_logits(hf_model, hf_tokenizer, hf_messages(msgs), prepared)
    err = np.abs(ours_logits - ref).max()
    assert err < 2e-4, err  # logits have std ~4; measured ~2e-5

