"""Every kind of bad input gets the right status and an OpenAI-shaped error body; none gives a 5xx.

A real uvicorn on 127.0.0.1 with the tiny bundle (real runtime), a media folder, small limits and a small
context so that each limit is reachable with small inputs.
"""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest

from tests.conftest import png_bytes
from tests.server_helpers import EXACT, MODEL, ThreadServer, data_url

pytestmark = pytest.mark.timeout(180)

MAX_IMAGE_BYTES = 64 << 10
MAX_BODY = 512 << 10


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    inside = root / "media"
    outside = root / "outside"
    inside.mkdir()
    outside.mkdir()
    (inside / "ok.png").write_bytes(png_bytes(40, 30, seed=1))
    (outside / "secret.png").write_bytes(png_bytes(40, 30, seed=2))
    (inside / "link.png").symlink_to(outside / "secret.png")
    (inside / "linkdir").symlink_to(outside, target_is_directory=True)
    (inside / "notes.txt").write_bytes(b"not an image at all")
    os.mkfifo(inside / "pipe.png")
    return inside, outside


@pytest.fixture(scope="module")
def server(tiny_bundle, media):
    from edge.api.app import create_app
    from edge.api.service import ServerSettings
    from edge.options import RuntimeOptions

    settings = ServerSettings(bundle=tiny_bundle, media_dir=media[0], max_images=2, max_image_bytes=MAX_IMAGE_BYTES,
                              max_body_bytes=MAX_BODY,
                              runtime=RuntimeOptions(ctx_size=256, batch_size=256, ubatch_size=256, **EXACT))
    with ThreadServer(create_app(settings)) as srv:
        yield srv


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def body(**kw):
    out = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    out.update(kw)
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


WEIRD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
MISSING_REQ = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}}}
GOOD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def cases(media_dir, outside):
    """(id, request kwargs for httpx, expected status, expected error.code, text expected in the message)."""
    chat = "/v1/chat/completions"
    raw = lambda content, ctype="application/json": dict(content=content, headers={"content-type": ctype})  # noqa: E731
    js = lambda **kw: dict(json=body(**kw))  # noqa: E731
    return [
        ("malformed json", chat, raw(b'{"model": "x", "messages": [}'), 400, "invalid_request_error", "not valid JSON"),
        ("truncated json", chat, raw(b'{"model": '), 400, "invalid_request_error", "JSON"),
        ("body is a list", chat, raw(b"[1, 2]"), 400, "invalid_request_error", "invalid request"),
        ("NaN number", chat, raw(json.dumps(body()).replace('"max_tokens": 4', '"temperature": NaN').encode()),
         400, "invalid_request_error", "temperature"),
        ("deep nesting", chat, raw(b'{"model": "m", "messages": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
         400, "invalid_request_error", ""),
        ("missing messages", chat, dict(json={"model": MODEL}), 400, "invalid_request_error", "messages"),
        ("empty messages", chat, js(messages=[]), 400, "invalid_request_error", "messages"),
        ("bad role", chat, js(messages=[{"role": "robot", "content": "x"}]), 400, "invalid_request_error", "role"),
        ("unknown part", chat, js(messages=user({"type": "input_audio", "input_audio": {}})), 400,
         "invalid_request_error", "messages"),
        ("unknown model", chat, js(model="gpt-4o"), 404, "model_not_found", "gpt-4o"),
        ("n > 1", chat, js(n=2), 400, "unsupported_parameter", "n=2"),
        ("logprobs", chat, js(logprobs=True), 400, "unsupported_parameter", "logprobs"),
        ("temperature range", chat, js(temperature=-1), 400, "invalid_request_error", "temperature"),
        ("top_p range", chat, js(top_p=1.5), 400, "invalid_request_error", "top_p"),
        ("max_tokens zero", chat, js(max_tokens=0), 400, "invalid_request_error", "max_tokens"),
        ("empty stop", chat, js(stop=[""]), 400, "invalid_request_error", "stop"),
        ("bad base64", chat, js(messages=user(image("data:image/png;base64,@@@not-base64!!")), max_tokens=2), 400,
         "invalid_image", "base64"),
        ("not an image", chat, js(messages=user(image("data:image/png;base64," + b64(b"hello, I am text")))), 400,
         "invalid_image", "not an image"),
        ("text file under media", chat, js(messages=user(image("notes.txt"))), 400, "invalid_image", "not an image"),
        ("truncated png", chat, js(messages=user(image("data:image/png;base64," + b64(png_bytes(40, 30)[:60])))), 400,
         "invalid_image", "PNG"),
        ("oversized image", chat, js(messages=user(image(data_url(png_bytes(300, 300, seed=5))))), 413,
         "invalid_image", str(MAX_IMAGE_BYTES)),
        ("oversized body", chat, js(messages=[{"role": "user", "content": "x" * (MAX_BODY + 10)}]), 413,
         "request_too_large", str(MAX_BODY)),
        ("too many images", chat, js(messages=user(*[image(data_url(png_bytes(30, 30, seed=i))) for i in range(3)])),
         400, "too_many_images", "at most 2"),
        ("aspect ratio", chat, js(messages=user(image(data_url(png_bytes(2010, 10))))), 400, "invalid_image",
         "aspect ratio"),
        ("context overflow", chat, js(messages=[{"role": "user", "content": "alpha beta gamma " * 300}]), 400,
         "context_length_exceeded", "256"),
        ("image in assistant turn", chat, js(messages=[{"role": "assistant", "content": [image(data_url(png_bytes(30, 30)))]},
                                                       {"role": "user", "content": "?"}]), 400,
         "invalid_request_error", "assistant"),
        ("tool schema not an object", chat, js(tools=[WEIRD_TOOL]), 400, "invalid_schema", "type object"),
        ("tool required names unknown property", chat, js(tools=[MISSING_REQ]), 400, "invalid_schema", "required"),
        ("tool bad name", chat, js(tools=[{"type": "function", "function": {"name": "no spaces!"}}]), 400,
         "invalid_request_error", "name"),
        ("duplicate tool", chat, js(tools=[GOOD_TOOL, GOOD_TOOL]), 400, "invalid_request_error", "twice"),
        ("tool_choice required without tools", chat, js(tool_choice="required"), 400, "invalid_request_error",
         "tools"),
        ("tool_choice unknown function", chat,
         js(tools=[GOOD_TOOL], tool_choice={"type": "function", "function": {"name": "g"}}), 400,
         "invalid_request_error", "'g'"),
        ("json_schema unsupported", chat,
         js(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "quaternion"}}}),
         400, "invalid_schema", "cannot be enforced"),
        ("json_schema missing", chat, js(response_format={"type": "json_schema"}), 400, "invalid_request_error",
         "json_schema"),
        ("traversal", chat, js(messages=user(image("../outside/secret.png"))), 403, "media_access_denied",
         "outside the media folder"),
        ("absolute path outside", chat, js(messages=user(image(str(outside / "secret.png")))), 403,
         "media_access_denied", "outside"),
        ("file url outside", chat, js(messages=user(image("file:///etc/passwd"))), 403, "media_access_denied",
         "outside"),
        ("file url with host", chat, js(messages=user(image("file://example.com/x.png"))), 403,
         "media_access_denied", "host"),
        ("symlink escaping", chat, js(messages=user(image("link.png"))), 403, "media_access_denied", "symlinks"),
        ("symlinked folder escaping", chat, js(messages=user(image("linkdir/secret.png"))), 403,
         "media_access_denied", "outside"),
        ("encoded traversal in file url", chat,
         js(messages=user(image((media_dir / "%2E%2E/outside/secret.png").as_uri().replace("%252E", "%2E")))), 403,
         "media_access_denied", "outside"),
        ("fifo under media", chat, js(messages=user(image("pipe.png"))), 403, "media_access_denied",
         "not a regular file"),
        ("missing file", chat, js(messages=user(image("nope.png"))), 400, "invalid_image", "no image file"),
        ("remote without flag", chat, js(messages=user(image("https://example.com/cat.png"))), 403,
         "media_access_denied", "--allow-remote-media"),
        ("other scheme", chat, js(messages=user(image("ftp://example.com/cat.png"))), 403, "media_access_denied",
         "scheme"),
        ("bad detail", chat, js(messages=user({"type": "image_url", "image_url": {"url": "x.png", "detail": "ultra"}})),
         400, "invalid_request_error", "detail"),
        ("unknown route", "/v1/completions", js(), 404, "not_found", ""),
        ("wrong method", chat, dict(method="GET"), 405, "method_not_allowed", ""),
    ]


def test_bad_inputs_table(server, media):
    failures = []
    for name, path, kwargs, status, code, text in cases(*media):
        kwargs = dict(kwargs)
        method = kwargs.pop("method", "POST")
        r = httpx.request(method, server.base + path, timeout=60, **kwargs)
        try:
            assert r.status_code < 500, "a 5xx for bad input"
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert r.status_code == status, (r.status_code, err)
            assert err["code"] == code, err
            assert text.lower() in err["message"].lower(), err["message"]
            assert err["type"] == "invalid_request_error" and err["message"]
        except (AssertionError, ValueError, KeyError) as e:
            failures.append(f"{name}: {e!r} -> {r.status_code} {r.text[:300]}")
    assert not failures, "\n".join(failures)
    # the server is still healthy and answers a good request afterwards
    r = httpx.post(server.base + "/v1/chat/completions", json=body(messages=user(image("ok.png"), {"type": "text", "text": "?"})),
                   timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens_details"]["image_tokens"] > 0


def test_error_params_name_the_field(server):
    r = httpx.post(server.base + "/v1/chat/completions", json=body(temperature=5))
    assert r.json()["error"]["param"] == "temperature"
    r = httpx.post(server.base + "/v1/chat/completions", json=body(model="nope"))
    assert r.json()["error"]["param"] == "model"
    r = httpx.post(server.base + "/v1/chat/completions", json=body(tools=[WEIRD_TOOL]))
    assert r.json()["error"]["param"] == "tools[0].function.parameters"
    r = httpx.post(server.base + "/v1/chat/completions", json=body(messages=user(image("../x.png"))))
    assert r.json()["error"]["param"] == "messages"


def test_context_overflow_message_has_the_numbers(server):
    r = httpx.post(server.base + "/v1/chat/completions",
                   json=body(messages=[{"role": "user", "content": "alpha beta gamma " * 300}]))
    message = r.json()["error"]["message"]
    needed = int(message.split(" needs ")[1].split()[0])
    assert needed > 256 and "context allows 256" in message and "--ctx-size" in message


def test_errors_during_streaming_requests_are_plain_http_errors(server):
    """An error found before the first token (image, context) is a normal HTTP error, not a 200 stream."""
    r = httpx.post(server.base + "/v1/chat/completions",
                   json=body(stream=True, messages=user(image(data_url(png_bytes(2010, 10))))))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"


def test_unknown_fields_are_ignored(server):
    r = httpx.post(server.base + "/v1/chat/completions",
                   json=body(user="me", metadata={"a": "b"}, store=False, service_tier="auto", logit_bias={"1": 2},
                             some_future_field=[1, 2, 3], temperature=0))
    assert r.status_code == 200
