"""PDFs in conversations (runtime, CLI-free): a document gives exactly the tokens of its pages sent as images
(and transformers' greedy tokens for them); page ranges; the document budget against the context; the server's
file part and its bad inputs."""

from __future__ import annotations

import base64

import httpx
import pytest

from edge.chat.template import ImageRef
from edge.runtime import Runtime
from edge.vision.document import DocumentOptions
from tests.hf_reference import hf_greedy
from tests.server_helpers import EXACT, MODEL, ThreadServer
from tests.test_document import encrypted_pdf, pdf_with_pages, three_page_pdf

GREEDY = dict(temperature=0.0, repetition_penalty=1.0, max_tokens=16)
PDF = three_page_pdf()
QUESTION = {"type": "text", "text": "What do these pages show?"}


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    rt = Runtime.load(tiny_bundle, device="cpu", vision_dtype="fp32", kv_type="f32", flash_attn="off", ctx_size=4096,
                      threads=2, parallel=1)
    yield rt
    rt.close()


def test_pdf_equals_its_pages_as_images_and_transformers(runtime, hf_model, hf_tokenizer):
    budget = 64
    done = runtime.chat([{"role": "user", "content": [{"type": "file", "file": PDF, "page_tokens": budget}, QUESTION]}],
                        **GREEDY)
    doc = runtime.documents.render(PDF, DocumentOptions(page_tokens=budget))
    assert len(doc.pages) == 3 and len({(p.width, p.height) for p in doc.pages}) == 3
    images = [{"type": "image", "image": p.png, "max_tokens": p.n_tokens} for p in doc.pages]
    as_images = runtime.chat([{"role": "user", "content": images + [QUESTION]}], **GREEDY)
    assert done.token_ids == as_images.token_ids and done.usage.images == 3
    assert done.usage.image_tokens == sum(p.n_tokens for p in doc.pages)
    prepared = [runtime.prepare(ImageRef(p.png, None, p.n_tokens)) for p in doc.pages]
    hf_msgs = [{"role": "user", "content": [{"type": "image"}] * 3 + [QUESTION]}]
    assert done.token_ids == hf_greedy(hf_model, hf_tokenizer, hf_msgs, prepared, max_new_tokens=16)


def test_page_range_selects_and_names_the_pages(runtime):
    part = {"type": "file", "file": PDF, "page_tokens": 64, "pages": "2-3"}
    prompt = runtime.build_prompt([{"role": "user", "content": [part, QUESTION]}])
    assert sum(c.is_media for c in prompt.chunks) == 2
    text = "".join(runtime.decoder.token_bytes(t).decode("utf-8", "replace") for c in prompt.chunks for t in c.tokens)
    assert "The following 2 images are pages 2-3 of a 3-page PDF." in text
    first_two = runtime.build_prompt([{"role": "user", "content": [{**part, "pages": "1-2"}, QUESTION]}])
    assert "The following" not in "".join(runtime.decoder.token_bytes(t).decode() for c in first_two.chunks for t in c.tokens)


def test_document_budget_against_the_context(tiny_bundle):
    from edge.errors import DocumentBudgetError

    pdf = pdf_with_pages([(612, 792)] * 4)
    with Runtime.load(tiny_bundle, device="cpu", ctx_size=1024, threads=1, parallel=1) as rt:
        msg = [{"role": "user", "content": [{"type": "file", "file": pdf, "page_tokens": 400}, QUESTION]}]
        with pytest.raises(DocumentBudgetError, match=r"4 pages at 400 tokens per page need \d+ image tokens") as e:
            rt.build_prompt(msg)
        assert e.value.pages_that_fit == 2 and e.value.page_tokens_that_fit is not None
        msg[0]["content"][0]["min_page_tokens"] = 64
        prompt = rt.build_prompt(msg)
        assert sum(c.n_tokens for c in prompt.chunks) < 1024 and sum(c.is_media for c in prompt.chunks) == 4


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    from edge.api.app import create_app
    from edge.api.service import ServerSettings
    from edge.options import RuntimeOptions

    media = tmp_path_factory.mktemp("docs")
    (media / "doc.pdf").write_bytes(PDF)
    settings = ServerSettings(bundle=tiny_bundle, media_dir=media, max_document_bytes=1 << 20,
                              runtime=RuntimeOptions(ctx_size=4096, parallel=1, **EXACT))
    with ThreadServer(create_app(settings)) as srv:
        yield srv


def ask(server, file: dict):
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "file", "file": file}, QUESTION]}]}
    return httpx.post(server.base + "/v1/chat/completions", json=body, timeout=120)


def data_url(pdf: bytes) -> str:
    return "data:application/pdf;base64," + base64.b64encode(pdf).decode()


def test_server_file_part_data_url_and_media_path(server):
    r = ask(server, {"file_data": data_url(PDF), "filename": "doc.pdf", "page_tokens": 64})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["images"] == 3
    again = ask(server, {"file_data": "doc.pdf", "page_tokens": 64})
    assert again.status_code == 200 and again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize("file, status, code", [
    ({"file_data": data_url(b"GIF89a not a pdf")}, 400, "invalid_document"),
    ({"file_data": data_url(b"%PDF-1.7\n1 0 obj garbage")}, 400, "invalid_document"),
    ({"file_data": data_url(encrypted_pdf(b"secret", b"owner"))}, 400, "invalid_document"),
    ({"file_data": data_url(pdf_with_pages([(612, 792)] * 250))}, 413, "invalid_document"),
    ({"file_data": data_url(PDF), "pages": "9"}, 400, "invalid_document"),
    ({"file_id": "file-abc"}, 400, "invalid_document"),
    ({"file_data": "../outside.pdf"}, 403, "media_access_denied"),
    ({"file_data": data_url(b"%PDF" + b"x" * (2 << 20))}, 413, "invalid_image"),
])
def test_server_bad_documents(server, file, status, code):
    r = ask(server, file)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
