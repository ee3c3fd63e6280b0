"""PDF `file` parts of chat messages, expanded into the page images the model reads.

Accepted shapes (in user or tool messages):
- OpenAI chat completions: `{"type": "file", "file": {"file_data": "data:application/pdf;base64,...",
  "filename": ..., <options>}}` (after the server's media policy, `file_data` holds the bytes);
- the Python API: `{"type": "file", "file": bytes | path | data: URL, <options>}`.
Options (extension keys, next to `file_data` or on the part): `pages` ("1-3,5"), `first_page`, `last_page`,
`page_tokens` (per-page budget), `min_page_tokens` (opt-in: lower the budget to fit the context).

`expand_documents(messages, renderer, allowance)` replaces each file part by the page images in document
order, each `{"type": "image", "image": <png>, "max_tokens": <its tokens>}` (so the image path keeps the
rendered size), preceded by `page_note`'s sentence only when image k is not page k (see
edge/vision/document.py for how the model is told page numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.errors import DocumentError
from edge.vision.document import DocumentOptions, RenderedDocument, page_note
from edge.vision.image import read_source
from edge.vision.pdf_worker import PdfRenderer

OPTION_KEYS = ("pages", "first_page", "last_page", "page_tokens", "min_page_tokens")


def is_file_part(part) -> bool:
    return isinstance(part, dict) and part.get("type") == "file"


def file_source(part: dict) -> tuple[object, dict]:
    """(the document's bytes, path or data URL; its options) of a file part."""
    spec = part.get("file")
    if isinstance(spec, dict):
        if spec.get("file_id") is not None and spec.get("file_data") is None:
            raise DocumentError("file.file_id is not supported (this server keeps no uploaded files); "
                                "send the document inline as file.file_data (a data: URL)")
        source, options = spec.get("file_data"), spec
    else:
        source, options = spec, part
    if not isinstance(source, (bytes, bytearray, memoryview, str)) or not source:
        raise DocumentError("a file part needs file.file_data: a data:application/pdf;base64 URL (or bytes / a "
                            "path in the Python API)")
    return source, {k: options[k] for k in OPTION_KEYS if options.get(k) is not None}


@dataclass
class Expanded:
    messages: list[dict]
    documents: list[RenderedDocument]


def expand_documents(messages: Sequence[dict], renderer: PdfRenderer, allowance: int | None = None,
                     max_bytes: int = DocumentOptions.max_bytes) -> Expanded:
    """Messages with every file part replaced by its page images; `allowance` (total image tokens for the
    document) applies when there is exactly one document."""
    out, documents = [], []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list) or not any(is_file_part(p) for p in content):
            out.append(msg)
            continue
        parts = []
        for part in content:
            if not is_file_part(part):
                parts.append(part)
                continue
            source, options = file_source(part)
            data = read_source(source, max_bytes=max_bytes)
            doc = renderer.render(data, DocumentOptions(**options, max_bytes=max_bytes, token_allowance=allowance))
            documents.append(doc)
            note = page_note(doc)
            if note:
                parts.append({"type": "text", "text": note})
            parts += [{"type": "image", "image": p.png, "max_tokens": p.n_tokens} for p in doc.pages]
        out.append({**msg, "content": parts})
    return Expanded(out, documents)
