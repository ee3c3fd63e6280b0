"""The chat page at `/` in headless Chromium (Debian's `chromium` + Playwright): load it, attach an image,
send a message, see the streamed answer; reasoning collapsible; grounding boxes drawn on the image.

Skipped only when Playwright or a Chromium binary is missing (`make install-test` installs both)."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from tests.conftest import png_bytes
from tests.server_helpers import EXACT, ScriptedEngine, ThreadServer, scripted_app

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and os.path.exists(p)), None)
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium; make install-test)"),
]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors


def send_with_image(page, base, image_path, text, thinking: bool):
    page.goto(base + "/")
    page.wait_for_function("document.getElementById('model').textContent === 'glm-4.6v-flash'")
    if not thinking:
        page.uncheck("#thinking")
    page.set_input_files("#file", str(image_path))
    page.wait_for_selector("#pending img")
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_selector(".msg.assistant[data-done]", timeout=60_000)
    return page.locator(".msg.assistant").last


def test_page_sends_image_and_streams_answer(page, tiny_bundle, tmp_path):
    from edge.api.app import create_app
    from edge.api.service import ServerSettings
    from edge.options import RuntimeOptions

    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes(100, 70, seed=1))
    with ThreadServer(create_app(ServerSettings(bundle=tiny_bundle, runtime=RuntimeOptions(ctx_size=2048, **EXACT)))) as srv:
        answer = send_with_image(page, srv.base, image, "What is in the picture?", thinking=False)
        assert answer.get_attribute("data-done") == "1", answer.inner_text()
        assert answer.locator(".content").inner_text().strip()
        assert "prompt tokens" in answer.locator(".meta").inner_text()
        assert page.locator(".msg.user .thumbs img").count() == 1
        metrics = httpx.get(srv.base + "/metrics").text
        assert 'glm_edge_chat_completions_total{mode="stream",outcome="ok"} 1' in metrics
        assert "glm_edge_image_tokens_total 0" not in metrics  # the image reached the model
        page.screenshot(path=str(tmp_path / "page.png"))


def test_page_reasoning_and_boxes(page, tiny_bundle, tmp_path):
    script = ["Looking", " at the image.", "</think>", "The cat ", "<|begin_of_box|>", "[100,200,500,600]",
              "<|end_of_box|>"]
    image = tmp_path / "cat.png"
    image.write_bytes(png_bytes(200, 100, seed=2))
    with ThreadServer(scripted_app(tiny_bundle, ScriptedEngine(script, delay=0.02))) as srv:
        answer = send_with_image(page, srv.base, image, "Where is the cat?", thinking=True)
        assert answer.get_attribute("data-done") == "1"
        reasoning = answer.locator("details.reasoning")
        assert reasoning.is_visible() and "Looking at the image." in reasoning.text_content()
        assert reasoning.get_attribute("open") is None  # collapsed once the answer started
        assert answer.locator(".content").inner_text().startswith("The cat")
        box = answer.locator(".grounding .box")
        assert box.count() == 1 and box.inner_text() == "The cat"
        style = box.get_attribute("style")
        assert "left: 10%" in style and "top: 20%" in style and "width: 40%" in style
        page.screenshot(path=str(tmp_path / "boxes.png"))
