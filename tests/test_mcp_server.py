"""MCP tools through the server and the CLI: a real uvicorn server started with --mcp-config naming
tests/mcp_vision_server.py over stdio ("vision") and streamable HTTP ("cam"), the tiny exact bundle, calls
forced by tool_choice so the random model runs a deterministic loop. Chat completions (JSON and SSE), the
Responses API through the official openai client, refusals, `glm-edge chat --mcp-config` in a subprocess,
and no MCP child process left after shutdown."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from edge.api.app import create_app
from edge.api.service import ServerSettings
from edge.options import RuntimeOptions
from tests.conftest import png_bytes
from tests.server_helpers import EXACT, MODEL, ROOT, ThreadServer, data_url, mcp_http_server, sse_events
from tests.test_mcp_agent import SERVER, children, logged

OPTIONS = {**EXACT, "ctx_size": 2048, "batch_size": 128, "ubatch_size": 64, "vision_dtype": "fp32", "parallel": 1}
PHOTO = png_bytes(112, 84, seed=11)
ASK = {"model": MODEL, "temperature": 0, "max_tokens": 96, "repetition_penalty": 1.0,
       "chat_template_kwargs": {"enable_thinking": False}}
CROP = {"type": "mcp", "server_label": "vision", "allowed_tools": ["crop"], "require_approval": "never"}


def photo_message(text: str = "Crop the interesting part.") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(PHOTO)}},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp-server")
    snapshot = png_bytes(84, 56, seed=5)
    (tmp / "snapshot.png").write_bytes(snapshot)
    env = {"MCP_TEST_SNAPSHOT": str(tmp / "snapshot.png"), "MCP_TEST_LOG": str(tmp / "calls.jsonl")}
    return {"dir": tmp, "snapshot": snapshot, "log": tmp / "calls.jsonl", "env": env}


@pytest.fixture(scope="module")
def cam_url(files):
    with mcp_http_server(SERVER, files["env"]) as url:
        yield url


@pytest.fixture(scope="module")
def config(files, cam_url):
    path = files["dir"] / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {
        "vision": {"command": sys.executable, "args": [SERVER, "stdio"], "env": files["env"]},
        "cam": {"url": cam_url}}}))
    return path


@pytest.fixture(scope="module")
def server(tiny_bundle, config):
    before = {p.pid for p in children()}
    settings = ServerSettings(bundle=tiny_bundle, runtime=RuntimeOptions().with_(**OPTIONS), mcp_config=config)
    with ThreadServer(create_app(settings)) as srv:
        assert len(children()) == len(before) + 1  # the stdio server; the URL server is no child of the app
        yield srv
    assert {p.pid for p in children()} == before, "an MCP server process outlived the server"


@pytest.fixture(autouse=True)
def fresh_log(files):
    files["log"].unlink(missing_ok=True)


def post(srv, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(srv.base + path, json=body, timeout=120)


def test_chat_completion_runs_the_tool_and_shows_the_steps(server, files):
    plain = post(server, {**ASK, "messages": photo_message()}).json()
    body = {**ASK, "messages": photo_message(), "tools": [CROP],
            "tool_choice": {"type": "function", "function": {"name": "crop"}}}
    out = post(server, body).json()
    message, usage = out["choices"][0]["message"], out["usage"]
    steps = message["mcp_steps"]
    assert [(s["type"], s["name"], s["server_label"]) for s in steps] == [
        ("mcp_call", "crop", "vision"), ("mcp_call_output", "crop", "vision")]
    call, result = steps
    assert call["images"] == ["img1"] and json.loads(call["arguments"])["image"] == "img1"
    assert logged(files) == [{"tool": "crop", "sha256": hashlib.sha256(PHOTO).hexdigest(), "bytes": len(PHOTO),
                              "mime": "image/png"}]  # the tool got exactly the bytes img1 names
    assert result["error"] is None and [i["handle"] for i in result["images"]] == ["img2"]
    returned = base64.b64decode(result["images"][0]["url"].split(",", 1)[1])
    assert returned.startswith(b"\x89PNG") and len(returned) == result["images"][0]["bytes"]
    # the returned image reached the decoder: two images in the final prompt, more image tokens than the photo's
    assert usage["images"] == 2 and plain["usage"]["images"] == 1
    assert usage["prompt_tokens_details"]["image_tokens"] > plain["usage"]["prompt_tokens_details"]["image_tokens"]
    assert out["choices"][0]["finish_reason"] in ("stop", "length") and "tool_calls" not in message
    assert out["object"] == "chat.completion" and "mcp_steps" not in plain["choices"][0]["message"]
    assert httpx.get(server.base + "/health").json()["mcp_servers"] == {"vision": "running", "cam": "running"}


def test_streamed_steps_come_before_the_answer(server, files):
    body = {**ASK, "messages": photo_message(), "tools": [CROP], "stream": True,
            "stream_options": {"include_usage": True},
            "tool_choice": {"type": "function", "function": {"name": "crop"}}}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    step_at = [i for i, c in enumerate(chunks) if c["choices"] and "mcp_steps" in c["choices"][0]["delta"]]
    steps = [c["choices"][0]["delta"]["mcp_steps"][0] for c in (chunks[i] for i in step_at)]
    assert [s["type"] for s in steps] == ["mcp_call", "mcp_call_output"] and steps[1]["images"][0]["handle"] == "img2"
    finish = [i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]]
    content = [i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(finish) == 1 and step_at[-1] < finish[0] and all(i > step_at[-1] for i in content)
    assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks if c["choices"])
    assert chunks[-1]["usage"]["images"] == 2 and chunks[-1]["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    assert len(logged(files)) == 1


def test_http_server_tool_chosen_by_mcp_tool_choice(server, files):
    body = {**ASK, "messages": [{"role": "user", "content": "What does the camera see?"}],
            "tools": [{"type": "mcp", "server_label": "cam", "allowed_tools": {"tool_names": ["snapshot"]}}],
            "tool_choice": {"type": "mcp", "server_label": "cam", "name": "snapshot"}}
    out = post(server, body).json()
    call, result = out["choices"][0]["message"]["mcp_steps"]
    assert (call["server_label"], call["name"], result["error"]) == ("cam", "snapshot", None)
    assert base64.b64decode(result["images"][0]["url"].split(",", 1)[1]) == files["snapshot"]
    assert out["usage"]["images"] == 1 and out["usage"]["prompt_tokens_details"]["image_tokens"] > 0


@pytest.mark.parametrize("tools, choice, code, param, words", [
    ([{"type": "mcp", "server_label": "elsewhere"}], None, "unknown_mcp_server", "tools[0].server_label",
     "configured at launch: vision, cam"),
    ([{"type": "mcp", "server_label": "vision", "server_url": "http://127.0.0.1:9/mcp"}], None,
     "mcp_server_url_refused", "tools[0].server_url", "configured when it starts"),
    ([CROP, {"type": "mcp", "server_label": "cam", "allowed_tools": ["nope"]}], None, "invalid_request_error",
     "tools[1].allowed_tools", "no tool(s) 'nope'"),
    ([{**CROP, "require_approval": "always"}], None, "unsupported_parameter", "tools[0].require_approval", "never"),
    ([CROP], {"type": "function", "function": {"name": "snapshot"}}, "invalid_request_error", "tool_choice",
     "'snapshot'"),
    ([CROP], {"type": "mcp", "server_label": "cam"}, "invalid_request_error", "tool_choice", "'cam'"),
])
def test_refusals_are_400(server, files, tools, choice, code, param, words):
    body = {**ASK, "messages": photo_message(), "tools": tools, **({"tool_choice": choice} if choice else {})}
    r = post(server, body)
    error = r.json()["error"]
    assert r.status_code == 400 and (error["code"], error["param"]) == (code, param) and words in error["message"]
    assert logged(files) == []


def test_responses_api_with_the_openai_client(server, files):
    from openai import OpenAI

    client = OpenAI(base_url=server.base + "/v1", api_key="unused")
    request = dict(model=MODEL, temperature=0, max_output_tokens=96, reasoning={"effort": "none"},
                   input=[{"role": "user", "content": [{"type": "input_image", "image_url": data_url(PHOTO)},
                                                       {"type": "input_text", "text": "Crop it."}]}],
                   tools=[CROP], tool_choice={"type": "mcp", "server_label": "vision", "name": "crop"})
    response = client.responses.create(**request)
    kinds = [item.type for item in response.output]
    assert kinds[:2] == ["mcp_list_tools", "mcp_call"] and "message" in kinds
    listed, call = response.output[0], response.output[1]
    assert listed.server_label == "vision" and [t.name for t in listed.tools] == ["crop"]
    assert "image" in listed.tools[0].input_schema["properties"]
    assert (call.server_label, call.name, call.status, call.error) == ("vision", "crop", "completed", None)
    assert json.loads(call.arguments)["image"] == "img1" and call.model_extra["images"][0]["handle"] == "img2"
    assert response.usage.input_tokens > 0 and len(logged(files)) == 1

    events = list(client.responses.create(**request, stream=True))
    types = [e.type for e in events]
    expected = ["response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
                "response.mcp_call_arguments.done", "response.mcp_call.completed"]
    assert [t for t in types if t in expected] == expected
    final = events[-1].response  # incomplete when the random answer runs into max_output_tokens
    assert types[-1] == f"response.{final.status}" and final.status == response.status
    assert [i.type for i in final.output] == kinds and final.output[1].status == "completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_glm_edge_chat_with_mcp_config(tiny_bundle, config, files, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(PHOTO)
    started = time.time()
    cmd = [sys.executable, "-m", "edge.cli", "chat", str(tiny_bundle), "Crop it.", "--image", str(photo),
           "--mcp-config", str(config), "--tool-choice", "vision_crop", "--no-thinking", "--max-tokens", "96",
           "--temperature", "0", "--device", "cpu", "--ctx-size", "4096", "--threads", "1", "--quiet",
           "--no-color", "--stats"]
    run = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    call = next(line for line in lines if line.startswith("-> "))
    result = next(line for line in lines if line.startswith("<- "))
    assert call.startswith("-> vision.crop(image=img1, box=[")
    assert result.startswith("<- vision.crop (") and " [img2] image/png " in result and " B;" in result
    assert lines.index(call) < lines.index(result)
    image_tokens = int(re.search(r"prompt \((\d+) image", run.stderr).group(1))  # --stats of the final turn
    assert image_tokens > 0
    assert logged(files)[0]["sha256"] == hashlib.sha256(PHOTO).hexdigest()
    leftover = [p for p in psutil.process_iter(["cmdline", "create_time"])
                if SERVER in (p.info["cmdline"] or []) and p.info["create_time"] >= started - 1]
    assert leftover == [], "the chat's MCP server outlived it"


def test_the_cancel_event_ends_the_loop(server, files):
    """The job's cancel event (a client gone) stops the agent: the next turn is cut off, no further call."""
    from edge.chat.agent import AgentDone, ToolResultStep, stream_agent

    cancel = threading.Event()
    messages = [{"role": "user", "content": [{"type": "image", "image": PHOTO}, {"type": "text", "text": "Crop."}]}]
    events = []
    for event in stream_agent(server.service.runtime, messages, server.service.mcp_host, servers=["vision"],
                              allowed_tools={"vision": ["crop"]}, tool_choice=[{"name": "crop"}, {"name": "crop"}],
                              enable_thinking=False, cancel=cancel, temperature=0.0, max_tokens=96):
        events.append(event)
        if isinstance(event, ToolResultStep):
            cancel.set()
    done = events[-1]
    assert isinstance(done, AgentDone) and done.finish_reason == "cancelled"
    assert len(done.steps) == 2 and len(done.turns) == 2 and done.turns[1].finish_reason == "cancelled"
    assert len(logged(files)) == 1  # the second forced crop never ran


def test_without_mcp_config_mcp_entries_are_refused(tiny_bundle):
    from tests.server_helpers import ScriptedEngine, scripted_app

    with ThreadServer(scripted_app(tiny_bundle, ScriptedEngine(["never used"]))) as srv:
        assert "mcp_servers" not in httpx.get(srv.base + "/health").json()
        r = post(srv, {**ASK, "messages": photo_message(), "tools": [CROP]})
        error = r.json()["error"]
        assert r.status_code == 400 and (error["code"], error["param"]) == ("mcp_not_configured", "tools[0]")
        r = post(srv, {**ASK, "messages": photo_message(), "tool_choice": {"type": "mcp", "server_label": "vision"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
