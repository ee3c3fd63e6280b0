"""Documents as images: PDF pages rendered within a token budget, page ranges, the document budget, bad
input and the isolated renderer (crash, timeout, cache). PDFs are made here (Pillow, or by hand)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import threading
import time

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw

from benchmarks.pdf_fuzz import build_pdf, handmade_pdf, stream
from edge import errors
from edge.vision.document import DocumentOptions, page_note, page_size, plan_pages, token_limits
from edge.vision.image import ImageConfig, decode_image, pixel_bounds, prepare_image, preprocess
from edge.vision.pdf import render_pdf
from edge.vision.pdf_worker import PdfRenderer

try:
    from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil as HFProcessor
except ImportError:  # older transformers: GLM-4.1V class, same processing
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil as HFProcessor

# GLM-4.6V-Flash's preprocessor_config.json (doc section 4): 8..6144 tokens per image.
PREPROCESSOR_CONFIG = {
    "size": {"shortest_edge": 12544, "longest_edge": 9633792}, "resample": 3, "rescale_factor": 1 / 255,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
}
CONFIG = ImageConfig.from_preprocessor_config(PREPROCESSOR_CONFIG)
PAGES = (((612, 792), (255, 255, 255)), ((842, 595), (255, 255, 160)), ((300, 900), (160, 220, 255)))


def three_page_pdf() -> bytes:
    """Letter portrait, A4 landscape and a tall strip, each with its own background and a drawing."""
    images = []
    for (w, h), colour in PAGES:
        im = Image.new("RGB", (w, h), colour)
        draw = ImageDraw.Draw(im)
        draw.rectangle((20, 20, w // 3, h // 5), fill=(200, 0, 0))
        draw.text((30, h // 2), f"page {w}x{h}", fill=(0, 0, 0))
        images.append(im)
    buf = io.BytesIO()
    images[0].save(buf, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return buf.getvalue()


def pdf_with_pages(sizes: list[tuple[float, float]]) -> bytes:
    """Blank pages of the given sizes in points, written by PDFium itself."""
    doc = pdfium.PdfDocument.new()
    for w, h in sizes:
        doc.new_page(w, h)
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def page_objects(n: int, content: bytes) -> list[bytes]:
    kids = b" ".join(b"%d 0 R" % (4 + i) for i in range(n))
    return ([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, n),
             stream(b"", content)]
            + [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R /Resources << /Font << /F1 "
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>"] * n)


PDF = three_page_pdf()


@pytest.fixture(scope="module")
def renderer():
    with PdfRenderer(CONFIG, timeout_s=60) as r:
        yield r


# --- resolution from the per-page budget -------------------------------------------------------


@pytest.mark.parametrize("budget", [64, 1280, 4000])
def test_pages_land_within_budget_at_the_page_aspect(budget):
    doc = render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=budget))
    assert [p.number for p in doc.pages] == [1, 2, 3] and doc.page_count == 3 and doc.page_tokens == budget
    for page, ((w_pt, h_pt), _) in zip(doc.pages, PAGES, strict=True):
        assert page.width % 28 == 0 and page.height % 28 == 0
        assert (page.cols, page.rows) == (page.width // 28, page.height // 28)
        assert page.n_tokens == page.rows * page.cols <= budget
        assert page.n_tokens >= 0.8 * budget  # the budget is used, not just respected
        assert abs(page.width / page.height - w_pt / h_pt) < 28 / min(page.width, page.height) * 2
        with Image.open(io.BytesIO(page.png)) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (page.width, page.height))
    assert doc.n_tokens == sum(p.n_tokens for p in doc.pages)


def test_rendering_is_deterministic_and_keys_follow_document_page_and_budget():
    a = render_pdf(PDF, CONFIG)
    b = render_pdf(PDF, CONFIG)
    assert [p.png for p in a.pages] == [p.png for p in b.pages]
    assert [p.cache_key for p in a.pages] == [p.cache_key for p in b.pages]
    assert len({p.cache_key for p in a.pages}) == 3
    assert a.sha256 == hashlib.sha256(PDF).hexdigest()
    other_budget = render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=640))
    assert not {p.cache_key for p in a.pages} & {p.cache_key for p in other_budget.pages}
    other_document = render_pdf(PDF + b"\n", CONFIG)  # same pages, other bytes
    assert not {p.cache_key for p in a.pages} & {p.cache_key for p in other_document.pages}


def test_rendered_pages_show_the_page_content_in_order():
    doc = render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=256))
    for page, (_, colour) in zip(doc.pages, PAGES, strict=True):
        px = np.asarray(Image.open(io.BytesIO(page.png)))
        h, w = px.shape[:2]
        assert np.abs(px[int(h * 0.9), int(w * 0.9)].astype(int) - colour).max() <= 3  # background
        assert np.abs(px[int(h * 0.1), int(w * 0.15)].astype(int) - (200, 0, 0)).max() <= 3  # the red box


@pytest.mark.parametrize("budget", [8, 300])
def test_a_page_enters_the_image_path_unresampled_and_equals_transformers(budget):
    """The page PNG, preprocessed as an ordinary image with max_tokens=n_tokens, keeps its size (no second
    resample) and equals transformers' GLM-4.6V image processor on the same PNG (grid and pixel values)."""
    doc = render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=budget))
    for page in doc.pages:
        budgeted = prepare_image(page.png, CONFIG, max_tokens=page.n_tokens)
        plain = prepare_image(page.png, CONFIG)
        assert budgeted.resized_size == budgeted.original_size == (page.width, page.height)
        assert (budgeted.merged_rows, budgeted.merged_cols, budgeted.n_tokens) == (page.rows, page.cols, page.n_tokens)
        # Without a budget the preprocessor's minimum (8 tokens here) scales up a page below it.
        below_minimum = page.n_tokens * CONFIG.pixels_per_token < CONFIG.min_pixels
        assert (plain.resized_size == (page.width, page.height)) is not below_minimum
        if budget == 8:
            assert page.n_tokens <= 8
        rgb = decode_image(page.png)
        assert np.array_equal(budgeted.pixel_patches, preprocess(rgb, CONFIG, (page.height, page.width)))
        lo, hi = pixel_bounds(CONFIG, max_tokens=page.n_tokens)  # what max_tokens means in HF's size terms
        out = HFProcessor(**{**PREPROCESSOR_CONFIG, "size": {"shortest_edge": lo, "longest_edge": hi}})(images=[rgb])
        assert tuple(int(v) for v in np.asarray(out["image_grid_thw"])[0]) == budgeted.grid_thw
        assert np.allclose(np.asarray(out["pixel_values"]), budgeted.pixel_patches, atol=1e-6, rtol=0)


def test_a_rotated_page_renders_as_displayed():  # handmade page 2: MediaBox 400 x 300 pt with /Rotate 90
    doc = render_pdf(handmade_pdf(), CONFIG, DocumentOptions(pages="2", page_tokens=256))
    page = doc.pages[0]
    assert (page.width_pt, page.height_pt) == (300, 400) and page.height > page.width


def test_page_size_table():
    # Letter at the default budget: 31 x 41 blocks; the rendered size is what smart_resize keeps.
    assert page_size(612, 792, CONFIG, 1280) == (868, 1148)
    assert page_size(842, 595, CONFIG, 1280) == (1176, 840)
    assert page_size(792, 612, CONFIG, 1280) == (1148, 868)  # rotation swaps the sides
    assert page_size(3, 300, CONFIG, 1280) == (84, 10024)  # 100:1 renders (3 x 358 blocks)
    with pytest.raises(errors.PageSizeError, match="needs at least"):
        page_size(3, 300, CONFIG, 8)  # one block wide is already too many tokens at 100:1
    with pytest.raises(errors.PageSizeError, match="renders at 56 x 12236 pixels .* over the model's 200:1"):
        page_size(3, 450, CONFIG, 1280)  # 150:1 rounds down to 2 x 437 blocks: the image path would refuse it
    assert page_size(3, 450, CONFIG, 6144) == (168, 26880)  # a larger budget keeps it within 200:1
    assert token_limits(CONFIG) == (8, 6144)


# --- page selection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options, numbers", [
    (DocumentOptions(pages="1,3"), [1, 3]),
    (DocumentOptions(pages="3, 1-2"), [1, 2, 3]),  # document order, duplicates dropped
    (DocumentOptions(pages="2-"), [2, 3]),
    (DocumentOptions(pages="2-2,2"), [2]),
    (DocumentOptions(first_page=2), [2, 3]),
    (DocumentOptions(last_page=2), [1, 2]),
    (DocumentOptions(first_page=3, last_page=3), [3]),
])
def test_page_range(options, numbers):
    doc = render_pdf(PDF, CONFIG, options)
    assert [p.number for p in doc.pages] == numbers
    full = {p.number: p.png for p in render_pdf(PDF, CONFIG).pages}
    assert all(p.png == full[p.number] for p in doc.pages)  # a page renders the same in any selection


def test_page_note_only_when_image_k_is_not_page_k():
    def note(**kw):
        return page_note(render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=8, **kw)))

    assert note() is None and note(pages="1-2") is None and note(last_page=1) is None
    assert note(pages="2-3") == "The following 2 images are pages 2-3 of a 3-page PDF."
    assert note(pages="1,3") == "The following 2 images are pages 1, 3 of a 3-page PDF."
    assert note(first_page=3) == "The following image is page 3 of a 3-page PDF."
    data = pdf_with_pages([(100, 100)] * 12)
    doc = render_pdf(data, CONFIG, DocumentOptions(pages="3-5,9,11-12", page_tokens=8))
    assert page_note(doc) == "The following 6 images are pages 3-5, 9, 11-12 of a 12-page PDF."


@pytest.mark.parametrize("options, message", [
    (DocumentOptions(pages="4"), "document has 3 pages"),
    (DocumentOptions(pages="2-5"), "document has 3 pages"),
    (DocumentOptions(pages="0"), "starts below 1"),
    (DocumentOptions(pages="3-1"), "empty"),
    (DocumentOptions(pages="1;2"), "cannot read"),
    (DocumentOptions(pages="a-b"), "cannot read"),
    (DocumentOptions(pages=""), "cannot read"),
    (DocumentOptions(first_page=4), "document has 3 pages"),
    (DocumentOptions(first_page=3, last_page=2), "first_page <= last_page"),
    (DocumentOptions(pages="1", first_page=1), "not both"),
])
def test_bad_page_range(options, message):
    with pytest.raises(errors.PageRangeError, match=message) as e:
        render_pdf(PDF, CONFIG, options)
    assert e.value.http_status == 400


def test_too_many_pages_refused_from_the_count_before_reading_a_page():
    # The last page has an absurd size: a refusal that read page sizes would say PageSizeError.
    data = pdf_with_pages([(100, 100)] * 1000 + [(100000, 10)])
    with pytest.raises(errors.TooManyPagesError, match=r"1001 pages selected .*at most 200.*pages=\"1-200\"") as e:
        render_pdf(data, CONFIG, DocumentOptions(page_tokens=8))
    assert e.value.http_status == 413
    with pytest.raises(errors.TooManyPagesError, match="1001 pages selected"):
        render_pdf(data, CONFIG, DocumentOptions(pages="1-1001", page_tokens=8))
    doc = render_pdf(data, CONFIG, DocumentOptions(pages="2-4,999", page_tokens=8))
    assert [p.number for p in doc.pages] == [2, 3, 4, 999]
    with pytest.raises(errors.PageSizeError, match="page 1001 is 100000 x 10 pt"):
        render_pdf(data, CONFIG, DocumentOptions(pages="1001", page_tokens=8))


# --- the document budget -----------------------------------------------------------------------------


def sizes_pt():
    return [(i + 1, float(w), float(h)) for i, ((w, h), _) in enumerate(PAGES)]


def test_budget_refusal_says_what_fits():
    at_1280 = [p.n_tokens for p in plan_pages(sizes_pt(), CONFIG, 1280)]
    assert at_1280 == [1271, 1260, 1220]
    with pytest.raises(errors.DocumentBudgetError) as e:
        render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=1280, token_allowance=3000))
    err = e.value
    assert (err.pages, err.page_tokens, err.needed, err.allowance) == (3, 1280, 3751, 3000)
    assert err.pages_that_fit == 2  # 1271 + 1260 = 2531 <= 3000 < 3751
    fit = err.page_tokens_that_fit
    assert sum(p.n_tokens for p in plan_pages(sizes_pt(), CONFIG, fit)) <= 3000
    assert sum(p.n_tokens for p in plan_pages(sizes_pt(), CONFIG, fit + 1)) > 3000  # the largest that fits
    assert f"the first 2 pages fit at 1280 tokens per page, all 3 pages fit at {fit} tokens per page" in str(err)
    assert "need 3751 image tokens but the document allowance is 3000" in str(err)
    assert (err.http_status, err.code) == (400, "context_length_exceeded")


def test_opt_in_lower_budget_fits_the_allowance():
    doc = render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=1280, token_allowance=3000, min_page_tokens=500))
    assert len(doc.pages) == 3 and doc.n_tokens <= 3000 and 500 <= doc.page_tokens < 1280
    assert doc.n_tokens > 2900  # the largest budget that fits, not the floor
    with pytest.raises(errors.DocumentBudgetError, match="lowest allowed per-page budget: 1100") as e:
        render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=1280, token_allowance=3000, min_page_tokens=1100))
    assert e.value.page_tokens_that_fit == doc.page_tokens
    with pytest.raises(errors.DocumentBudgetError, match="no per-page budget lets all 3 pages fit"):
        render_pdf(PDF, CONFIG, DocumentOptions(page_tokens=1280, token_allowance=10, min_page_tokens=8))


@pytest.mark.parametrize("options, message", [
    (DocumentOptions(page_tokens=0), "page_tokens must be a positive integer"),
    (DocumentOptions(page_tokens=7), "allows 8..6144 tokens per page"),
    (DocumentOptions(page_tokens=6145), "allows 8..6144 tokens per page"),
    (DocumentOptions(min_page_tokens=2000), "above page_tokens"),
    (DocumentOptions(token_allowance=-1), "token_allowance must be a positive integer"),
    (DocumentOptions(first_page=True), "first_page must be a positive integer"),
])
def test_bad_options_refused_before_reading(options, message):
    with pytest.raises(errors.InputError, match=message):
        render_pdf(b"not even a pdf", CONFIG, options)


# --- bad input ----------------------------------------------------------------------------------------


def rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def encrypted_pdf(user: bytes, owner: bytes) -> bytes:
    """Standard security handler, revision 2 (RC4 40-bit): one page filled blue by an encrypted stream."""
    file_id, perms = bytes(range(16)), -44
    o = rc4(hashlib.md5((owner + PAD)[:32]).digest()[:5], (user + PAD)[:32])
    key = hashlib.md5((user + PAD)[:32] + o + struct.pack("<i", perms) + file_id).digest()[:5]
    u = rc4(key, PAD)
    content = rc4(hashlib.md5(key + struct.pack("<I", 4)[:3] + b"\0\0").digest()[:10], b"0 0 1 rg 0 0 612 792 re f")
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
               stream(b"", content, compress=False),
               b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>" % (o.hex().encode(), u.hex().encode(), perms)]
    return build_pdf(objects, trailer=b"/Encrypt 5 0 R /ID [<%s> <%s>]" % ((file_id.hex().encode(),) * 2))


def test_owner_password_only_pdf_opens_like_in_a_viewer():
    doc = render_pdf(encrypted_pdf(b"", b"owner-secret"), CONFIG, DocumentOptions(page_tokens=64))
    px = np.asarray(Image.open(io.BytesIO(doc.pages[0].png)))
    assert np.abs(px.reshape(-1, 3).mean(0) - (0, 0, 255)).max() < 2  # the decrypted content drew the page


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buf, "PNG")
    return buf.getvalue()


BAD_INPUTS = {
    "png": (truncated_png(), errors.NotAPdfError, "not a PDF .*first bytes: b'\\\\x89PNG"),
    "empty": (b"", errors.NotAPdfError, "not a PDF"),
    "late header": (b" " * 1024 + PDF, errors.NotAPdfError, "no %PDF- header in the first 1024 bytes"),
    "password": (encrypted_pdf(b"user-secret", b"owner-secret"), errors.EncryptedPdfError, "needs a password"),
    "truncated": (PDF[: len(PDF) // 2], errors.CorruptPdfError, "cannot be parsed"),
    "garbage": (b"%PDF-1.7\n" + bytes(range(256)) * 8, errors.CorruptPdfError, "cannot be parsed"),
    "zero pages": (pdf_with_pages([]), errors.EmptyPdfError, "no pages"),
    "huge page": (pdf_with_pages([(612, 792), (20000, 20000)]), errors.PageSizeError,
                  "page 2 is 20000 x 20000 pt; pages must be 3..14400 pt on each side"),
    "tiny page": (pdf_with_pages([(0.5, 0.5)]), errors.PageSizeError, "page 1 is 0.5 x 0.5 pt"),
    "thin page": (pdf_with_pages([(6000, 20)]), errors.PageSizeError, "aspect ratio of at most 200:1"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_with_the_reason(name, renderer):
    data, cls, message = BAD_INPUTS[name]
    for render in (lambda: render_pdf(data, CONFIG), lambda: renderer.render(data)):  # in process and isolated
        with pytest.raises(cls, match=message) as e:
            render()
        assert isinstance(e.value, errors.DocumentError) and 400 <= e.value.http_status < 500


def test_too_large_file():
    with pytest.raises(errors.PdfTooLargeError, match="PDF is 12000 bytes; the limit is 10000") as e:
        render_pdf(b"%PDF-1.7\n" + bytes(11991), CONFIG, DocumentOptions(max_bytes=10000))
    assert e.value.http_status == 413


# --- the isolated renderer --------------------------------------------------------------------------


def test_worker_result_equals_in_process_and_pages_are_cached(renderer):
    options = DocumentOptions(page_tokens=512, pages="1,3")
    data = PDF + b"% a copy only this test renders\n"
    jobs = renderer.jobs
    isolated = renderer.render(data, options)
    local = render_pdf(data, CONFIG, options)

    def summary(doc):
        return [(p.number, p.png, p.cache_key, p.n_tokens) for p in doc.pages]

    assert summary(isolated) == summary(local) and renderer.jobs == jobs + 1
    pid = renderer.worker_pid
    assert pid is not None and pid != os.getpid()
    # A second question: same pages, another token allowance (the prompt grew): nothing is rendered.
    again = renderer.render(bytearray(data), DocumentOptions(page_tokens=512, pages="1,3", token_allowance=5000))
    assert summary(again) == summary(isolated) and renderer.jobs == jobs + 1
    assert summary(renderer.render(data, DocumentOptions(page_tokens=512, first_page=3))) == summary(isolated)[1:]
    assert renderer.jobs == jobs + 1
    whole = renderer.render(data, DocumentOptions(page_tokens=512))  # page 2 is new: rendered
    assert [p.number for p in whole.pages] == [1, 2, 3] and renderer.jobs == jobs + 2
    # Refusals from cached page sizes equal the worker's (same plan on the same sizes).
    with pytest.raises(errors.DocumentBudgetError) as cached:
        renderer.render(data, DocumentOptions(token_allowance=3000))
    assert renderer.jobs == jobs + 2
    with pytest.raises(errors.DocumentBudgetError) as fresh:  # new bytes: the error crosses the worker pipe
        renderer.render(data + b"%\n", DocumentOptions(token_allowance=3000))
    assert renderer.jobs == jobs + 3
    assert str(cached.value) == str(fresh.value)
    assert (fresh.value.pages_that_fit, fresh.value.needed) == (2, 3751)


def heavy_pdf(pages: int = 60) -> bytes:
    """Pages of many shaded, stroked curves: a few seconds of PDFium work at the largest budget."""
    curves = b"".join(b"%d %d m %d %d %d %d %d %d c S\n" % (i, 0, 600 - i, 300, i, 500, 612 - i, 792)
                      for i in range(0, 600, 3))
    return build_pdf(page_objects(pages, b"/DeviceRGB cs 0.2 0.4 0.6 sc 2 w " + curves * 3))


def test_worker_crash_and_timeout_become_errors_and_the_next_file_renders():
    heavy = heavy_pdf()
    options = DocumentOptions(page_tokens=6144)
    with PdfRenderer(CONFIG, timeout_s=60, cache_bytes=0) as r:
        r.render(PDF, DocumentOptions(page_tokens=64))  # the worker is up
        pid, caught = r.worker_pid, []

        def job():
            try:
                r.render(heavy, options)
            except errors.PdfRenderError as e:
                caught.append(e)

        thread = threading.Thread(target=job)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), "the heavy PDF rendered too fast to crash the worker mid-job"
        os.kill(pid, signal.SIGSEGV)  # what a memory bug in PDFium does
        thread.join(30)
        assert len(caught) == 1 and f"crashed on this file (signal {int(signal.SIGSEGV)})" in str(caught[0])
        assert caught[0].http_status == 422 and r.crashes == 1
        assert len(r.render(PDF).pages) == 3 and r.worker_pid not in (None, pid)  # a fresh worker

        r.timeout_s = 0.3
        start = time.perf_counter()
        with pytest.raises(errors.PdfRenderError, match="took longer than 0.3 s"):
            r.render(heavy, options)
        assert time.perf_counter() - start < 5 and r.crashes == 2 and r.worker_pid is None
        r.timeout_s = 60
        assert len(r.render(PDF, DocumentOptions(pages="2")).pages) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="RLIMIT_AS is a POSIX limit")
def test_worker_memory_limit_is_applied_and_a_dead_worker_is_an_error():
    with PdfRenderer(CONFIG, memory_limit=48 << 20) as r:  # too small for Python + PDFium: the worker dies
        with pytest.raises(errors.PdfRenderError, match=r"crashed on this file \(exit code 1\)"):
            r.render(PDF)
        assert r.crashes == 1 and r.worker_pid is None


def test_fuzzed_pdfs_render_or_are_refused_and_the_renderer_survives(tmp_path):
    from benchmarks import pdf_fuzz

    out = tmp_path / "fuzz.json"
    assert pdf_fuzz.main(["--count", "60", "--seed", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["intact_pdf_after"] and result["worker_crashes_or_timeouts"] == 0
    names = set(result["outcomes"]) - {"rendered"}
    assert "rendered" in result["outcomes"] and names  # mutants of both kinds
    assert all(issubclass(getattr(errors, n), errors.DocumentError) for n in names), names
