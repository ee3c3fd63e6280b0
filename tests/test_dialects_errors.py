"""Bad input to /v1/responses and /v1/messages: the right status, in each dialect's own error shape, never a 5xx.

/v1/responses answers in OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with `param` naming
the Responses field; /v1/messages in Anthropic's `{"type": "error", "error": {"type", "message"}}`. A real
uvicorn on 127.0.0.1 with the tiny bundle, a media folder, small limits and a small context.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from tests.conftest import png_bytes
from tests.server_helpers import EXACT, MODEL, ThreadServer, data_url

pytestmark = pytest.mark.timeout(180)

MAX_IMAGE_BYTES = 64 << 10
MAX_BODY = 512 << 10
ANTHROPIC_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
                   413: "request_too_large"}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("dialect-media")
    inside, outside = root / "media", root / "outside"
    inside.mkdir()
    outside.mkdir()
    (inside / "ok.png").write_bytes(png_bytes(40, 30, seed=1))
    (outside / "secret.png").write_bytes(png_bytes(40, 30, seed=2))
    return inside


@pytest.fixture(scope="module")
def server(tiny_bundle, media):
    from edge.api.app import create_app
    from edge.api.service import ServerSettings
    from edge.options import RuntimeOptions

    settings = ServerSettings(bundle=tiny_bundle, media_dir=media, max_images=2, max_image_bytes=MAX_IMAGE_BYTES,
                              max_body_bytes=MAX_BODY,
                              runtime=RuntimeOptions(ctx_size=256, batch_size=256, ubatch_size=256, **EXACT))
    with ThreadServer(create_app(settings)) as srv:
        yield srv


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- /v1/responses ----------------------------------------------------------------------------------


def rbody(**kw):
    out = {"model": MODEL, "input": "hi", "max_output_tokens": 4}
    out.update(kw)
    return out


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def rimage(url):
    return {"type": "input_image", "image_url": url}


FN = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}

RESPONSES = [  # (id, json body or raw bytes, status, code, param, text in the message)
    ("malformed json", b'{"model": "x", "input": [}', 400, "invalid_request_error", None, "not valid JSON"),
    ("missing input", {"model": MODEL}, 400, "invalid_request_error", "input", "input"),
    ("empty input", rbody(input=[]), 400, "invalid_request_error", "input", "at least one item"),
    ("bad role", rbody(input=[{"role": "robot", "content": "x"}]), 400, "invalid_request_error", None, "role"),
    ("unknown part", rbody(input=user({"type": "input_audio", "input_audio": {}})), 400, "invalid_request_error",
     None, "input_audio"),
    ("input_file", rbody(input=user({"type": "input_file", "file_id": "file-1"})), 400, "invalid_request_error",
     "input[0].content[0]", "input_file"),
    ("image by file_id", rbody(input=user({"type": "input_image", "file_id": "file-1"})), 400,
     "invalid_request_error", "input[0].content[0].image_url", "file_id"),
    ("unknown model", rbody(model="gpt-5"), 404, "model_not_found", "model", "gpt-5"),
    ("previous_response_id", rbody(previous_response_id="resp_1"), 400, "unsupported_parameter",
     "previous_response_id", "stateless"),
    ("conversation", rbody(conversation="conv_1"), 400, "unsupported_parameter", "conversation", "stateless"),
    ("background", rbody(background=True), 400, "unsupported_parameter", "background", "background"),
    ("top_logprobs", rbody(top_logprobs=3), 400, "unsupported_parameter", "top_logprobs", "top_logprobs"),
    ("item_reference", rbody(input=[{"type": "item_reference", "id": "msg_1"}]), 400, "invalid_request_error",
     "input[0].type", "stateless"),
    ("mcp_call item", rbody(input=[{"type": "mcp_call", "id": "m"}]), 400, "invalid_request_error", "input[0].type",
     "mcp_call"),
    ("hosted tool", rbody(tools=[{"type": "web_search"}]), 400, "invalid_request_error", "tools[0].type",
     "web_search"),
    ("mcp tool", rbody(tools=[FN, {"type": "mcp", "server_label": "fs", "server_url": "http://127.0.0.1:9/mcp"}]),
     400, "mcp_not_configured", "tools[1]", "no MCP servers configured"),
    ("mcp tool_choice", rbody(tool_choice={"type": "mcp", "server_label": "fs"}), 400, "mcp_not_configured",
     "tool_choice", "no MCP servers configured"),
    ("output without call", rbody(input=[{"type": "function_call_output", "call_id": "call_9", "output": "x"}]), 400,
     "invalid_request_error", "input[0].call_id", "call_9"),
    ("call arguments not json", rbody(input=[{**CALL, "arguments": "{nope"}]), 400, "invalid_request_error",
     "input[0].arguments", "not valid JSON"),
    ("call arguments not object", rbody(input=[{**CALL, "arguments": "[1]"}]), 400, "invalid_request_error",
     "input[0].arguments", "object"),
    ("image in assistant", rbody(input=[{"role": "assistant", "content": [rimage("ok.png")]}]), 400,
     "invalid_request_error", "input[0].content[0]", "assistant"),
    ("temperature range", rbody(temperature=3), 400, "invalid_request_error", "temperature", "temperature"),
    ("max_output_tokens zero", rbody(max_output_tokens=0), 400, "invalid_request_error", "max_output_tokens",
     "max_output_tokens"),
    ("NaN", json.dumps(rbody()).replace('"max_output_tokens": 4', '"top_p": NaN').encode(), 400,
     "invalid_request_error", "top_p", "top_p"),
    ("tool bad name", rbody(tools=[{**FN, "name": "no spaces!"}]), 400, "invalid_request_error", "tools[0].name",
     "name"),
    ("tool schema not object", rbody(tools=[{**FN, "parameters": {"type": "string"}}]), 400, "invalid_schema",
     "tools[0].parameters", "type object"),
    ("duplicate tool", rbody(tools=[FN, FN]), 400, "invalid_request_error", "tools[1].name", "twice"),
    ("tool_choice unknown", rbody(tools=[FN], tool_choice={"type": "function", "name": "g"}), 400,
     "invalid_request_error", "tool_choice", "'g'"),
    ("required without tools", rbody(tool_choice="required"), 400, "invalid_request_error", "tool_choice", "tools"),
    ("json_schema unsupported", rbody(text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "quaternion"}}}),
     400, "invalid_schema", "text.format", "cannot be enforced"),
    ("json_schema missing schema", rbody(text={"format": {"type": "json_schema", "name": "x"}}), 400,
     "invalid_request_error", "text.format.schema", "schema"),
    ("bad effort", rbody(reasoning={"effort": "extreme"}), 400, "invalid_request_error", "reasoning.effort", "effort"),
    ("bad base64", rbody(input=user(rimage("data:image/png;base64,@@@"))), 400, "invalid_image", "input", "base64"),
    ("too many images", rbody(input=user(*[rimage(data_url(png_bytes(30, 30, seed=i))) for i in range(3)])), 400,
     "too_many_images", "input", "at most 2"),
    ("traversal", rbody(input=user(rimage("../outside/secret.png"))), 403, "media_access_denied", "input", "outside"),
    ("remote without flag", rbody(input=user(rimage("https://example.com/a.png"))), 403, "media_access_denied",
     "input", "--allow-remote-media"),
    ("oversized image", rbody(input=user(rimage(data_url(png_bytes(300, 300, seed=5))))), 413, "invalid_image",
     "input", str(MAX_IMAGE_BYTES)),
    ("context overflow", rbody(input="alpha beta gamma " * 300), 400, "context_length_exceeded", "input", "256"),
    ("oversized body", rbody(input="x" * (MAX_BODY + 10)), 413, "request_too_large", None, str(MAX_BODY)),
]


@pytest.mark.parametrize("case", RESPONSES, ids=[c[0] for c in RESPONSES])
def test_responses_bad_input(server, case):
    _, body, status, code, param, text = case
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.base + "/v1/responses", timeout=60, **kwargs)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (r.status_code, err["code"]) == (status, code), err
    assert err["type"] == "invalid_request_error"
    assert text.lower() in err["message"].lower(), err["message"]
    if param is not None:
        assert err["param"] == param, err


# --- /v1/messages -----------------------------------------------------------------------------------


def mbody(**kw):
    out = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    out.update(kw)
    return out


def muser(*blocks):
    return [{"role": "user", "content": list(blocks)}]


def mimage(data: bytes, media_type="image/png"):
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": b64(data)}}


def murl(url):
    return {"type": "image", "source": {"type": "url", "url": url}}


TOOL = {"name": "f", "input_schema": {"type": "object", "properties": {}}}
USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}

MESSAGES = [  # (id, json body or raw bytes, status, text in the message)
    ("malformed json", b'{"model": "x", "messages": [}', 400, "not valid JSON"),
    ("deep nesting", b'{"model": "m", "messages": ' + b"[" * 100000 + b"]" * 100000 + b"}", 400, ""),
    ("missing max_tokens", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, 400, "max_tokens"),
    ("empty messages", mbody(messages=[]), 400, "messages"),
    ("system role in messages", mbody(messages=[{"role": "system", "content": "x"}]), 400, "role"),
    ("unknown block", mbody(messages=muser({"type": "document", "source": {}})), 400, "document"),
    ("empty user content", mbody(messages=muser()), 400, "non-empty"),
    ("bad media type", mbody(messages=muser(mimage(b"x", "image/bmp"))), 400, "media_type"),
    ("bad base64", mbody(messages=muser({"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "@@@"}})), 400, "base64"),
    ("not an image", mbody(messages=muser(mimage(b"hello, I am text"))), 400, "not an image"),
    ("too many images", mbody(messages=muser(*[mimage(png_bytes(30, 30, seed=i)) for i in range(3)])), 400,
     "at most 2"),
    ("url outside media", mbody(messages=muser(murl("../outside/secret.png"))), 403, "outside"),
    ("remote url without flag", mbody(messages=muser(murl("https://example.com/a.png"))), 403, "--allow-remote-media"),
    ("oversized image", mbody(messages=muser(mimage(png_bytes(300, 300, seed=5)))), 413, str(MAX_IMAGE_BYTES)),
    ("tool_result after text", mbody(messages=[{"role": "user", "content": "x"}, USE, {"role": "user", "content": [
        {"type": "text", "text": "here"}, {"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}]}]), 400,
     "must come first"),
    ("tool_result unknown id", mbody(messages=[{"role": "user", "content": "x"}, USE, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "r"}]}]), 400, "toolu_9"),
    ("image in assistant", mbody(messages=[{"role": "assistant", "content": [mimage(png_bytes(30, 30))]},
                                           {"role": "user", "content": "?"}]), 400, "image"),
    ("prefill", mbody(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "The answer is"}]),
     400, "prefill"),
    ("server tool", mbody(tools=[{"type": "web_search_20250305", "name": "web_search"}]), 400, "type"),
    ("tool without schema", mbody(tools=[{"name": "f"}]), 400, "input_schema"),
    ("tool schema not object", mbody(tools=[{"name": "f", "input_schema": {"type": "string"}}]), 400,
     "tools[0].input_schema"),
    ("tool bad name", mbody(tools=[{**TOOL, "name": "no spaces!"}]), 400, "name"),
    ("tool_choice tool without name", mbody(tools=[TOOL], tool_choice={"type": "tool"}), 400, "tool_choice.name"),
    ("tool_choice unknown tool", mbody(tools=[TOOL], tool_choice={"type": "tool", "name": "g"}), 400, "'g'"),
    ("tool_choice any without tools", mbody(tool_choice={"type": "any"}), 400, "tools"),
    ("thinking without budget", mbody(thinking={"type": "enabled"}), 400, "budget_tokens"),
    ("thinking bad type", mbody(thinking={"type": "sometimes"}), 400, "thinking"),
    ("too many stop sequences", mbody(stop_sequences=[f"s{i}" for i in range(17)]), 400, "stop_sequences"),
    ("empty stop sequence", mbody(stop_sequences=[""]), 400, "stop_sequences"),
    ("temperature over 1", mbody(temperature=1.5), 400, "temperature"),
    ("max_tokens zero", mbody(max_tokens=0), 400, "max_tokens"),
    ("unsupported output schema", mbody(output_config={"format": {"type": "json_schema", "schema": {"type": "quaternion"}}}),
     400, "cannot be enforced"),
    ("unknown model", mbody(model="claude-opus-4"), 404, "claude-opus-4"),
    ("context overflow", mbody(messages=[{"role": "user", "content": "alpha beta gamma " * 300}]), 400, "256"),
    ("oversized body", mbody(messages=[{"role": "user", "content": "x" * (MAX_BODY + 10)}]), 413, str(MAX_BODY)),
]


@pytest.mark.parametrize("case", MESSAGES, ids=[c[0] for c in MESSAGES])
def test_messages_bad_input(server, case):
    _, body, status, text = case
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.base + "/v1/messages", timeout=60, **kwargs)
    got = r.json()
    assert set(got) == {"type", "error"} and got["type"] == "error" and set(got["error"]) == {"type", "message"}, got
    assert r.status_code == status, got
    assert got["error"]["type"] == ANTHROPIC_TYPES[status], got
    assert text.lower() in got["error"]["message"].lower(), got


def test_server_still_serves_both_dialects(server):
    r = httpx.post(server.base + "/v1/responses", json=rbody(input=user(rimage("ok.png"), {"type": "input_text",
                                                                                           "text": "?"})), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["input_tokens"] > 0
    r = httpx.post(server.base + "/v1/messages", json=mbody(messages=muser(murl("ok.png"), {"type": "text", "text": "?"})),
                   timeout=60)
    assert r.status_code == 200 and r.json()["stop_reason"] in ("end_turn", "max_tokens")
    r = httpx.post(server.base + "/v1/messages", json=mbody(stream=True, messages=muser(mimage(png_bytes(2010, 10)))))
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"  # before the stream: plain
    r = httpx.get(server.base + "/v1/messages")
    assert r.status_code == 405
