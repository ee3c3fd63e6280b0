"""The chat page with MCP tools (headless Chromium, as tests/test_server_page.py): the servers configured at
launch appear as checkboxes, the page sends them as tools entries, and the streamed steps show the tool call
and the image the tool returned. A scripted engine writes the model's turns: a snapshot() call, then an answer."""

from __future__ import annotations

import json
import sys

from tests.conftest import png_bytes
from tests.server_helpers import ScriptedEngine, ThreadServer, scripted_app
from tests.test_mcp_agent import SERVER, children
from tests.test_server_page import browser, page, pytestmark  # noqa: F401 (fixtures and the skip marks)


def test_page_shows_tool_calls_and_returned_images(page, tiny_bundle, tmp_path):  # noqa: F811
    snapshot = png_bytes(84, 56, seed=5)
    (tmp_path / "snapshot.png").write_bytes(snapshot)
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"vision": {"command": sys.executable, "args": [SERVER, "stdio"],
                                                            "env": {"MCP_TEST_SNAPSHOT": str(tmp_path / "snapshot.png")}}}}))
    turns = []

    def script(params):
        turns.append(params.grammar)
        return ["<tool_call>snapshot\n</tool_call>"] if len(turns) == 1 else ["I see ", "a picture."]

    before = {p.pid for p in children()}
    with ThreadServer(scripted_app(tiny_bundle, ScriptedEngine(script, delay=0.01), mcp_config=config)) as srv:
        page.goto(srv.base + "/")
        page.wait_for_selector("#mcp input[data-server=vision]:checked")
        page.uncheck("#thinking")
        page.fill("#prompt", "Take a picture.")
        page.click("#send")
        page.wait_for_selector(".msg.assistant[data-done]", timeout=60_000)
        answer = page.locator(".msg.assistant").last
        assert answer.get_attribute("data-done") == "1", answer.inner_text()
        assert answer.locator(".step.call").inner_text() == "→ vision.snapshot({})"
        result = answer.locator(".step.result")
        assert result.inner_text().startswith("← vision.snapshot: ") and "[img1] 84x56" in result.inner_text()
        image = result.locator("img")
        assert image.count() == 1 and image.get_attribute("alt") == "img1"
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        assert image.evaluate("i => i.naturalWidth") == 84  # the browser decoded the returned picture
        assert answer.locator(".content").inner_text() == "I see a picture."
        assert answer.locator(".steps + .content").count() == 1  # the steps show before the answer
        page.screenshot(path=str(tmp_path / "mcp.png"))
    assert len(turns) == 2
    assert {p.pid for p in children()} == before
