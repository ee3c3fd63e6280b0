"""Parallel sequences (--parallel): concurrent generations in one llama.cpp context give exactly the ids each
gives alone (tiny checkpoint, F32 decoder and KV, greedy), also when requests arrive mid-decode or one is
cancelled; a new request lands on the slot holding its prefix."""

from __future__ import annotations

import threading

import pytest

from edge.chat.results import ChatDone
from edge.runtime import Runtime
from tests.conftest import png_bytes

GREEDY = dict(temperature=0.0, repetition_penalty=1.0, max_tokens=20)
TOOLS = [{"type": "function", "function": {"name": "zoom", "description": "Zoom into the image",
                                           "parameters": {"type": "object", "properties": {"factor": {"type": "number"}}}}}]


def image(data):
    return {"type": "image", "image": data}


REQUESTS = {
    "text": dict(messages=[{"role": "user", "content": "Describe a red bicycle."}]),
    "one image": dict(messages=[{"role": "user", "content": [image(png_bytes(100, 70, seed=1)),
                                                             {"type": "text", "text": "What is in the picture?"}]}]),
    "two images": dict(messages=[{"role": "user", "content": [image(png_bytes(56, 112, seed=2)), {"type": "text", "text": "and"},
                                                              image(png_bytes(140, 84, seed=3)), {"type": "text", "text": "Compare."}]}]),
    "tool image": dict(messages=[
        {"role": "user", "content": "Zoom in twice."},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": '{"factor": 2}'}}]},
        {"role": "tool", "content": [{"type": "text", "text": "zoomed:"}, image(png_bytes(70, 98, seed=5))]},
    ], tools=TOOLS),
}


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    rt = Runtime.load(tiny_bundle, device="cpu", vision_dtype="fp32", kv_type="f32", flash_attn="off", ctx_size=2048,
                      batch_size=64, ubatch_size=16, threads=2, parallel=4)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def solo(runtime):
    """Each request alone, from a cold cache."""
    out = {}
    for name, req in REQUESTS.items():
        runtime.forget_prefix()
        out[name] = runtime.chat(req["messages"], tools=req.get("tools"), **GREEDY).token_ids
        assert len(out[name]) >= 8
    runtime.forget_prefix()
    return out


def run_all(runtime, names, results, started=None, cancel=None):
    def one(name):
        events = runtime.stream_chat(REQUESTS[name]["messages"], tools=REQUESTS[name].get("tools"),
                                     cancel=(cancel or {}).get(name), **GREEDY)
        for event in events:
            if started is not None and name in started:
                started[name].set()
            if isinstance(event, ChatDone):
                results[name] = event
    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    return threads


def test_four_concurrent_requests_equal_each_alone(runtime, solo):
    results = {}
    for t in run_all(runtime, list(REQUESTS), results):
        t.join(120)
    assert {n: results[n].token_ids for n in REQUESTS} == solo
    assert runtime.engine.stats.steps > 0


def test_requests_arriving_while_others_decode(runtime, solo):
    runtime.forget_prefix()
    results, started = {}, {"text": threading.Event(), "one image": threading.Event()}
    first = run_all(runtime, ["text", "one image"], results, started)
    assert started["text"].wait(60) and started["one image"].wait(60)
    later = run_all(runtime, ["two images", "tool image"], results)
    for t in first + later:
        t.join(120)
    assert {n: results[n].token_ids for n in REQUESTS} == solo


def test_cancelling_one_leaves_the_others_unchanged(runtime, solo):
    runtime.forget_prefix()
    results, started = {}, {"two images": threading.Event()}
    cancel = {"two images": threading.Event()}
    threads = run_all(runtime, list(REQUESTS), results, started, cancel)
    assert started["two images"].wait(60)
    cancel["two images"].set()
    for t in threads:
        t.join(120)
    assert results["two images"].finish_reason == "cancelled"
    assert len(results["two images"].token_ids) < len(solo["two images"])
    assert {n: results[n].token_ids for n in REQUESTS if n != "two images"} == \
        {n: ids for n, ids in solo.items() if n != "two images"}
    assert runtime.engine.busy_slots == 0


def test_follow_up_lands_on_the_slot_with_its_prefix(runtime, solo):
    runtime.forget_prefix()
    results = {}
    for t in run_all(runtime, list(REQUESTS), results):
        t.join(120)
    req = REQUESTS["one image"]
    follow = req["messages"] + [{"role": "assistant", "content": results["one image"].output.content},
                                {"role": "user", "content": "And the colours?"}]
    again = runtime.chat(follow, **GREEDY)
    assert again.usage.cached_tokens >= results["one image"].usage.prompt_tokens
    assert again.usage.images_cached == 0  # its image stayed in that slot's KV prefix: not even looked up
    runtime.forget_prefix()
    cold = runtime.chat(follow, **GREEDY)
    assert cold.usage.cached_tokens == 0 and cold.token_ids == again.token_ids


def test_admission_beside_running_streams_takes_prefill_chunk_tokens_per_step(tiny_bundle, solo):
    """A prompt admitted while another sequence generates enters in chunks of at most --prefill-chunk tokens or
    media rows per step, and every answer still equals its solo ids."""
    chunk = 5
    rt = Runtime.load(tiny_bundle, device="cpu", vision_dtype="fp32", kv_type="f32", flash_attn="off", ctx_size=2048,
                      batch_size=64, ubatch_size=16, threads=2, parallel=2, prefill_chunk=chunk)
    events = []  # ("batch", sequence of each token) or ("media", sequence, rows), in decode order
    decoder = rt.engine.decoder
    decode_batch, decode_embeddings = decoder.decode_batch, decoder.decode_embeddings

    def spy_batch(tokens, positions, seqs, logits):
        events.append(("batch", list(seqs)))
        return decode_batch(tokens, positions, seqs, logits)

    def spy_embeddings(emb, positions, seq):
        events.append(("media", seq, len(emb)))
        return decode_embeddings(emb, positions, seq)

    decoder.decode_batch, decoder.decode_embeddings = spy_batch, spy_embeddings
    try:
        results, started = {}, {"text": threading.Event()}
        first = run_all(rt, ["text"], results, started)
        assert started["text"].wait(60)
        text = events[-1][1][-1]  # the text sequence is generating: its slot is in the latest batch
        mark = len(events)
        later = run_all(rt, ["two images"], results)
        for t in first + later:
            t.join(120)
    finally:
        rt.close()
    assert results["text"].token_ids == solo["text"] and results["two images"].token_ids == solo["two images"]
    after = events[mark:]
    batches = [e[1] for e in after if e[0] == "batch" and text in e[1] and len(set(e[1])) > 1]
    assert batches, "the prompt was never admitted beside the running stream"
    assert all(seqs.count(text) == 1 and len(seqs) - 1 <= chunk for seqs in batches), batches
    # A media piece is beside the stream when the same step's token batch (the next one) holds the stream's token.
    beside = [e[2] for e, nxt in zip(after, after[1:]) if e[0] == "media" and nxt[0] == "batch" and text in nxt[1]]
    assert beside and max(beside) <= chunk, beside
