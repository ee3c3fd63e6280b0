"""The official `openai` client, unchanged, against `glm-edge serve` (a real subprocess on 127.0.0.1) with the
tiny bundle. Greedy answers are compared with the in-process `Runtime` on the same messages, so the server
adds nothing and loses nothing (images, tools, reasoning, usage)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from tests.conftest import png_bytes
from tests.server_helpers import EXACT, MODEL, ROOT, data_url, subprocess_server

pytestmark = pytest.mark.timeout(300)

N = 24
OFF = {"chat_template_kwargs": {"enable_thinking": False}}
CAT, DOG, TOOL_IMG = png_bytes(100, 70, seed=1), png_bytes(56, 112, seed=2), png_bytes(84, 84, seed=4)
PHOTO_TOOL = {"type": "function", "function": {
    "name": "take_photo", "description": "take a photo of a subject",
    "parameters": {"type": "object", "properties": {"subject": {"type": "string", "maxLength": 12},
                                                    "zoom": {"type": "integer"}},
                   "required": ["subject"]}}}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("served-media")
    (d / "cat.png").write_bytes(CAT)
    return d


@pytest.fixture(scope="module")
def live(tiny_bundle, media_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    args = ["--device", "cpu", "--kv-type", "f32", "--flash-attn", "off", "--threads", "1", "--ctx-size", "2048",
            "--media-dir", str(media_dir), "--max-queue", "64"]
    with subprocess_server(tiny_bundle, *args, log_path=log) as (base, _proc):
        yield base


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live + "/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    from edge.runtime import Runtime

    rt = Runtime.load(tiny_bundle, ctx_size=2048, **EXACT)
    yield rt
    rt.close()


def image_tokens(usage) -> int:
    """usage.prompt_tokens_details.image_tokens (a declared field in recent openai clients, extra in older)."""
    details = usage.prompt_tokens_details
    value = getattr(details, "image_tokens", None)
    return value if value is not None else (details.model_extra or {})["image_tokens"]


def ref(rt, messages, **kw):
    return rt.chat(messages, temperature=0.0, max_tokens=N, **kw)


def ask(client, messages, **kw):
    kw.setdefault("extra_body", OFF)
    kw.setdefault("max_tokens", N)
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kw)


def test_models_and_health(client, live):
    assert [m.id for m in client.models.list().data][0] == MODEL
    health = httpx.get(live + "/health").json()
    assert health["status"] == "ready" and health["queue"]["running"] == 0


def test_non_streaming_equals_runtime(client, reference):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Describe a red bicycle."}]
    got = ask(client, messages)
    want = ref(reference, messages, enable_thinking=False)
    assert got.choices[0].message.content == want.output.content and want.output.content
    assert got.choices[0].finish_reason == want.finish_reason
    assert got.usage.completion_tokens == len(want.token_ids)
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
    assert got.id.startswith("chatcmpl-") and got.object == "chat.completion" and got.model == MODEL
    timings = got.model_extra["timings"]
    assert timings["decode_ms"] > 0 and timings["decode_tokens_per_second"] > 0
    assert ask(client, messages).choices[0].message.content == got.choices[0].message.content  # deterministic


def test_streaming_equals_non_streaming(client):
    messages = [{"role": "user", "content": "Count to five."}]
    whole = ask(client, messages)
    chunks = list(ask(client, messages, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def image_msg(*images, text="What is in the picture?", **spec):
    parts = [{"type": "image_url", "image_url": {"url": data_url(i), **spec}} for i in images]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def runtime_msg(*images, text="What is in the picture?", **spec):
    parts = [{"type": "image", "image": i, **spec} for i in images]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def test_one_image_as_data_url(client, reference):
    got = ask(client, image_msg(CAT))
    want = ref(reference, runtime_msg(CAT), enable_thinking=False)
    assert got.choices[0].message.content == want.output.content
    assert image_tokens(got.usage) == want.usage.image_tokens > 0
    text_tokens = got.usage.model_dump()["prompt_tokens_details"]["text_tokens"]
    assert text_tokens == got.usage.prompt_tokens - want.usage.image_tokens
    assert got.usage.prompt_tokens == want.usage.prompt_tokens


def test_two_images_and_token_budget(client, reference):
    got = ask(client, image_msg(CAT, DOG, text="Compare them."))
    want = ref(reference, runtime_msg(CAT, DOG, text="Compare them."), enable_thinking=False)
    assert got.choices[0].message.content == want.output.content
    assert image_tokens(got.usage) == want.usage.image_tokens
    assert want.usage.images == 2
    small = ask(client, image_msg(CAT, max_tokens=4))
    want_small = ref(reference, runtime_msg(CAT, max_tokens=4), enable_thinking=False)
    assert image_tokens(small.usage) == want_small.usage.image_tokens <= 4
    assert small.choices[0].message.content == want_small.output.content


def test_image_by_path_under_media_dir(client, media_dir):
    by_data = ask(client, image_msg(CAT)).choices[0].message.content
    for url in ("cat.png", str(media_dir / "cat.png"), (media_dir / "cat.png").as_uri()):
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is in the picture?"}]}]
        assert ask(client, msgs).choices[0].message.content == by_data


def test_tool_round_trip_with_image_in_tool_result(client, reference):
    messages = [{"role": "user", "content": "Take a photo of the cat and tell me what you see."}]
    first = ask(client, messages, tools=[PHOTO_TOOL], tool_choice={"type": "function", "function": {"name": "take_photo"}},
                max_tokens=64)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "take_photo" and isinstance(args["subject"], str) and len(args["subject"]) <= 12
    assert set(args) <= {"subject", "zoom"} and isinstance(args.get("zoom", 0), int)

    followup = messages + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": [
            {"type": "text", "text": "Here is the photo."},
            {"type": "image_url", "image_url": {"url": data_url(TOOL_IMG)}}]},
    ]
    second = ask(client, followup, tools=[PHOTO_TOOL])
    runtime_followup = messages + [
        {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
            "name": "take_photo", "arguments": call.function.arguments}}]},
        {"role": "tool", "content": [{"type": "text", "text": "Here is the photo."}, {"type": "image", "image": TOOL_IMG}]},
    ]
    want = ref(reference, runtime_followup, tools=[PHOTO_TOOL], enable_thinking=False)
    assert image_tokens(second.usage) == want.usage.image_tokens > 0
    assert second.choices[0].message.content == want.output.content
    assert second.usage.prompt_tokens == want.usage.prompt_tokens


def test_reasoning_on_and_off(client, reference):
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    on = ask(client, messages, extra_body={})  # the server default: thinking on
    want_on = ref(reference, messages, enable_thinking=True)
    msg = on.choices[0].message
    assert (msg.model_extra.get("reasoning_content") or "") == want_on.output.reasoning
    assert (msg.content or "") == want_on.output.content
    assert want_on.output.reasoning  # the tiny model "thinks" until max_tokens or </think>
    off = ask(client, messages)
    want_off = ref(reference, messages, enable_thinking=False)
    assert off.choices[0].message.model_extra.get("reasoning_content") is None
    assert off.choices[0].message.content == want_off.output.content
    streamed = list(ask(client, messages, extra_body={}, stream=True))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in streamed if c.choices)
    assert reasoning == want_on.output.reasoning


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "count": {"type": "integer"},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
    },
    "required": ["name", "count", "ok", "color", "tags"],
    "additionalProperties": False,
}


def _valid(obj) -> bool:
    import jsonschema_rs

    return jsonschema_rs.validator_for(SCHEMA).is_valid(obj)


def test_json_schema_output_parses_and_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
    for seed in (0, 1, 2):
        got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Describe a thing."}],
                                             response_format=fmt, max_tokens=200, seed=seed, temperature=0.8)
        obj = json.loads(got.choices[0].message.content)
        assert _valid(obj), obj
        assert got.choices[0].finish_reason == "stop"
        assert got.choices[0].message.model_extra.get("reasoning_content") is None  # thinking off when constrained
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Describe a thing."}],
                                            response_format=fmt, max_tokens=200, temperature=0, stream=True)
    assert _valid(json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)))
    # the openai client's own parse helper with a pydantic model
    from pydantic import BaseModel, Field

    class Thing(BaseModel):
        name: str = Field(max_length=8)
        count: int
        ok: bool

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    parsed = parse(model=MODEL, messages=[{"role": "user", "content": "A thing."}],
                                           response_format=Thing, max_tokens=300, temperature=0)
    assert isinstance(parsed.choices[0].message.parsed, Thing)


def test_json_object_mode(client):
    got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "JSON please"}],
                                         response_format={"type": "json_object"}, max_tokens=300, temperature=0)
    if got.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(got.choices[0].message.content), dict)
    else:  # an unbounded object may run out of tokens on a random model; what exists is a JSON prefix
        assert got.choices[0].message.content.startswith("{")


def test_required_tool_choice_single_call(client):
    got = ask(client, [{"role": "user", "content": "Photo!"}], tools=[PHOTO_TOOL], tool_choice="required",
              parallel_tool_calls=False, max_tokens=64)
    (call,) = got.choices[0].message.tool_calls
    assert call.function.name == "take_photo" and "subject" in json.loads(call.function.arguments)


def test_metrics_reflect_traffic(client, live):
    ask(client, image_msg(CAT))  # the cat again: an image-cache or KV-prefix hit
    text = httpx.get(live + "/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    assert values['glm_edge_chat_completions_total{mode="json",outcome="ok"}'] >= 5
    assert values['glm_edge_chat_completions_total{mode="stream",outcome="ok"}'] >= 1
    assert values["glm_edge_image_tokens_total"] > 0 and values["glm_edge_completion_tokens_total"] > 0
    assert values["glm_edge_runtime_images_encoded_total"] >= 3
    assert values["glm_edge_runtime_image_cache_hits_total"] + values["glm_edge_cached_tokens_total"] > 0
    assert values['glm_edge_stage_seconds_count{stage="decode"}'] >= 5
    assert values['glm_edge_http_requests_total{route="/v1/chat/completions",status="200"}'] >= 5
    assert values["glm_edge_queue_depth"] == 0 and values["glm_edge_model_loaded"] == 1


def test_cli_info_and_chat(tiny_bundle, tmp_path):
    info = subprocess.run([sys.executable, "-m", "edge.cli", "info", str(tiny_bundle)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "decoder-F32.gguf" in info.stdout and "onnxruntime providers" in info.stdout and "fp16" in info.stdout
    doctor = subprocess.run([sys.executable, "-m", "edge.cli", "doctor"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert doctor.returncode == 0 and "--device cpu" in doctor.stdout and "onnxruntime" in doctor.stdout
    image = tmp_path / "cat.png"
    image.write_bytes(CAT)
    chat = subprocess.run([sys.executable, "-m", "edge.cli", "chat", str(tiny_bundle), "What", "is", "this?",
                           "--image", str(image), "--max-tokens", "8", "--temperature", "0", "--no-thinking",
                           "--device", "cpu", "--ctx-size", "1024", "--stats", "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() and "8 generated tokens" in chat.stderr and "image" in chat.stderr
    bad = subprocess.run([sys.executable, "-m", "edge.cli", "chat", str(tiny_bundle), "hi", "--image",
                          str(tmp_path / "missing.png"), "--device", "cpu", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "glm-edge: error:" in bad.stderr and "Traceback" not in bad.stderr
