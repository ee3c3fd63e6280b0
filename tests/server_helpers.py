"""Helpers for the server tests: real uvicorn servers on 127.0.0.1 (in a thread or a subprocess), a scripted
engine (test double of `edge.engine.generate.Engine`), SSE parsing and image data URLs."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from edge.options import RuntimeOptions

ROOT = Path(__file__).resolve().parents[1]
MODEL = "glm-4.6v-flash"
# Exact, deterministic runtime options for servers whose outputs are compared with a reference.
EXACT = dict(device="cpu", kv_type="f32", flash_attn="off", threads=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def wait_ready(base: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{base} not ready after {timeout} s")


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, wait: bool = True):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.wait = wait

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        if self.wait:
            wait_ready(self.base)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)

    @property
    def service(self):
        return self.app.state.service


@contextmanager
def subprocess_server(bundle: Path, *args: str, log_path: Path | None = None):
    """`python -m edge.cli serve BUNDLE --port P ...` as a child process; yields (base_url, Popen)."""
    port = free_port()
    cmd = [sys.executable, "-m", "edge.cli", "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--quiet", *args]
    log = open(log_path or os.devnull, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, 90, proc)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def sse_events(response: httpx.Response) -> list:
    """Parsed `data:` payloads of an SSE response (`[DONE]` kept as the string)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# --- the scripted engine ----------------------------------------------------------------------------


class ScriptedEngine:
    """An engine double (`edge.engine.generate.Engine`'s acquire -> lease.run): the lease records the prompt
    chunks and yields the ids of scripted text pieces.

    `script` is a list of pieces (an exception instance in it is raised there), or a callable(params) -> list
    (to vary per request). `delay` seconds pass before each piece; `gate` (a threading.Event) if given must be
    set before the first piece; `log` records (max_tokens, "start"/"closed"/"done") per generation. The
    runtime builds it through `engine_factory`, which hands it the decoder (for tokenising the pieces).
    """

    def __init__(self, script, reason: str = "stop", delay: float = 0.0, gate: threading.Event | None = None):
        self.script = script
        self.reason = reason
        self.delay = delay
        self.gate = gate
        self.log: list[tuple] = []
        self.prefills = 0
        self.last_entries: list = []
        self.last_params = None
        self.decoder = None
        self.busy_slots = 0

    def factory(self, decoder, stop_ids):
        self.decoder = decoder
        return self

    @property
    def stats(self):
        from edge.engine.generate import EngineStats

        return EngineStats()

    def acquire(self, chunks, reuse=True):
        from edge.engine.generate import PrefillPlan
        from edge.engine.kv import Reuse

        return ScriptedLease(self, PrefillPlan(tuple(chunks), Reuse(0, 0), sum(c.n_tokens for c in chunks), 0))

    def close(self):
        pass


class ScriptedLease:
    def __init__(self, engine: ScriptedEngine, plan):
        self.engine, self.plan = engine, plan

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def run(self, embeddings, params, finish, cancel=None):
        engine = self.engine
        engine.prefills += 1
        engine.last_entries = list(self.plan.chunks)
        engine.last_params = params
        pieces = engine.script(params) if callable(engine.script) else engine.script
        engine.log.append((params.max_tokens, "start"))
        finished = False
        try:
            if engine.gate is not None:
                while not engine.gate.wait(0.01):
                    pass
            for piece in pieces:
                if engine.delay:
                    time.sleep(engine.delay)
                if len(finish.tokens) >= params.max_tokens:
                    finish.reason = "length"
                    finished = True
                    return
                if isinstance(piece, BaseException):
                    raise piece
                for token in engine.decoder.tokenize(piece):
                    finish.tokens.append(token)
                    yield token
            finish.reason = engine.reason
            finished = True
        finally:
            engine.log.append((params.max_tokens, "done" if finished else "closed"))


def scripted_app(bundle: Path, engine: ScriptedEngine, runtime: RuntimeOptions | None = None, **settings):
    """An app whose runtime is the real tiny bundle with `engine` in place of the llama.cpp engine."""
    from edge.runtime import Runtime
    from edge.api.app import create_app
    from edge.api.service import ServerSettings

    options = (runtime or RuntimeOptions()).with_(**EXACT)

    def factory(s):
        return Runtime.load(s.bundle, s.runtime, engine_factory=engine.factory)

    return create_app(ServerSettings(bundle=bundle, runtime=options, **settings), factory)


def prompt_text(runtime, entries) -> str:
    """The text of the prompt's text chunks (images as <|image|>), detokenised with special tokens."""
    out = []
    for e in entries:
        if e.is_media:
            out.append("<|image|>")
        else:
            out.append(b"".join(runtime.decoder.token_bytes(t) for t in e.tokens).decode("utf-8", "replace"))
    return "".join(out)


def long_script(params):
    """A script of 5000 pieces for max_tokens=5000 requests (to cancel mid-stream), else one piece."""
    return ["x"] * 5000 if params.max_tokens == 5000 else ["short"]


def wait_for(predicate, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@contextmanager
def mcp_http_server(script: str | Path, env: dict):
    """An MCP server script serving streamable HTTP on a free loopback port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), "http", str(port)], env={**env, "PATH": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, "the MCP HTTP server exited"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)
