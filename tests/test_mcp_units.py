"""MCP host pieces without a model: --mcp-config parsing, image handles and their argument forms, tool-result
checks, and host start/naming with real MCP server processes."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path

import psutil
import pytest

from edge.chat.handles import HANDLE_NOTE, ImageHandles, image_params, label_messages, model_schema, substitute
from edge.chat.mcp_config import load_mcp_config, parse_mcp_config
from edge.chat.mcp_host import McpHost
from edge.chat.tool_content import check_image
from edge.errors import McpConfigError, McpServerError, ToolInputError, ToolResultError
from tests.conftest import png_bytes

SERVER = str(Path(__file__).with_name("mcp_vision_server.py"))


# --- config ---------------------------------------------------------------------------------------

def test_config_reads_both_kinds_of_server(tmp_path):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {
        "vision": {"command": "python", "args": ["s.py"], "env": {"A": "1"}, "timeout": 5},
        "web": {"type": "streamable-http", "url": "http://127.0.0.1:9/mcp", "headers": {"X": "y"}},
        "off": {"command": "x", "disabled": True},
    }}))
    servers = load_mcp_config(path)
    assert list(servers) == ["vision", "web"]
    assert servers["vision"].transport == "stdio" and servers["vision"].args == ("s.py",)
    assert servers["vision"].env == {"A": "1"} and servers["vision"].timeout == 5
    assert servers["web"].transport == "http" and servers["web"].headers == {"X": "y"}


@pytest.mark.parametrize("config, message", [
    ({}, 'must be a JSON object {"mcpServers"'),
    ({"mcpServers": {"a b": {"command": "x"}}}, "a server name must be"),
    ({"mcpServers": {"a": {"command": "x", "url": "http://h"}}}, "exactly one of `command`"),
    ({"mcpServers": {"a": {}}}, "exactly one of `command`"),
    ({"mcpServers": {"a": {"url": "http://h", "type": "sse"}}}, "older SSE transport is not supported"),
    ({"mcpServers": {"a": {"command": "x", "autoApprove": []}}}, "unknown key(s) autoApprove"),
    ({"mcpServers": {"a": {"command": "x", "args": "-v"}}}, "args must be a list of strings"),
    ({"mcpServers": {"a": {"url": "file:///etc/passwd"}}}, "must be an http:// or https:// URL"),
    ({"mcpServers": {"a": {"url": "http://h", "env": {}}}}, "env belongs to command servers"),
    ({"mcpServers": {"a": {"command": "x", "timeout": 0}}}, "timeout must be a positive number"),
])
def test_bad_configs_say_what_is_wrong(config, message):
    with pytest.raises(McpConfigError) as e:
        parse_mcp_config(config)
    assert message in str(e.value) and e.value.http_status == 400


def test_unreadable_config_files(tmp_path):
    with pytest.raises(McpConfigError, match="cannot read MCP config"):
        load_mcp_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{mcpServers")
    with pytest.raises(McpConfigError, match="is not valid JSON"):
        load_mcp_config(tmp_path / "bad.json")


# --- handles --------------------------------------------------------------------------------------

def test_handles_follow_first_appearance_and_keep_identical_bytes_together():
    a, b = png_bytes(28, 28, seed=1), png_bytes(28, 28, seed=2)
    handles = ImageHandles()
    assert [handles.add(a, "user"), handles.add(b, "tool:x"), handles.add(a, "tool:y")] == ["img1", "img2", "img1"]
    assert handles.add_frame(1, 2.5, b) == "vid1@2.5s" and handles.get("vid1@2.5s").mime == "image/png"
    assert handles.handles == ["img1", "img2", "vid1@2.5s"]
    with pytest.raises(ToolInputError, match=r"'img3' names no image of this conversation \(known: img1, img2, vid1@2.5s\)"):
        handles.get("img3")


def test_label_messages_names_user_and_tool_images_only():
    a, b = png_bytes(28, 28, seed=1), png_bytes(28, 28, seed=2)
    url = "data:image/png;base64," + base64.b64encode(b).decode()
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "image": a, "max_tokens": 64}]},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": {"url": url}}]},
    ]
    handles = ImageHandles()
    read = {url: b}.__getitem__
    out = label_messages(messages, handles, read)
    assert out[0] is messages[0]
    assert out[1]["content"] == [{"type": "text", "text": "look"}, {"type": "text", "text": "[img1]"},
                                 {"type": "image", "image": a, "max_tokens": 64}]
    assert out[2]["content"] == [{"type": "text", "text": "[img2]"}, {"type": "image", "image": b}]
    assert out[2]["tool_call_id"] == "c" and messages[1]["content"][1]["image"] is a  # inputs untouched
    again = ImageHandles()
    assert label_messages(out, again, read) == out and again.handles == handles.handles  # idempotent


SCHEMA = {"type": "object", "properties": {
    "picture": {"type": "string", "description": "the photo"},
    "raw": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
    "upload": {"type": "string", "format": "uri", "x-mcp-file": {"accept": ["image/png"], "maxSize": 100000}},
    "attachment": {"type": "string", "format": "uri"},
    "frames": {"type": "array", "items": {"type": "string", "contentMediaType": "image/jpeg"}},
    "caption": {"type": "string"},
    "image_count": {"type": "integer"},
}}


def test_image_params_and_the_forms_the_schema_asks_for():
    params = image_params(SCHEMA, {"attachment": {"accept": ["image/jpeg"]}})
    assert {k: (p.form, p.array) for k, p in params.items()} == {
        "picture": ("data_uri", False), "raw": ("base64", False), "upload": ("file", False),
        "attachment": ("file", False), "frames": ("data_uri", True)}
    png = png_bytes(28, 28, seed=1)
    handles = ImageHandles()
    handles.add(png, "user")
    b64 = base64.b64encode(png).decode()
    args = {"picture": "img1", "raw": "img1", "upload": "img1", "frames": ["img1", "https://x/y.jpg"],
            "caption": "img1", "image_count": 1}
    sent, used = substitute(args, params, handles)
    assert sent == {"picture": f"data:image/png;base64,{b64}", "raw": b64,
                    "upload": f"data:image/png;name=img1.png;base64,{b64}",
                    "frames": [f"data:image/png;base64,{b64}", "https://x/y.jpg"], "caption": "img1", "image_count": 1}
    assert used == ["img1", "img1", "img1", "img1"]
    with pytest.raises(ToolInputError, match="argument attachment: img1 is image/png; the tool accepts image/jpeg"):
        substitute({"attachment": "img1"}, params, handles)
    small = image_params({"type": "object", "properties": {"f": {"type": "string", "x-mcp-file": {"maxSize": 10}}}})
    with pytest.raises(ToolInputError, match=f"img1 is {len(png)} bytes; the tool accepts at most 10"):
        substitute({"f": "img1"}, small, handles)
    with pytest.raises(ToolInputError, match="'img2' names no image"):
        substitute({"picture": "img2"}, params, handles)


def test_model_schema_shows_handles_and_restricts_only_when_asked():
    params = image_params(SCHEMA)
    shown = model_schema(SCHEMA, params)
    assert shown["properties"]["raw"] == {"type": "string", "description": HANDLE_NOTE}
    assert shown["properties"]["picture"]["description"] == "the photo " + HANDLE_NOTE
    assert shown["properties"]["frames"]["items"] == {"type": "string", "description": HANDLE_NOTE}
    assert shown["properties"]["caption"] == SCHEMA["properties"]["caption"] and "enum" not in str(shown)
    forced = model_schema(SCHEMA, params, ["img1", "img2"])
    assert forced["properties"]["picture"]["enum"] == ["img1", "img2"]
    assert SCHEMA["properties"]["raw"]["contentEncoding"] == "base64"  # the tool's own schema is not changed


def test_check_image_refuses_what_is_not_a_usable_image():
    png = png_bytes(40, 30, seed=1)
    assert check_image(png, "image/png", 1 << 20, "x") == ("image/png", 40, 30)
    with pytest.raises(ToolResultError, match="bytes are not an image"):
        check_image(b"just text", "image/png", 1 << 20, "x")
    with pytest.raises(ToolResultError, match="'text/plain', not an image type"):
        check_image(png, "text/plain", 1 << 20, "x")
    with pytest.raises(ToolResultError, match="at most 100 bytes") as e:
        check_image(png, None, 100, "x")
    assert e.value.http_status == 413
    with pytest.raises(ToolResultError, match="cannot be read"):
        check_image(png[:40], "image/png", 1 << 20, "x")


# --- host -----------------------------------------------------------------------------------------

def _stdio(**extra):
    return {"command": sys.executable, "args": [SERVER, "stdio"], **extra}


def test_shared_tool_names_are_qualified_and_allowed_tools_checked():
    before = len(psutil.Process().children(recursive=True))
    with McpHost(parse_mcp_config({"mcpServers": {"a": _stdio(), "b": _stdio()}})) as host:
        assert len(psutil.Process().children(recursive=True)) == before + 2
        names = [t.function_name for t in host.tools(["a", "b"], {"a": ["crop"], "b": ["crop", "snapshot"]})]
        assert names == ["a_crop", "b_crop", "snapshot"]
        assert [t.function_name for t in host.tools(["a"], {"a": ["crop"]})] == ["crop"]
        with pytest.raises(ToolInputError, match="MCP server 'a' has no tool\\(s\\) 'rotate'"):
            host.tools(["a"], {"a": ["rotate"]})
        crop = host.tools(["a"], {"a": ["crop"]})[0].function()["function"]
        assert crop["parameters"]["properties"]["image"]["description"] == HANDLE_NOTE
        assert crop["parameters"]["required"] == ["image", "box"]
    assert len(psutil.Process().children(recursive=True)) == before


def test_a_server_that_cannot_start_is_named():
    before = len(psutil.Process().children(recursive=True))
    config = parse_mcp_config({"mcpServers": {"good": _stdio(), "broken": {"command": sys.executable,
                                                                          "args": ["-c", "import sys; sys.exit(2)"]}}})
    host = McpHost(config, connect_timeout=10)
    with pytest.raises(McpServerError, match="MCP server 'broken' did not start") as e:
        host.start()
    assert "'good'" not in str(e.value) and e.value.http_status == 502
    assert len(psutil.Process().children(recursive=True)) == before


def test_calls_from_several_threads_run_concurrently():
    from concurrent.futures import ThreadPoolExecutor

    with McpHost(parse_mcp_config({"mcpServers": {"a": _stdio()}})) as host:
        slow = host.tools(["a"], {"a": ["slow_ok"]})[0]
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: host.call(slow, {"seconds": 1.0}), range(4)))
        elapsed = time.monotonic() - started
    assert [r.content for r in results] == [[{"type": "text", "text": "done"}]] * 4
    assert not any(r.is_error for r in results) and elapsed < 3.5  # not 4 s one after the other


def test_a_server_that_never_answers_times_out_at_start():
    before = len(psutil.Process().children(recursive=True))
    silent = {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"]}
    started = time.monotonic()
    with pytest.raises(McpServerError, match=r"'silent' did not start: no answer within 1.5 s \(connect_timeout\)"):
        McpHost(parse_mcp_config({"mcpServers": {"silent": silent}}), connect_timeout=1.5).start()
    assert time.monotonic() - started < 12
    assert len(psutil.Process().children(recursive=True)) == before
