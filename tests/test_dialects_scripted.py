"""/v1/responses and /v1/messages with a scripted engine (test double of the llama.cpp engine only: the real
template, tokenizer, parser, scheduler and HTTP stack run): the exact streamed event sequences, the prompt each
dialect builds (equal to the chat-completions prompt of the same conversation), errors after the first token,
and cancellation when the client goes away."""

from __future__ import annotations

import base64
import itertools
import json

import httpx
import pytest

from edge.options import RuntimeOptions
from tests.conftest import png_bytes
from tests.server_helpers import MODEL, ScriptedEngine, data_url, long_script, prompt_text, wait_for

pytestmark = pytest.mark.timeout(120)

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "weather for a city",
                                              "parameters": PARAMS}}
CALL_PIECES = ["<think>", "I should", " look it up.", "</think>", "\n", "<tool_call>", "get_wea", "ther", "\n",
               "<arg_key>", "city", "</arg_key>", "\n", "<arg_value>", "Paris", "</arg_value>", "\n",
               "<arg_key>", "days", "</arg_key>", "\n", "<arg_value>", "3", "</arg_value>", "\n", "</tool_call>"]
ARGS = {"city": "Paris", "days": 3}
IMG, TOOL_IMG = png_bytes(60, 40, seed=3), png_bytes(56, 56, seed=4)


def named_events(base, path, body):
    """[(event name, data)] of an SSE response."""
    with httpx.stream("POST", base + path, json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        out, name = [], None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name
                out.append((name, data))
        return out


def squeeze(names):
    """Event names with runs of the same name collapsed (delta counts depend on how the text was split)."""
    return [name for name, _ in itertools.groupby(names)]


# --- /v1/responses ----------------------------------------------------------------------------------


def test_responses_stream_of_reasoning_and_a_tool_call(serve):
    srv, _ = serve(CALL_PIECES)
    tool = {"type": "function", "name": "get_weather", "description": "weather for a city", "parameters": PARAMS}
    body = {"model": MODEL, "input": "Weather in Paris?", "tools": [tool], "reasoning": {"effort": "high"}}
    events = named_events(srv.base, "/v1/responses", body)
    assert squeeze(n for n, _ in events) == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    data = {n: d for n, d in events}
    assert "".join(d["delta"] for n, d in events if n == "response.reasoning_text.delta") == "I should look it up."
    added = [d for n, d in events if n == "response.output_item.added"][1]
    assert added["output_index"] == 1 and added["item"]["name"] == "get_weather" and added["item"]["arguments"] == ""
    assert json.loads(data["response.function_call_arguments.delta"]["delta"]) == ARGS
    final = data["response.completed"]["response"]
    assert final["status"] == "completed" and [i["type"] for i in final["output"]] == ["reasoning", "function_call"]
    call = final["output"][1]
    assert call["call_id"].startswith("call_") and call["id"] == added["item"]["id"] and json.loads(call["arguments"]) == ARGS
    tokens = [len(srv.service.runtime.decoder.tokenize(p)) for p in CALL_PIECES]
    assert final["usage"]["output_tokens"] == sum(tokens)
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == sum(tokens[:4])  # through </think>

    whole = httpx.post(srv.base + "/v1/responses", json=body, timeout=30).json()
    strip = lambda items: [{k: v for k, v in i.items() if k not in ("id", "call_id")} for i in items]  # noqa: E731
    assert strip(whole["output"]) == strip(final["output"])
    assert whole["usage"] == final["usage"]


def test_responses_length_is_incomplete(serve):
    srv, _ = serve(["one", " two", " three"])
    limit = sum(len(srv.service.runtime.decoder.tokenize(p)) for p in ("one", " two"))
    body = {"model": MODEL, "input": "Count.", "max_output_tokens": limit, "reasoning": {"effort": "none"}}
    whole = httpx.post(srv.base + "/v1/responses", json=body, timeout=30).json()
    assert whole["status"] == "incomplete" and whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["output"][0]["content"][0]["text"] == "one two" and whole["output"][0]["status"] == "incomplete"
    events = named_events(srv.base, "/v1/responses", body)
    assert events[-1][0] == "response.incomplete" and events[-1][1]["response"]["output"] == [
        {**whole["output"][0], "id": events[-1][1]["response"]["output"][0]["id"]}]


def test_responses_prompt_equals_chat_prompt(serve):
    srv, engine = serve(["ok"])
    rt = srv.service.runtime
    responses_input = [
        {"role": "developer", "content": "Prefer metric units."},
        {"role": "user", "content": [{"type": "input_image", "image_url": data_url(IMG), "detail": "low"},
                                     {"type": "input_text", "text": "Where was this taken?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Check."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": json.dumps(ARGS)},
        {"type": "function_call_output", "call_id": "call_1", "output": [
            {"type": "input_text", "text": "sunny"}, {"type": "input_image", "image_url": data_url(TOOL_IMG)}]},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks. And tomorrow?"},
    ]
    chat_messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Prefer metric units."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(IMG), "detail": "low"}},
                                     {"type": "text", "text": "Where was this taken?"}]},
        {"role": "assistant", "content": "Let me look.", "reasoning_content": "Check.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [
            {"type": "text", "text": "sunny"}, {"type": "image_url", "image_url": {"url": data_url(TOOL_IMG)}}]},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks. And tomorrow?"},
    ]
    for effort, thinking in (("low", True), ("minimal", False)):
        r = httpx.post(srv.base + "/v1/responses", json={
            "model": MODEL, "instructions": "Be brief.", "input": responses_input, "reasoning": {"effort": effort},
            "tools": [{"type": "function", "name": "get_weather", "parameters": PARAMS}], "temperature": 0.5,
            "top_p": 0.9, "max_output_tokens": 7}, timeout=30)
        assert r.status_code == 200, r.text
        got, params = prompt_text(rt, engine.last_entries), engine.last_params
        r = httpx.post(srv.base + "/v1/chat/completions", json={
            "model": MODEL, "messages": chat_messages, "tools": [CHAT_TOOL | {"function": {
                "name": "get_weather", "parameters": PARAMS}}], "temperature": 0.5, "top_p": 0.9, "max_tokens": 7,
            "chat_template_kwargs": {"enable_thinking": thinking}}, timeout=30)
        assert r.status_code == 200, r.text
        assert got == prompt_text(rt, engine.last_entries) and got.count("<|image|>") == 2
        assert params == engine.last_params and params.max_tokens == 7 and params.temperature == 0.5
        assert got.endswith("<think></think>\n") != thinking


def test_responses_tool_choice_and_format_reach_the_sampler(serve):
    srv, engine = serve(['{"a": 1}'])
    tool = {"type": "function", "name": "get_weather", "parameters": PARAMS}
    base = {"model": MODEL, "input": "hi"}
    httpx.post(srv.base + "/v1/responses", json={**base, "tools": [tool], "tool_choice": "none"}, timeout=30)
    assert "<tools>" not in prompt_text(srv.service.runtime, engine.last_entries)
    assert "<tool_call>" in engine.last_params.stop
    httpx.post(srv.base + "/v1/responses", json={**base, "tools": [tool], "tool_choice": {"type": "function",
                                                                                          "name": "get_weather"}},
               timeout=30)
    assert '"get_weather"' in engine.last_params.grammar
    r = httpx.post(srv.base + "/v1/responses", json={**base, "text": {"format": {"type": "json_object"}}}, timeout=30)
    assert engine.last_params.grammar and r.json()["output"][0]["content"][0]["text"] == '{"a": 1}'
    assert r.json()["text"] == {"format": {"type": "json_object"}}


def test_responses_error_after_first_token_is_an_error_event(serve):
    from edge.errors import DecoderError

    srv, _ = serve(["Partial", " answer", DecoderError("llama_decode failed with code -3")])
    events = named_events(srv.base, "/v1/responses", {"model": MODEL, "input": "hi", "reasoning": {"effort": "none"}})
    assert "".join(d["delta"] for n, d in events if n == "response.output_text.delta") == "Partial answer"
    name, data = events[-1]
    assert name == "error" and data["code"] == "decoder_error" and "llama_decode failed" in data["message"]
    assert srv.service.metrics.counter("responses_total", outcome="error", mode="stream") == 1


# --- /v1/messages -----------------------------------------------------------------------------------


def test_messages_stream_of_thinking_and_a_tool_use(serve):
    import anthropic

    srv, _ = serve(CALL_PIECES)
    tool = {"name": "get_weather", "description": "weather for a city", "input_schema": PARAMS}
    body = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [tool], "thinking": {"type": "enabled", "budget_tokens": 2000}}
    events = named_events(srv.base, "/v1/messages", body)
    assert squeeze(n for n, _ in events) == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""}
    assert starts[1]["type"] == "tool_use" and starts[1]["name"] == "get_weather" and starts[1]["id"].startswith("toolu_")
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert "".join(d["delta"].get("thinking", "") for d in deltas if d["index"] == 0) == "I should look it up."
    assert json.loads("".join(d["delta"]["partial_json"] for d in deltas if d["index"] == 1)) == ARGS
    message_delta = [d for n, d in events if n == "message_delta"][0]
    assert message_delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    tokens = [len(srv.service.runtime.decoder.tokenize(p)) for p in CALL_PIECES]
    assert message_delta["usage"]["output_tokens"] == sum(tokens) and message_delta["usage"]["input_tokens"] > 0
    assert message_delta["usage"]["output_tokens_details"] == {"thinking_tokens": sum(tokens[:4])}

    client = anthropic.Anthropic(base_url=srv.base, api_key="unused", max_retries=0)
    with client.messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        final = stream.get_final_message()
    whole = client.messages.create(**body)
    for message in (final, whole):
        assert [b.type for b in message.content] == ["thinking", "tool_use"] and message.stop_reason == "tool_use"
        assert message.content[0].thinking == "I should look it up." and message.content[1].input == ARGS
    assert final.usage.input_tokens == whole.usage.input_tokens + whole.usage.cache_read_input_tokens - \
        final.usage.cache_read_input_tokens


def test_messages_prompt_equals_chat_prompt(serve):
    srv, engine = serve(["ok"])
    rt = srv.service.runtime
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(IMG).decode()}}
    tool_image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                              "data": base64.b64encode(TOOL_IMG).decode()}}
    messages = [
        {"role": "user", "content": [image, {"type": "text", "text": "Where was this taken?"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Check.", "signature": "sig"},
                                          {"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": ARGS}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "text", "text": "sunny"}, tool_image]}, {"type": "text", "text": "And tomorrow?"}]},
    ]
    chat_messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(IMG)}},
                                     {"type": "text", "text": "Where was this taken?"}]},
        {"role": "assistant", "content": "Let me look.", "reasoning_content": "Check.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": [
            {"type": "text", "text": "sunny"}, {"type": "image_url", "image_url": {"url": data_url(TOOL_IMG)}}]},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ]
    for thinking in (True, False):
        r = httpx.post(srv.base + "/v1/messages", json={
            "model": MODEL, "max_tokens": 7, "system": [{"type": "text", "text": "Be brief."}], "messages": messages,
            "tools": [{"name": "get_weather", "input_schema": PARAMS}], "tool_choice": {"type": "auto"},
            "temperature": 0.5, "top_k": 3, "stop_sequences": ["END"],
            "thinking": {"type": "enabled", "budget_tokens": 1024} if thinking else {"type": "disabled"}}, timeout=30)
        assert r.status_code == 200, r.text
        got, params = prompt_text(rt, engine.last_entries), engine.last_params
        r = httpx.post(srv.base + "/v1/chat/completions", json={
            "model": MODEL, "messages": chat_messages, "tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": PARAMS}}], "tool_choice": "auto", "temperature": 0.5, "top_k": 3,
            "stop": ["END"], "max_tokens": 7, "chat_template_kwargs": {"enable_thinking": thinking}}, timeout=30)
        assert r.status_code == 200, r.text
        assert got == prompt_text(rt, engine.last_entries) and got.count("<|image|>") == 2
        assert params == engine.last_params and params.stop == ("END",) and params.top_k == 3
        assert got.endswith("<think></think>\n") != thinking


def test_messages_tool_choice_any_single_call(serve):
    srv, engine = serve(["<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n</tool_call>"])
    r = httpx.post(srv.base + "/v1/messages", json={
        "model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"name": "get_weather", "input_schema": PARAMS}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}, timeout=30).json()
    assert r["content"] == [{"type": "tool_use", "id": r["content"][0]["id"], "name": "get_weather",
                             "input": {"city": "Oslo"}}]
    assert r["stop_reason"] == "tool_use" and '"get_weather"' in engine.last_params.grammar


def test_messages_error_after_first_token_is_an_error_event(serve):
    import anthropic
    from edge.errors import DecoderError

    srv, _ = serve(["Partial", " answer", DecoderError("llama_decode failed with code -3")])
    body = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "disabled"}}
    events = named_events(srv.base, "/v1/messages", body)
    assert "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta") == "Partial answer"
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error",
                                                               "message": "llama_decode failed with code -3"}})
    client = anthropic.Anthropic(base_url=srv.base, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="llama_decode failed"):
        for _ in client.messages.create(**body, stream=True):
            pass


@pytest.mark.parametrize("path,body,counter", [
    ("/v1/responses", {"model": MODEL, "input": "go", "max_output_tokens": 5000}, "responses_total"),
    ("/v1/messages", {"model": MODEL, "max_tokens": 5000, "messages": [{"role": "user", "content": "go"}]},
     "messages_total"),
], ids=["responses", "messages"])
def test_disconnect_cancels_a_dialect_stream(serve, path, body, counter):
    engine = ScriptedEngine(long_script, delay=0.01)
    srv, _ = serve(None, engine=engine, runtime=RuntimeOptions(thinking=False))
    with httpx.stream("POST", srv.base + path, json={**body, "stream": True}, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(12)]
        assert any(g.startswith("data: ") for g in got)
    assert wait_for(lambda: (5000, "closed") in engine.log), engine.log
    assert wait_for(lambda: srv.service.scheduler.running == 0)
    assert srv.service.metrics.counter(counter, outcome="cancelled", mode="stream") == 1
    short = {**body, "stream": False, **({"max_output_tokens": 10} if "input" in body else {"max_tokens": 10})}
    r = httpx.post(srv.base + path, json=short, timeout=30)
    assert r.status_code == 200 and "short" in r.text
    assert srv.service.metrics.counter(counter, outcome="ok", mode="json") == 1
