"""The MCP tool loop end to end: real MCP servers (tests/mcp_vision_server.py over stdio and streamable HTTP on
127.0.0.1), the real runtime on the tiny exact bundle, calls forced by tool_choice grammars so the random model
runs a deterministic loop. Every test checks that no MCP child process outlives its host."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from pathlib import Path

import psutil
import pytest

from edge.chat.agent import AgentDone, ToolCallStep, run_agent, step_json, stream_agent
from edge.chat.mcp_config import parse_mcp_config
from edge.chat.mcp_host import McpHost
from edge.chat.results import ChatDelta
from edge.errors import UnknownMcpServerError
from edge.media import MediaPolicy
from edge.mcp_setup import media_resolver
from edge.runtime import Runtime
from tests.conftest import png_bytes
from tests.server_helpers import mcp_http_server

SERVER = str(Path(__file__).with_name("mcp_vision_server.py"))
TURN = dict(temperature=0.0, repetition_penalty=1.0, max_tokens=96)


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    rt = Runtime.load(tiny_bundle, device="cpu", vision_dtype="fp32", ctx_size=2048, batch_size=128, ubatch_size=64,
                      kv_type="f32", flash_attn="off", threads=2)
    yield rt
    rt.close()


@pytest.fixture
def files(tmp_path):
    snapshot = png_bytes(84, 56, seed=5)
    (tmp_path / "snapshot.png").write_bytes(snapshot)
    media = tmp_path / "media"
    media.mkdir()
    (media / "linked.png").write_bytes(png_bytes(56, 56, seed=6))
    return {"dir": tmp_path, "snapshot": snapshot, "log": tmp_path / "calls.jsonl", "media": media,
            "env": {"MCP_TEST_SNAPSHOT": str(tmp_path / "snapshot.png"), "MCP_TEST_LOG": str(tmp_path / "calls.jsonl"),
                    "MCP_TEST_LINK": str(media / "linked.png"), "MCP_TEST_HUGE_BYTES": "60000"}}


def children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def stdio_host(files):
    before = {p.pid for p in children()}
    config = parse_mcp_config({"mcpServers": {"vision": {"command": sys.executable, "args": [SERVER, "stdio"],
                                                         "env": files["env"]}}})
    host = McpHost(config, call_timeout=20).start()
    assert len(children()) == len(before) + 1  # the server process
    yield host
    host.close()
    assert {p.pid for p in children()} == before, "an MCP server process outlived the host"


def logged(files) -> list[dict]:
    path = files["log"]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kinds(steps) -> list[tuple[str, str]]:
    return [("call" if isinstance(s, ToolCallStep) else "result", s.tool) for s in steps]


def test_crop_returns_an_image_the_model_sees(runtime, stdio_host, files):
    photo = png_bytes(112, 84, seed=11)
    messages = [{"role": "user", "content": [{"type": "image", "image": photo},
                                             {"type": "text", "text": "Crop the interesting part."}]}]
    encoded = runtime.stats.images_encoded
    events = list(stream_agent(runtime, messages, stdio_host, allowed_tools={"vision": ["crop"]},
                               tool_choice=[{"name": "crop"}, "none"], enable_thinking=False, **TURN))
    done = events[-1]
    assert isinstance(done, AgentDone)
    assert kinds(done.steps) == [("call", "crop"), ("result", "crop")]
    call, result = done.steps
    assert call.images == ["img1"] and call.arguments["image"] == "img1" and len(call.arguments["box"]) == 4
    # the tool received exactly the bytes the handle names
    assert logged(files) == [{"tool": "crop", "sha256": hashlib.sha256(photo).hexdigest(), "bytes": len(photo),
                              "mime": "image/png"}]
    assert not result.is_error and [i.handle for i in result.images] == ["img2"]
    returned = done.handles.get("img2")
    assert returned.origin == "tool:crop" and (result.images[0].width, result.images[0].height) != (112, 84)
    # the returned image reached the decoder: two images in the last prompt, both encoded
    assert len(done.turns) == 2 and done.usage.images == 2
    assert done.done.usage.image_tokens > done.turns[0].usage.image_tokens
    assert runtime.stats.images_encoded - encoded == 2
    # the answer comes after the tool result, and the model was told the handles
    roles = [m["role"] for m in done.messages]
    assert roles == ["user", "assistant", "tool"] and done.finish_reason in ("stop", "length")
    assert not done.done.output.tool_calls
    assert done.messages[0]["content"][0] == {"type": "text", "text": "[img1]"}
    assert done.messages[2]["content"][0] == {"type": "text", "text": "[img2]"}
    assert done.messages[2]["content"][1]["image"] == returned.data
    order = [type(e).__name__ for e in events if not isinstance(e, ChatDelta)]
    assert order == ["AgentTurn", "ToolCallStep", "ToolResultStep", "AgentTurn", "AgentDone"]
    assert not any(e.tool_calls for e in events if isinstance(e, ChatDelta))  # MCP calls stream as steps only
    assert step_json(call) == {"type": "mcp_call", "id": call.call_id, "server_label": "vision", "name": "crop",
                               "arguments": json.dumps(call.arguments), "images": ["img1"]}
    out = step_json(result, image_data=True)
    assert out["type"] == "mcp_call_output" and out["error"] is None and out["images"][0]["handle"] == "img2"
    assert out["images"][0]["url"] == "data:image/png;base64," + base64.b64encode(returned.data).decode()

    # the next turn continues from the history: same handles, no label written twice
    follow = done.history + [{"role": "user", "content": "And now?"}]
    again = run_agent(runtime, follow, stdio_host, allowed_tools={"vision": ["crop"]}, tool_choice="none",
                      enable_thinking=False, **TURN)
    assert again.handles.handles == ["img1", "img2"] and again.handles.get("img2").data == returned.data
    assert again.messages[:3] == done.messages and again.steps == [] and again.usage.images == 2
    assert again.done.usage.cached_tokens > done.turns[-1].usage.prompt_tokens // 2  # the KV prefix is reused


def test_a_call_of_the_callers_own_tool_ends_the_loop(runtime, stdio_host):
    lookup = {"type": "function", "function": {"name": "lookup", "description": "Look a word up.", "parameters": {
        "type": "object", "properties": {"word": {"type": "string", "enum": ["cat", "dog"]}}, "required": ["word"]}}}
    events = list(stream_agent(runtime, [{"role": "user", "content": "Look up a word."}], stdio_host,
                               allowed_tools={"vision": ["snapshot"]}, extra_tools=[lookup],
                               tool_choice={"name": "lookup"}, enable_thinking=False, **TURN))
    done = events[-1]
    assert done.finish_reason == "tool_calls" and done.steps == [] and len(done.turns) == 1
    call = done.done.output.tool_calls[0]
    assert call.name == "lookup" and json.loads(call.arguments)["word"] in ("cat", "dog")
    streamed = [d for e in events if isinstance(e, ChatDelta) for d in e.tool_calls]
    assert streamed[0].name == "lookup"


@pytest.fixture
def http_server(files):
    with mcp_http_server(SERVER, files["env"]) as url:
        yield url


def test_snapshot_then_read_text_over_http(runtime, http_server, files):
    config = parse_mcp_config({"mcpServers": {"cam": {"url": http_server}}})
    before = {p.pid for p in children()}
    with McpHost(config, call_timeout=20) as host:
        assert {p.pid for p in children()} == before  # a URL server starts no process
        done = run_agent(runtime, [{"role": "user", "content": "What does the camera see written?"}], host,
                         allowed_tools={"cam": ["snapshot", "read_text"]}, tool_choice=[{"name": "snapshot"}, {"name": "read_text"}, "none"], enable_thinking=False,
                         **TURN)
    assert kinds(done.steps) == [("call", "snapshot"), ("result", "snapshot"), ("call", "read_text"),
                                 ("result", "read_text")]
    snap, read = done.steps[1], done.steps[3]
    assert [i.handle for i in snap.images] == ["img1"] and done.handles.get("img1").data == files["snapshot"]
    assert done.steps[2].images == ["img1"]
    digest = hashlib.sha256(files["snapshot"]).hexdigest()
    assert logged(files) == [{"tool": "read_text", "sha256": digest, "bytes": len(files["snapshot"]), "mime": "image/png"}]
    assert read.text == f"TEXT[{digest[:12]} 84x56]" and not read.is_error
    assert len(done.turns) == 3 and done.usage.images == 1 and done.done.usage.image_tokens > 0
    assert [m["role"] for m in done.messages] == ["user", "assistant", "tool", "assistant", "tool"]


def test_without_mcp_tools_the_request_is_untouched(runtime, stdio_host):
    photo = png_bytes(56, 84, seed=3)
    messages = [{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "text", "text": "Hi"}]}]
    plain = runtime.chat(messages, enable_thinking=False, **TURN)
    done = run_agent(runtime, messages, stdio_host, allowed_tools={"vision": []}, enable_thinking=False, **TURN)
    assert done.messages == messages and done.steps == [] and len(done.turns) == 1
    assert done.done.token_ids == plain.token_ids
    assert done.done.usage.prompt_tokens == plain.usage.prompt_tokens


def failing_turn(runtime, host, tool: str, server: str = "vision", **kwargs) -> tuple[AgentDone, float]:
    started = time.monotonic()
    done = run_agent(runtime, [{"role": "user", "content": f"Use {tool}."}], host, allowed_tools={server: [tool]},
                     tool_choice=[{"name": tool}, "none"], enable_thinking=False, **TURN, **kwargs)
    assert kinds(done.steps) == [("call", tool), ("result", tool)] and len(done.turns) == 2
    assert done.finish_reason in ("stop", "length") and done.messages[-1]["role"] == "tool"
    return done, time.monotonic() - started


@pytest.mark.parametrize("tool, message", [
    ("malformed", "is not valid base64"),
    ("not_image", "its bytes are not an image"),
    ("huge", "images from tools may be at most 50000 bytes"),
])
def test_unusable_content_is_a_tool_error(runtime, stdio_host, tool, message):
    done, _ = failing_turn(runtime, stdio_host, tool, max_image_bytes=50000)
    result = done.steps[1]
    assert result.is_error and message in result.text and result.images == []
    assert done.usage.images == 0  # nothing unusable reached the decoder


def test_server_crash_mid_call_is_reported_and_restarted(runtime, stdio_host):
    pid = children()[-1].pid
    done, _ = failing_turn(runtime, stdio_host, "crash")
    assert done.steps[1].is_error and "failed during the call of 'crash'" in done.steps[1].text
    assert "restarted" in done.steps[1].text
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert stdio_host.status() == {"vision": "running"}
    again = run_agent(runtime, [{"role": "user", "content": "Snap."}], stdio_host, allowed_tools={"vision": ["snapshot"]},
                      tool_choice=[{"name": "snapshot"}, "none"], enable_thinking=False, **TURN)
    assert not again.steps[1].is_error and len(again.steps[1].images) == 1


def test_hung_tool_times_out_within_the_bound(runtime, stdio_host):
    done, seconds = failing_turn(runtime, stdio_host, "hang", call_timeout=1.5)
    assert done.steps[1].is_error and "did not answer within 1.5 s" in done.steps[1].text
    assert seconds < 15


def test_unknown_handle_is_a_tool_error_and_steps_are_bounded(runtime, stdio_host, files):
    call = ('root ::= "<tool_call>read_text\\n<arg_key>image</arg_key>\\n<arg_value>img9</arg_value>\\n'
            '</tool_call>"\n')
    photo = png_bytes(56, 56, seed=4)
    messages = [{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "text", "text": "Read."}]}]
    done = run_agent(runtime, messages, stdio_host, allowed_tools={"vision": ["read_text"]}, max_steps=2,
                     enable_thinking=False, grammar=call, **TURN)
    assert kinds(done.steps) == [("call", "read_text"), ("result", "read_text")] * 2
    assert all("'img9' names no image of this conversation (known: img1)" in s.text for s in done.steps[1::2])
    assert len(done.turns) == 3 and not done.done.output.tool_calls  # the last turn may not call tools
    assert logged(files) == []  # the tool was never called


def test_unconfigured_server_is_refused(runtime, stdio_host):
    with pytest.raises(UnknownMcpServerError, match="'elsewhere' are not configured; configured at launch: vision") as e:
        run_agent(runtime, [{"role": "user", "content": "x"}], stdio_host, servers=["elsewhere"])
    assert e.value.http_status == 400


def test_resource_links_follow_the_media_policy(runtime, stdio_host, files):
    allowed = media_resolver(MediaPolicy(media_dir=files["media"]))
    done, _ = failing_turn(runtime, stdio_host, "linked", resolve=allowed)
    assert not done.steps[1].is_error and done.handles.get("img1").data == (files["media"] / "linked.png").read_bytes()
    assert done.usage.images == 1
    refused = media_resolver(MediaPolicy(media_dir=files["dir"] / "elsewhere"))
    done, _ = failing_turn(runtime, stdio_host, "linked", resolve=refused)
    assert done.steps[1].is_error and "outside the media folder" in done.steps[1].text
    done, _ = failing_turn(runtime, stdio_host, "embedded")
    assert [i.handle for i in done.steps[1].images] == ["img1"] and done.handles.get("img1").data == files["snapshot"]


def test_a_url_server_that_dies_is_reported_down(runtime, http_server):
    config = parse_mcp_config({"mcpServers": {"cam": {"url": http_server}}})
    with McpHost(config, call_timeout=20, connect_timeout=3) as host:
        done, seconds = failing_turn(runtime, host, "crash", server="cam")
        text = done.steps[1].text
        assert done.steps[1].is_error and "failed during the call of 'crash'" in text
        assert "could not be restarted (restart failed:" in text and seconds < 30
        assert host.status()["cam"].startswith("down: restart failed")
        later = host.call(host.tools(["cam"], {"cam": ["snapshot"]})[0], {})
        assert later.is_error and "is down" in later.error and "the tool was not called" in later.error
