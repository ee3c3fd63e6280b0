"""Render a PDF's selected pages to RGB PNGs with PDFium (pypdfium2), in the calling process.

Contract
- `render_pdf(data, config, options)` returns a `RenderedDocument`: each selected page rendered at
  exactly the size `edge.vision.document.page_size` plans for it (PDFium scales the page to that
  bitmap directly, so the pixels are not resampled a second time), on white, annotations drawn,
  interactive forms not run. The same bytes, config and options give the same PNG bytes.
- Bad input raises DocumentError subclasses before anything is rendered: over `max_bytes`
  (PdfTooLargeError), no `%PDF-` header in the first 1024 bytes (NotAPdfError), a password or an
  unsupported security handler (EncryptedPdfError; PDFs with only an owner password open like in
  any viewer), unparseable (CorruptPdfError), no pages (EmptyPdfError), then the selection, page
  sizes and budget as in `edge.vision.document`. A page that fails to load raises CorruptPdfError.
- PDFium is native code reading untrusted bytes and is not thread-safe: servers call this through
  `edge.vision.pdf_worker.PdfRenderer`, which runs it in a separate process.
"""

from __future__ import annotations

import hashlib
import io

import pypdfium2 as pdfium
import pypdfium2.internal as pdfium_i
import pypdfium2.raw as pdfium_c
from pypdfium2.version import PDFIUM_INFO

from edge.errors import CorruptPdfError, EmptyPdfError, EncryptedPdfError, NotAPdfError, PdfTooLargeError
from edge.vision.document import (
    DocumentOptions, PagePlan, RenderedDocument, RenderedPage, page_cache_key, plan_document, select_pages,
    validate_options,
)
from edge.vision.image import ImageConfig

RENDERER = f"pdfium-{PDFIUM_INFO.build}"  # in cache keys: another PDFium may draw other pixels
_FLAGS = pdfium_c.FPDF_ANNOT | pdfium_c.FPDF_REVERSE_BYTE_ORDER  # annotations on; RGB byte order


def open_pdf(data: bytes) -> pdfium.PdfDocument:
    """Open PDF bytes, mapping PDFium's load errors to DocumentError classes."""
    if b"%PDF-" not in data[:1024]:
        raise NotAPdfError(f"data is not a PDF (no %PDF- header in the first 1024 bytes); first bytes: {data[:16]!r}")
    # The raw call, not PdfDocument(bytes): that one also refuses zero pages, with a stale error code.
    raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), None)  # `data` outlives the document (caller's scope)
    if not raw:
        code = pdfium_c.FPDF_GetLastError()
        if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise EncryptedPdfError("the PDF is encrypted and needs a password (or uses an unsupported security "
                                    "handler); send an unencrypted copy")
        raise CorruptPdfError(f"the PDF cannot be parsed ({len(data)} bytes; PDFium error {code}: "
                              f"{pdfium_i.ErrorToStr.get(code)}); send an intact PDF file")
    return pdfium.PdfDocument(raw)


def _page_size_pt(doc: pdfium.PdfDocument, number: int) -> tuple[float, float]:
    try:
        width, height = doc.get_page_size(number - 1)  # without loading the page's content
    except pdfium.PdfiumError as e:
        raise CorruptPdfError(f"page {number} of the PDF cannot be read (broken page object)") from e
    return float(width), float(height)


def _render_png(doc: pdfium.PdfDocument, plan: PagePlan) -> bytes:
    try:
        page = doc[plan.number - 1]
    except pdfium.PdfiumError as e:
        raise CorruptPdfError(f"page {plan.number} of the PDF cannot be loaded (broken page object)") from e
    try:
        w, h = plan.width, plan.height
        bitmap = pdfium.PdfBitmap.new_native(w, h, pdfium_c.FPDFBitmap_BGR, rev_byteorder=True)
        bitmap.fill_rect((255, 255, 255, 255), 0, 0, w, h)
        pdfium_c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, w, h, 0, _FLAGS)  # stretched to exactly w x h
        image = bitmap.to_pil()
        bitmap.close()
    finally:
        page.close()
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fast; the bytes only travel to the image loader
    return buf.getvalue()


def render_pdf(data: bytes, config: ImageConfig, options: DocumentOptions | None = None) -> RenderedDocument:
    """Render the selected pages of a PDF (see the module contract); options default to DocumentOptions()."""
    options = options or DocumentOptions()
    data = bytes(data)  # PDFium reads this buffer for as long as the document is open
    validate_options(options, config)
    if len(data) > options.max_bytes:
        raise PdfTooLargeError(f"PDF is {len(data)} bytes; the limit is {options.max_bytes}")
    digest = hashlib.sha256(data).hexdigest()
    with open_pdf(data) as doc:
        count = len(doc)
        if count < 1:
            raise EmptyPdfError("the PDF has no pages; send a PDF with at least one page")
        numbers = select_pages(count, options)  # refuses too many pages from the count alone
        budget, plans = plan_document([(n, *_page_size_pt(doc, n)) for n in numbers], config, options)
        pages = tuple(
            RenderedPage(number=p.number, png=_render_png(doc, p), width=p.width, height=p.height, rows=p.rows,
                         cols=p.cols, n_tokens=p.n_tokens,
                         cache_key=page_cache_key(digest, p.number, budget, p.width, p.height, RENDERER),
                         width_pt=p.width_pt, height_pt=p.height_pt)
            for p in plans)
    return RenderedDocument(sha256=digest, page_count=count, page_tokens=budget, pages=pages)
