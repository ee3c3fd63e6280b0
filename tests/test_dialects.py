"""The official `openai` client (`responses.create`) and the official `anthropic` client (`messages.create`)
against a real uvicorn on 127.0.0.1 serving the tiny bundle. Every greedy answer is compared with
/v1/chat/completions on the same server for the same conversation: the dialects map in and out, nothing else.
The server has an API key: the openai client sends it as a Bearer token, the anthropic client as x-api-key.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic", reason="anthropic is in the test extra")

from tests.conftest import png_bytes  # noqa: E402
from tests.server_helpers import EXACT, MODEL, ThreadServer, data_url  # noqa: E402

pytestmark = pytest.mark.timeout(300)

N = 16
KEY = "dialect-key"
GREEDY = {"temperature": 0}  # recent anthropic clients dropped the sampling keywords; the API still takes them
CAT, TOOL_IMG = png_bytes(100, 70, seed=1), png_bytes(84, 84, seed=4)
PARAMS = {"type": "object", "properties": {"subject": {"type": "string", "maxLength": 12}, "zoom": {"type": "integer"}},
          "required": ["subject"]}
CHAT_TOOL = {"type": "function", "function": {"name": "take_photo", "description": "take a photo of a subject",
                                              "parameters": PARAMS}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}, "count": {"type": "integer"},
                                           "color": {"enum": ["red", "green", "blue"]}},
          "required": ["name", "count", "color"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tiny_bundle):
    from edge.api.app import create_app
    from edge.api.service import ServerSettings
    from edge.options import RuntimeOptions

    settings = ServerSettings(bundle=tiny_bundle, api_key=KEY, runtime=RuntimeOptions(ctx_size=2048, **EXACT))
    with ThreadServer(create_app(settings)) as srv:
        yield srv


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base, api_key=KEY, max_retries=0, timeout=120)


def chat(oai, messages, thinking=False, max_tokens=N, **kw):
    """The chat-completions answer (greedy) for the same conversation: the reference of every test here."""
    return oai.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": thinking}}, **kw)


def respond(oai, input, thinking=False, **kw):
    kw.setdefault("max_output_tokens", N)
    kw.setdefault("reasoning", {"effort": "high" if thinking else "none"})
    return oai.responses.create(model=MODEL, input=input, temperature=0, **kw)


def ask(claude, messages, thinking=False, **kw):
    kw.setdefault("max_tokens", N)
    return claude.messages.create(model=MODEL, messages=messages, extra_body=GREEDY,
                                  thinking={"type": "enabled", "budget_tokens": 1024} if thinking else {"type": "disabled"},
                                  **kw)


def image_tokens(usage) -> int:
    details = usage.prompt_tokens_details  # image_tokens: a declared field in recent openai clients, extra in older
    value = getattr(details, "image_tokens", None)
    return value if value is not None else (details.model_extra or {})["image_tokens"]


def texts(message) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


# --- /v1/responses ----------------------------------------------------------------------------------


def test_responses_text_equals_chat(oai):
    want = chat(oai, [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Describe a bicycle."}])
    got = respond(oai, "Describe a bicycle.", instructions="You are terse.")
    assert got.output_text == want.choices[0].message.content and got.output_text
    assert got.object == "response" and got.id.startswith("resp_") and got.model == MODEL and got.store is False
    assert got.status == ("incomplete" if want.choices[0].finish_reason == "length" else "completed")
    assert got.usage.input_tokens == want.usage.prompt_tokens
    assert got.usage.output_tokens == want.usage.completion_tokens
    assert got.usage.output_tokens_details.reasoning_tokens == 0
    assert [item.type for item in got.output] == ["message"]


def test_responses_stream_equals_non_stream(oai):
    whole = respond(oai, "Count to five.")
    events = list(respond(oai, "Count to five.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == f"response.{whole.status}"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == whole.output_text
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == whole.usage.output_tokens
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert kinds.index("response.output_item.done") > kinds.index("response.output_text.done")


def test_responses_image_equals_chat(oai):
    want = chat(oai, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(CAT)}},
                                                   {"type": "text", "text": "What is in the picture?"}]}])
    got = respond(oai, [{"role": "user", "content": [{"type": "input_image", "image_url": data_url(CAT)},
                                                      {"type": "input_text", "text": "What is in the picture?"}]}])
    assert got.output_text == want.choices[0].message.content
    assert got.usage.input_tokens == want.usage.prompt_tokens
    assert image_tokens(want.usage) > 0


def test_responses_function_call_round_trip_with_image_output(oai):
    tool = {"type": "function", "name": "take_photo", "description": "take a photo of a subject", "parameters": PARAMS}
    question = [{"role": "user", "content": "Take a photo of the cat and tell me what you see."}]
    first = respond(oai, question, tools=[tool], tool_choice={"type": "function", "name": "take_photo"},
                    max_output_tokens=64)
    (call,) = [item for item in first.output if item.type == "function_call"]
    args = json.loads(call.arguments)
    assert call.name == "take_photo" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert isinstance(args["subject"], str) and len(args["subject"]) <= 12
    want_first = chat(oai, question, tools=[CHAT_TOOL], tool_choice={"type": "function", "function": {"name": "take_photo"}},
                      max_tokens=64)
    assert json.loads(want_first.choices[0].message.tool_calls[0].function.arguments) == args

    followup = question + [item.model_dump(exclude_none=True) for item in first.output] + [
        {"type": "function_call_output", "call_id": call.call_id, "output": [
            {"type": "input_text", "text": "Here is the photo."}, {"type": "input_image", "image_url": data_url(TOOL_IMG)}]}]
    second = respond(oai, followup, tools=[tool])
    want = chat(oai, question + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "take_photo", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": [
            {"type": "text", "text": "Here is the photo."}, {"type": "image_url", "image_url": {"url": data_url(TOOL_IMG)}}]},
    ], tools=[CHAT_TOOL])
    assert second.output_text == (want.choices[0].message.content or "")
    assert second.usage.input_tokens == want.usage.prompt_tokens
    assert image_tokens(want.usage) > 0

    streamed = list(respond(oai, question, tools=[tool], tool_choice={"type": "function", "name": "take_photo"},
                            max_output_tokens=64, stream=True))
    deltas = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == args
    added = [e.item for e in streamed if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert [a.name for a in added] == ["take_photo"] and added[0].arguments == ""


def test_responses_json_schema_output(oai):
    import jsonschema_rs

    fmt = {"format": {"type": "json_schema", "name": "thing", "schema": SCHEMA, "strict": True}}
    got = oai.responses.create(model=MODEL, input="Describe a thing.", text=fmt, max_output_tokens=120, temperature=0)
    assert jsonschema_rs.validator_for(SCHEMA).is_valid(json.loads(got.output_text)), got.output_text
    assert [item.type for item in got.output] == ["message"]  # thinking off when constrained
    want = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Describe a thing."}],
                                      max_tokens=120, temperature=0, response_format={
                                          "type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}})
    assert got.output_text == want.choices[0].message.content
    from pydantic import BaseModel, Field

    class Thing(BaseModel):
        name: str = Field(max_length=8)
        count: int

    parsed = oai.responses.parse(model=MODEL, input="A thing.", text_format=Thing, max_output_tokens=120, temperature=0)
    assert isinstance(parsed.output_parsed, Thing)


def test_responses_reasoning_on_and_off(oai):
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    want = chat(oai, question, thinking=True)
    on = respond(oai, "Why is the sky blue?", reasoning={"effort": "high", "summary": "auto"})
    (item,) = [i for i in on.output if i.type == "reasoning"]
    reasoning = want.choices[0].message.model_extra["reasoning_content"]
    assert reasoning and item.content[0].text == reasoning and item.summary[0].text == reasoning
    assert on.output_text == (want.choices[0].message.content or "")
    assert 0 < on.usage.output_tokens_details.reasoning_tokens <= on.usage.output_tokens
    events = list(oai.responses.create(model=MODEL, input="Why is the sky blue?", temperature=0, max_output_tokens=N,
                                       reasoning={"effort": "medium"}, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == reasoning
    off = respond(oai, "Why is the sky blue?")
    assert [i.type for i in off.output] == ["message"]
    assert off.output_text == chat(oai, question).choices[0].message.content


def test_responses_refusals(oai):
    with pytest.raises(openai.BadRequestError) as e:
        respond(oai, "hi", tools=[{"type": "mcp", "server_label": "files", "server_url": "http://127.0.0.1:1/mcp"}])
    assert "no MCP servers configured" in e.value.message and e.value.body["param"] == "tools[0]"
    assert e.value.body["code"] == "mcp_not_configured"
    with pytest.raises(openai.BadRequestError) as e:
        respond(oai, "hi", previous_response_id="resp_123")
    assert "stateless" in e.value.message and e.value.body["param"] == "previous_response_id"


# --- /v1/messages -----------------------------------------------------------------------------------


def test_messages_text_equals_chat(claude, oai):
    want = chat(oai, [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Describe a bicycle."}])
    got = ask(claude, [{"role": "user", "content": "Describe a bicycle."}], system="You are terse.")
    assert texts(got) == want.choices[0].message.content and texts(got)
    assert got.type == "message" and got.role == "assistant" and got.model == MODEL and got.id.startswith("msg_")
    assert got.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[want.choices[0].finish_reason]
    assert got.usage.input_tokens + got.usage.cache_read_input_tokens == want.usage.prompt_tokens
    assert got.usage.output_tokens == want.usage.completion_tokens


def test_messages_stream_equals_non_stream(claude):
    messages = [{"role": "user", "content": "Count to five."}]
    whole = ask(claude, messages)
    with claude.messages.stream(model=MODEL, messages=messages, max_tokens=N, extra_body=GREEDY,
                                thinking={"type": "disabled"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == texts(whole) == texts(final)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == \
        whole.usage.input_tokens + whole.usage.cache_read_input_tokens
    raw = [e.type for e in ask(claude, messages, stream=True)]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    assert raw[1] == "content_block_start" and "content_block_delta" in raw and "content_block_stop" in raw


def test_messages_image_equals_chat(claude, oai):
    want = chat(oai, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(CAT)}},
                                                   {"type": "text", "text": "What is in the picture?"}]}])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(CAT).decode()}}
    got = ask(claude, [{"role": "user", "content": [image, {"type": "text", "text": "What is in the picture?"}]}])
    assert texts(got) == want.choices[0].message.content
    assert got.usage.input_tokens + got.usage.cache_read_input_tokens == want.usage.prompt_tokens


def test_messages_tool_round_trip_with_image_result(claude, oai):
    tool = {"name": "take_photo", "description": "take a photo of a subject", "input_schema": PARAMS}
    question = [{"role": "user", "content": "Take a photo of the cat and tell me what you see."}]
    first = ask(claude, question, tools=[tool], tool_choice={"type": "tool", "name": "take_photo"}, max_tokens=64)
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and use.name == "take_photo" and use.id.startswith("toolu_")
    assert isinstance(use.input["subject"], str) and len(use.input["subject"]) <= 12
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(TOOL_IMG).decode()}}
    second = ask(claude, question + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": [
            {"type": "text", "text": "Here is the photo."}, image]}]}], tools=[tool])
    want = chat(oai, question + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "take_photo", "arguments": json.dumps(use.input)}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [
            {"type": "text", "text": "Here is the photo."}, {"type": "image_url", "image_url": {"url": data_url(TOOL_IMG)}}]},
    ], tools=[CHAT_TOOL])
    assert texts(second) == (want.choices[0].message.content or "")
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == want.usage.prompt_tokens
    with claude.messages.stream(model=MODEL, messages=question, max_tokens=64, extra_body=GREEDY, tools=[tool],
                                tool_choice={"type": "tool", "name": "take_photo"}) as stream:
        final = stream.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert streamed.input == use.input and streamed.name == "take_photo"


def test_messages_json_schema_output(claude, oai):
    import jsonschema_rs

    got = claude.messages.create(model=MODEL, messages=[{"role": "user", "content": "Describe a thing."}],
                                 max_tokens=120, extra_body=GREEDY,
                                 output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
    assert jsonschema_rs.validator_for(SCHEMA).is_valid(json.loads(texts(got))), texts(got)
    want = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Describe a thing."}],
                                      max_tokens=120, temperature=0, response_format={
                                          "type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}})
    assert texts(got) == want.choices[0].message.content


def test_messages_thinking_on_and_off(claude, oai):
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    want = chat(oai, question, thinking=True)
    on = ask(claude, question, thinking=True)
    (block,) = [b for b in on.content if b.type == "thinking"]
    assert block.thinking == want.choices[0].message.model_extra["reasoning_content"] and block.thinking
    assert texts(on) == (want.choices[0].message.content or "")
    assert 0 < on.usage.output_tokens_details.thinking_tokens <= on.usage.output_tokens
    with claude.messages.stream(model=MODEL, messages=question, max_tokens=N, extra_body=GREEDY,
                                thinking={"type": "adaptive"}) as stream:
        final = stream.get_final_message()
    assert [b.thinking for b in final.content if b.type == "thinking"] == [block.thinking]
    off = ask(claude, question)
    assert [b.type for b in off.content] == ["text"]
    assert texts(off) == chat(oai, question).choices[0].message.content


def test_messages_stop_sequence(claude):
    messages = [{"role": "user", "content": "Say something long."}]
    whole = texts(ask(claude, messages, max_tokens=32))
    stop = whole.strip()[4:7]
    assert len(stop) == 3, whole
    got = ask(claude, messages, max_tokens=32, stop_sequences=["never-appears", stop])
    assert got.stop_reason == "stop_sequence" and got.stop_sequence == stop
    assert whole.startswith(texts(got)) and stop not in texts(got)
    with claude.messages.stream(model=MODEL, messages=messages, max_tokens=32, extra_body=GREEDY,
                                thinking={"type": "disabled"}, stop_sequences=[stop]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_api_key_headers(server):
    r = httpx.post(server.base + "/v1/messages", headers={"x-api-key": "wrong"},
                   json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401
    assert r.json() == {"type": "error", "error": {"type": "authentication_error", "message": r.json()["error"]["message"]}}
    r = httpx.post(server.base + "/v1/responses", headers={"Authorization": "Bearer wrong"}, json={"model": MODEL, "input": "hi"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server.base, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    r = httpx.post(server.base + "/v1/responses", headers={"x-api-key": KEY},
                   json={"model": MODEL, "input": "hi", "max_output_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 2
