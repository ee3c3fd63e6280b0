"""The API's streaming, tool-call, reasoning and box extraction with a scripted engine (test double of the
llama.cpp engine only: the real template, tokenizer, parser, scheduler, HTTP stack run), plus the behaviour
around generation: cancellation on disconnect, FIFO queue, 429, loading state, API key, CORS."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from edge.options import RuntimeOptions
from tests.conftest import png_bytes
from tests.server_helpers import MODEL, ScriptedEngine, ThreadServer, data_url, long_script, prompt_text, sse_events, wait_for

pytestmark = pytest.mark.timeout(120)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}, "days": {"type": "integer"}},
                                                "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
CALL_PIECES = ["<think>", "I should", " look it up.", "</think>", "\n", "<tool_call>", "get_wea", "ther", "\n",
               "<arg_key>", "city", "</arg_key>", "\n", "<arg_value>", "Paris", "</arg_value>", "\n",
               "<arg_key>", "days", "</arg_key>", "\n", "<arg_value>", "3", "</arg_value>", "\n", "</tool_call>"]


def chat_body(**kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
    body.update(kw)
    return body


def stream_chunks(base, body, **kw):
    with httpx.stream("POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=30, **kw) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r)


def deltas(events):
    return [e["choices"][0]["delta"] for e in events if e != "[DONE]" and e.get("choices")]


def test_streamed_tool_call_name_first_then_arguments(serve):
    srv, engine = serve(CALL_PIECES)
    events = stream_chunks(srv.base, chat_body(tools=[WEATHER, NOW]))
    assert events[-1] == "[DONE]"
    ds = deltas(events)
    assert ds[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("reasoning_content", "") for d in ds) == "I should look it up."
    assert all("<" not in d.get("content", "") for d in ds) and not "".join(d.get("content", "") for d in ds)
    calls = [d["tool_calls"][0] for d in ds if "tool_calls" in d]
    assert len(calls) == 2
    head, args = calls
    assert head["index"] == 0 and head["type"] == "function" and head["id"].startswith("call_")
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert args == {"index": 0, "function": {"arguments": json.dumps({"city": "Paris", "days": 3})}}
    # the name is streamed before the first argument was generated (it follows the name line)
    names_at = next(i for i, d in enumerate(ds) if "tool_calls" in d)
    reasoning_at = max(i for i, d in enumerate(ds) if "reasoning_content" in d)
    assert reasoning_at < names_at
    finish = [e for e in events if e != "[DONE]" and e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert finish is not None and "timings" in finish[0]
    # the tools were rendered into the prompt (tool_choice auto) and thinking was on (prompt ends at <|assistant|>)
    prompt = prompt_text(srv.service.runtime, engine.last_entries)
    assert "<tools>" in prompt and '"get_weather"' in prompt and prompt.endswith("<|assistant|>\n")
    assert engine.last_params.grammar is None


def test_tool_call_non_streaming_and_openai_client_accumulation(serve):
    srv, _ = serve(CALL_PIECES)
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused")
    done = client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], tools=[WEATHER])
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.reasoning_content == "I should look it up."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
    assert call.id.startswith("call_")

    name, arguments, ids, finish = None, "", set(), None
    for chunk in client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], tools=[WEATHER],
                                                stream=True):
        for tc in chunk.choices[0].delta.tool_calls or []:
            ids.add(tc.id) if tc.id else None
            if tc.function.name:
                assert name is None and arguments == "", "the name comes first, once"
                name = tc.function.name
            arguments += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris", "days": 3}
    assert len(ids) == 1 and finish == "tool_calls"


def test_zero_argument_and_parallel_calls(serve):
    srv, _ = serve(["<tool_call>", "now", "</tool_call>", "\n", "<tool_call>now\n</tool_call>"])
    events = stream_chunks(srv.base, chat_body(tools=[NOW], chat_template_kwargs={"enable_thinking": False}))
    calls = [d["tool_calls"][0] for d in deltas(events) if "tool_calls" in d]
    assert [c.get("function", {}).get("name") for c in calls] == ["now", None, "now", None]
    assert [c["index"] for c in calls] == [0, 0, 1, 1]
    assert calls[1]["function"]["arguments"] == "{}" and calls[3]["function"]["arguments"] == "{}"
    assert calls[0]["id"] != calls[2]["id"]
    r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body(tools=[NOW]), timeout=30).json()
    msg = r["choices"][0]["message"]
    assert [c["function"] for c in msg["tool_calls"]] == [{"name": "now", "arguments": "{}"}] * 2
    assert r["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_separated_and_thinking_switch(serve):
    srv, engine = serve(["Let me think", ".", "</think>", "\n", "The answer", " is 4."])
    r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body(), timeout=30).json()
    msg = r["choices"][0]["message"]
    assert msg["reasoning_content"] == "Let me think." and msg["content"] == "The answer is 4."
    assert r["choices"][0]["finish_reason"] == "stop"
    assert prompt_text(srv.service.runtime, engine.last_entries).endswith("<|assistant|>\n")

    for off in ({"chat_template_kwargs": {"enable_thinking": False}}, {"thinking": {"type": "disabled"}}):
        engine.script = ["Plain", " answer."]
        r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body(**off), timeout=30).json()
        msg = r["choices"][0]["message"]
        assert msg["content"] == "Plain answer." and "reasoning_content" not in msg
        prompt = prompt_text(srv.service.runtime, engine.last_entries)
        assert prompt.endswith("<|assistant|>\n<think></think>\n") and "/nothink" in prompt

    engine.script = ["Reasoning", "</think>", "Answer"]
    events = stream_chunks(srv.base, chat_body())
    ds = deltas(events)
    assert "".join(d.get("reasoning_content", "") for d in ds) == "Reasoning"
    assert "".join(d.get("content", "") for d in ds) == "Answer"


def test_server_default_thinking_off(serve):
    srv, engine = serve(["Hi"], runtime=RuntimeOptions(thinking=False))
    r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body(), timeout=30).json()
    assert r["choices"][0]["message"]["content"] == "Hi"
    assert prompt_text(srv.service.runtime, engine.last_entries).endswith("<think></think>\n")
    httpx.post(srv.base + "/v1/chat/completions", json=chat_body(chat_template_kwargs={"enable_thinking": True}), timeout=30)
    assert prompt_text(srv.service.runtime, engine.last_entries).endswith("<|assistant|>\n")


def test_tool_choice_modes_reach_prompt_and_sampler(serve):
    srv, engine = serve(["<tool_call>now</tool_call>"])
    url = srv.base + "/v1/chat/completions"
    httpx.post(url, json=chat_body(tools=[WEATHER, NOW], tool_choice="none"), timeout=30)
    assert "<tools>" not in prompt_text(srv.service.runtime, engine.last_entries)
    assert "<tool_call>" in engine.last_params.stop and engine.last_params.grammar is None

    r = httpx.post(url, json=chat_body(tools=[WEATHER, NOW], tool_choice={"type": "function", "function": {"name": "now"}}),
                   timeout=30).json()
    grammar = engine.last_params.grammar
    assert '"now"' in grammar and '"get_weather"' not in grammar
    assert r["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "now"
    # a forced call runs with thinking off unless the request asks for it
    assert prompt_text(srv.service.runtime, engine.last_entries).endswith("<think></think>\n")

    httpx.post(url, json=chat_body(tools=[WEATHER, NOW], tool_choice="required", chat_template_kwargs={"enable_thinking": True}),
               timeout=30)
    grammar = engine.last_params.grammar
    assert '"now"' in grammar and '"get_weather"' in grammar and "c-think" in grammar.split("\n")[0]

    httpx.post(url, json=chat_body(response_format={"type": "json_object"}, stop="END", temperature=0.3, top_k=5,
                                   seed=7, max_completion_tokens=9, presence_penalty=0.5), timeout=30)
    p = engine.last_params
    assert p.grammar and p.stop == ("END",) and p.temperature == 0.3 and p.top_k == 5 and p.seed == 7
    assert p.max_tokens == 9 and p.presence_penalty == 0.5


def test_boxes_extension(serve):
    srv, _ = serve(["The cat ", "<|begin_of_box|>", "[100,200,", "300,400]", "<|end_of_box|>"])
    image = data_url(png_bytes(200, 100, seed=3))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                             {"type": "text", "text": "Where is the cat?"}]}]
    body = chat_body(messages=messages, chat_template_kwargs={"enable_thinking": False})
    expected = [{"label": "The cat", "box_1000": [100, 200, 300, 400], "box_px": [20.0, 20.0, 60.0, 40.0],
                 "image_index": 0}]
    r = httpx.post(srv.base + "/v1/chat/completions", json=body, timeout=30).json()
    assert r["choices"][0]["message"]["boxes"] == expected
    assert "<|begin_of_box|>[100,200,300,400]<|end_of_box|>" in r["choices"][0]["message"]["content"]
    assert r["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    events = stream_chunks(srv.base, body)
    final = [d for d in deltas(events) if "boxes" in d]
    assert final == [{"boxes": expected}]


def test_usage_chunk_only_when_asked(serve):
    srv, _ = serve(["a", "b"])
    events = stream_chunks(srv.base, chat_body())
    assert not any(e != "[DONE]" and "usage" in e for e in events)
    events = stream_chunks(srv.base, chat_body(stream_options={"include_usage": True}))
    usage = [e for e in events if e != "[DONE]" and "usage" in e]
    assert len(usage) == 1 and usage[0]["choices"] == [] and events[-2] is usage[0]
    u = usage[0]["usage"]
    assert u["completion_tokens"] == 2 and u["total_tokens"] == u["prompt_tokens"] + 2
    assert set(u["prompt_tokens_details"]) >= {"cached_tokens", "image_tokens"}


def test_disconnect_cancels_stream_and_frees_the_slot(serve):
    engine = ScriptedEngine(long_script, delay=0.01)
    srv, _ = serve(None, engine=engine, runtime=RuntimeOptions(thinking=False))
    with httpx.stream("POST", srv.base + "/v1/chat/completions", json=chat_body(stream=True, max_tokens=5000),
                      timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(g.startswith("data: ") for g in got)
    # the client is gone: the generation is closed long before its 50 s script ends, and the slot is free
    assert wait_for(lambda: (5000, "closed") in engine.log), engine.log
    assert wait_for(lambda: srv.service.scheduler.running == 0)
    start = time.monotonic()
    r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body(max_tokens=10), timeout=30).json()
    assert r["choices"][0]["message"]["content"] == "short" and time.monotonic() - start < 5
    assert srv.service.metrics.counter("chat_completions_total", outcome="cancelled", mode="stream") == 1


def test_disconnect_cancels_non_streaming_request(serve):
    engine = ScriptedEngine(long_script, delay=0.01)
    srv, _ = serve(None, engine=engine, runtime=RuntimeOptions(thinking=False))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.base + "/v1/chat/completions", json=chat_body(max_tokens=5000), timeout=0.5)
    assert wait_for(lambda: (5000, "closed") in engine.log), engine.log
    r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body(max_tokens=10), timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "short"


def _post_in_thread(url, body, results, key):
    def run():
        try:
            results[key] = httpx.post(url, json=body, timeout=30)
        except httpx.HTTPError as e:  # pragma: no cover - reported by the assertion below
            results[key] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_queue_is_fifo_and_bounded(serve):
    gate = threading.Event()
    engine = ScriptedEngine(lambda p: [f"#{p.max_tokens}"], gate=gate)
    srv, _ = serve(None, engine=engine, max_queue=3, runtime=RuntimeOptions(thinking=False, parallel=1))
    url = srv.base + "/v1/chat/completions"
    results, threads = {}, []
    threads.append(_post_in_thread(url, chat_body(max_tokens=100), results, 100))
    assert wait_for(lambda: srv.service.scheduler.running == 1)
    for i, n in enumerate((101, 102, 103)):
        threads.append(_post_in_thread(url, chat_body(max_tokens=n), results, n))
        assert wait_for(lambda: srv.service.scheduler.depth == i + 1)
    r = httpx.post(url, json=chat_body(max_tokens=104), timeout=30)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "queue_full" and err["type"] == "rate_limit_error" and "--max-queue 3" in err["message"]
    health = httpx.get(srv.base + "/health").json()
    assert health["queue"] == {"waiting": 3, "running": 1, "max_queue": 3}
    metrics = httpx.get(srv.base + "/metrics").text
    assert "glm_edge_queue_depth 3" in metrics and "glm_edge_generation_running 1" in metrics
    gate.set()
    for t in threads:
        t.join(30)
    assert [results[n].json()["choices"][0]["message"]["content"] for n in (100, 101, 102, 103)] == \
        ["#100", "#101", "#102", "#103"]
    assert [n for n, what in engine.log if what == "start"] == [100, 101, 102, 103]
    assert 'outcome="rejected"' in httpx.get(srv.base + "/metrics").text


def test_health_loading_then_ready_and_load_failure(tiny_bundle):
    from edge.errors import BundleError
    from edge.runtime import Runtime
    from edge.api.app import create_app
    from edge.api.service import ServerSettings

    release = threading.Event()

    def slow(settings):
        release.wait(30)
        return Runtime.load(settings.bundle, device="cpu", ctx_size=512, threads=1)

    with ThreadServer(create_app(ServerSettings(bundle=tiny_bundle), slow), wait=False) as srv:
        r = httpx.get(srv.base + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body())
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        assert r.headers["retry-after"] == "2"
        release.set()
        assert wait_for(lambda: httpx.get(srv.base + "/health").status_code == 200, 30)
        assert httpx.get(srv.base + "/health").json()["status"] == "ready"

    def broken(settings):
        raise BundleError("manifest.json: corrupt")

    with ThreadServer(create_app(ServerSettings(bundle=tiny_bundle), broken), wait=False) as srv:
        assert wait_for(lambda: httpx.get(srv.base + "/health").json()["status"] == "failed")
        assert httpx.get(srv.base + "/health").status_code == 503
        r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body())
        assert r.status_code == 503 and "corrupt" in r.json()["error"]["message"]


def test_api_key(serve):
    srv, _ = serve(["ok"], api_key="sekrit")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics")):
            r = httpx.request(method, srv.base + path, headers=headers, json=chat_body() if method == "POST" else None)
            assert r.status_code == 401, (headers, path)
            assert r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(srv.base + "/health").status_code == 200
    assert httpx.get(srv.base + "/").status_code == 200
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="sekrit")
    assert client.chat.completions.create(model=MODEL, messages=chat_body()["messages"]).choices[0].message.reasoning_content == "ok"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.base + "/v1", api_key="nope").models.list()


def test_cors_off_by_default_and_on_with_origin(serve):
    preflight = {"Origin": "http://app.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    srv, _ = serve(["ok"])
    r = httpx.options(srv.base + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(srv.base + "/v1/models", headers={"Origin": "http://app.test"})
    assert "access-control-allow-origin" not in r.headers
    srv2, _ = serve(["ok"], cors_origins=("http://app.test",), api_key="k")
    r = httpx.options(srv2.base + "/v1/chat/completions", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.test"
    r = httpx.get(srv2.base + "/v1/models", headers={"Origin": "http://evil.test", "Authorization": "Bearer k"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_local_paths_refused_without_media_dir(serve, tmp_path):
    srv, _ = serve(["ok"])
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(32, 32))
    for url in (str(path), path.as_uri()):
        body = chat_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])
        r = httpx.post(srv.base + "/v1/chat/completions", json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "media_access_denied"
        assert "--media-dir" in r.json()["error"]["message"]


def test_error_after_the_stream_started_is_an_sse_error_event(serve):
    from edge.errors import DecoderError

    srv, _ = serve(["Partial", " answer", DecoderError("llama_decode failed with code -3")], runtime=RuntimeOptions(thinking=False))
    events = stream_chunks(srv.base, chat_body())
    assert "".join(d.get("content", "") for d in deltas(events)) == "Partial answer"
    errors = [e for e in events if e != "[DONE]" and "error" in e]
    assert errors == [{"error": {"message": "llama_decode failed with code -3", "type": "server_error", "param": None,
                                 "code": "decoder_error"}}]
    assert events[-1] == "[DONE]"
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError, match="llama_decode failed"):
        for _ in client.chat.completions.create(model=MODEL, messages=chat_body()["messages"], stream=True):
            pass
    # the same failure before any output is a plain HTTP error (500: a server fault, not bad input)
    srv.service.runtime.engine.script = [DecoderError("llama_decode failed with code -3")]
    r = httpx.post(srv.base + "/v1/chat/completions", json=chat_body(stream=True), timeout=30)
    assert r.status_code == 500 and r.json()["error"]["code"] == "decoder_error"
    # and the server goes on serving
    srv.service.runtime.engine.script = ["fine"]
    assert httpx.post(srv.base + "/v1/chat/completions", json=chat_body(), timeout=30).json()["choices"][0]["message"]["content"] == "fine"
