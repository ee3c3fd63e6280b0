"""`PdfRenderer`: PDF rendering isolated in a worker process, with a time limit and a cache of results.

Contract
- `PdfRenderer(config).render(data, options)` returns what `edge.vision.pdf.render_pdf` returns and raises
  the same DocumentError classes, but PDFium runs in a separate Python process (`python -m
  edge.vision.pdf_worker`, started with the server's interpreter: no fork of a threaded server, no re-run
  of the caller's main script) started by `start()` or on first use and kept for later calls. A worker
  that dies (a segfault or abort inside PDFium, the memory limit) or runs past `timeout_s` is killed and
  replaced on the next call; the caller gets PdfRenderError (HTTP 422) saying what happened, never a dead
  server. Nothing in a request chooses what is run: the worker is always this module.
- The worker's address space is capped at `memory_limit` bytes (RLIMIT_AS, where the platform has it):
  a PDF that makes PDFium allocate without bound fails in the worker, not in the server.
- Rendered pages are cached by document sha256 + page + per-page budget + size, least recently used,
  bounded by the PNG bytes held (`cache_bytes`), with each document's page count and page sizes: a
  second question about the same PDF plans its pages again here (its token allowance has changed) and
  renders nothing when every page it needs is held. One renderer serves one preprocessing config.
- One render at a time per renderer (a lock); PDFium itself is not thread-safe. `close()` ends the worker.
- `isolate=False` renders in the calling process (tests, tools that trust their files).
- Wire format on the worker's stdin/stdout: 8-byte big-endian length + pickle, both ways; only this
  process and its own child ever write to these pipes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections import OrderedDict

from edge.errors import GlmEdgeError, PdfRenderError, PdfTooLargeError
from edge.vision.document import (
    DocumentOptions, RenderedDocument, RenderedPage, plan_document, select_pages, validate_options,
)
from edge.vision.image import ImageConfig

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MEMORY_LIMIT = 4 << 30
DEFAULT_CACHE_BYTES = 256 << 20
MAX_CACHED_DOCUMENTS = 1024  # page counts and sizes of documents seen (a few bytes per page)


def _write(stream, obj) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">Q", len(blob)) + blob)
    stream.flush()


def _read(stream):
    """The next message, or EOFError when the other side has gone."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("pipe closed")
    size = struct.unpack(">Q", head)[0]
    blob = stream.read(size)
    if len(blob) < size:
        raise EOFError("pipe closed mid-message")
    return pickle.loads(blob)


def _worker_main(memory_limit: int) -> None:
    """Worker loop: (data, config, options) in, ("ok", document) or ("error", DocumentError) out."""
    if memory_limit > 0:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (ImportError, ValueError, OSError):  # no RLIMIT_AS here (Windows; some macOS versions)
            pass
    from edge.vision.pdf import render_pdf

    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else written to stdout (Python or PDFium) goes to the log, not the reply pipe
    sys.stdout = sys.stderr
    while True:
        try:
            job = _read(requests)
        except EOFError:  # the server closed the pipe: stop
            return
        try:
            reply = ("ok", render_pdf(*job))
        except GlmEdgeError as e:
            reply = ("error", e)
        except MemoryError:
            reply = ("error", PdfRenderError(f"rendering needed more than the renderer's memory limit of "
                                             f"{memory_limit} bytes; send smaller or simpler pages"))
        except Exception as e:  # noqa: BLE001 - pypdfium2 raising on a hostile file: report it, keep the worker
            traceback.print_exc()  # into the server's log: a bug of ours shows here with its stack
            reply = ("error", PdfRenderError(f"PDFium could not render this file ({type(e).__name__}: {e}); "
                                             "send an intact PDF"))
        _write(replies, reply)


class PdfRenderer:
    def __init__(self, config: ImageConfig, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_limit: int | None = DEFAULT_MEMORY_LIMIT, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 isolate: bool = True):
        self.config = config
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self.cache_bytes = cache_bytes
        self.isolate = isolate
        self.crashes = 0  # workers lost to a crash or a timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self.jobs = 0  # documents handed to PDFium (cache misses)
        self._documents: OrderedDict[str, tuple[int, dict[int, tuple[float, float]]]] = OrderedDict()
        self._pages: OrderedDict[tuple, RenderedPage] = OrderedDict()
        self._cached_bytes = 0

    def render(self, data: bytes, options: DocumentOptions | None = None) -> RenderedDocument:
        """Render the selected pages of a PDF (see the module contract); options default to DocumentOptions()."""
        options = options or DocumentOptions()
        data = bytes(data)
        validate_options(options, self.config)
        if len(data) > options.max_bytes:
            raise PdfTooLargeError(f"PDF is {len(data)} bytes; the limit is {options.max_bytes}")
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            document = self._from_cache(digest, options)
            if document is None:
                self.jobs += 1
                if self.isolate:
                    document = self._render_in_worker(data, options)
                else:
                    from edge.vision.pdf import render_pdf

                    document = render_pdf(data, self.config, options)
                self._remember(document)
        return document

    def _from_cache(self, digest: str, options: DocumentOptions) -> RenderedDocument | None:
        """The document from cached pages when every selected page is held at the size planned now. The
        plan runs on the page sizes PDFium reported before, so it refuses exactly what the worker would."""
        known = self._documents.get(digest)
        if known is None:
            return None
        count, sizes = known
        numbers = select_pages(count, options)
        if any(n not in sizes for n in numbers):
            return None
        budget, plans = plan_document([(n, *sizes[n]) for n in numbers], self.config, options)
        keys = [(digest, p.number, budget, p.width, p.height) for p in plans]
        if any(k not in self._pages for k in keys):
            return None
        for k in keys:
            self._pages.move_to_end(k)
        self._documents.move_to_end(digest)
        return RenderedDocument(sha256=digest, page_count=count, page_tokens=budget,
                                pages=tuple(self._pages[k] for k in keys))

    def _remember(self, document: RenderedDocument) -> None:
        count, sizes = self._documents.pop(document.sha256, (document.page_count, {}))
        sizes.update({p.number: (p.width_pt, p.height_pt) for p in document.pages})
        self._documents[document.sha256] = (count, sizes)
        while len(self._documents) > MAX_CACHED_DOCUMENTS:
            self._documents.popitem(last=False)
        for p in document.pages:
            key = (document.sha256, p.number, document.page_tokens, p.width, p.height)
            if key not in self._pages and len(p.png) <= self.cache_bytes:
                self._pages[key] = p
                self._cached_bytes += len(p.png)
        while self._cached_bytes > self.cache_bytes:
            _, old = self._pages.popitem(last=False)
            self._cached_bytes -= len(old.png)

    def _render_in_worker(self, data: bytes, options: DocumentOptions) -> RenderedDocument:
        if self._process is None or self._process.poll() is not None:
            self._start()
        process, reply = self._process, []

        def exchange() -> None:  # blocking pipe I/O in a thread, so the wait can time out portably
            try:
                _write(process.stdin, (data, self.config, options))
                reply.append(_read(process.stdout))
            except (EOFError, OSError):  # the worker died: reply stays empty
                pass

        thread = threading.Thread(target=exchange, name="glm-edge-pdf-io", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self._stop(kill=True)
            thread.join()
            self.crashes += 1
            raise PdfRenderError(f"rendering the PDF took longer than {self.timeout_s:g} s and was stopped; "
                                 "send fewer or simpler pages")
        if not reply:  # PDFium crashed on this file (or the memory limit killed the worker)
            code = self._stop(kill=True)
            self.crashes += 1
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise PdfRenderError(f"the PDF renderer crashed on this file ({how}); the file is damaged or "
                                 "malicious: send an intact PDF")
        status, payload = reply[0]
        if status == "error":
            raise payload
        return payload

    @property
    def worker_pid(self) -> int | None:
        """Process id of the running worker, if any (for monitoring)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def start(self) -> None:
        """Start the worker now (a server calls this at load, so no request waits for it)."""
        with self._lock:
            if self.isolate and (self._process is None or self._process.poll() is not None):
                self._start()

    def _start(self) -> None:
        self._stop()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edge.vision.pdf_worker", str(self.memory_limit or 0)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)

    def _stop(self, kill: bool = False) -> int | None:
        """End the worker (killing it if needed); its exit code, negative for a signal."""
        process, self._process = self._process, None
        if process is None:
            return None
        if kill:
            process.kill()
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:  # a broken pipe to a dead worker
                pass
        try:
            return process.wait(timeout=None if kill else 5)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> PdfRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]))
