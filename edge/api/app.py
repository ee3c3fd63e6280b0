"""The local OpenAI-compatible HTTP API: `create_app(settings, runtime_factory)` builds a FastAPI app.

Routes: POST /v1/chat/completions (JSON or SSE), GET /v1/models, GET /health, GET /metrics, GET / (chat page).
The runtime is loaded in the app's lifespan, in a background thread (so /health can answer "loading"),
by `runtime_factory(settings)`; routes reach it through dependencies (`get_service`), never through module
state, and tests pass their own factory. Generation is serialised by `edge.api.scheduler` (FIFO, bounded,
429 when full, cancelled when the client disconnects). Every error leaves in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`; bad input is never a 5xx.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge import __version__
from edge.errors import GlmEdgeError, InputError
from edge.api.gate import ApiError, Gate, error_body, error_from_exception, validation_message
from edge.media import MediaPolicy
from edge.api.metrics import Metrics
from edge.api.openai import (
    StreamMapper, completion_json, new_completion_id, plan_request, sse,
)
from edge.chat.results import ChatDelta, ChatDone
from edge.api.scheduler import END, ERROR, Job, Scheduler
from edge.api.schemas import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")


@dataclass(frozen=True)
class ServerSettings:
    bundle: Path | None = None
    model_name: str = "glm-4.6v-flash"
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    media_dir: Path | None = None
    allow_remote_media: bool = False
    remote_timeout: float = 10.0
    max_images: int = 16
    max_image_bytes: int = 20 << 20
    max_body_bytes: int = 64 << 20
    max_queue: int = 16
    enable_thinking: bool = True
    serve_page: bool = True
    # runtime (edge.runtime.Runtime.load)
    device: str = "auto"
    ctx_size: int = 8192
    threads: int | None = None
    n_batch: int = 512
    n_ubatch: int = 512
    kv_type: str = "f16"
    flash_attn: str = "auto"
    vision_dtype: str | None = None
    projector: str = "auto"
    verify: str = "auto"
    extra: dict = field(default_factory=dict)

    @property
    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(media_dir=self.media_dir, allow_remote=self.allow_remote_media, max_images=self.max_images,
                           max_image_bytes=self.max_image_bytes, remote_timeout=self.remote_timeout)


def default_threads() -> int:
    """CPU threads for llama.cpp/onnxruntime under the server: all cores but one. The HTTP event loop needs a
    core too; ggml's threads spin at barriers, and when one is descheduled a decode can slow down a
    hundredfold (measured on 2 cores: ~4 tokens/s instead of ~2000 with the tiny model)."""
    return max(1, (os.cpu_count() or 2) - 1)


def load_runtime(settings: ServerSettings):
    """The default runtime factory: `Runtime.load` with the settings' runtime options."""
    from edge.runtime import Runtime

    if settings.bundle is None:
        raise InputError("no bundle path given")
    return Runtime.load(settings.bundle, device=settings.device, vision_dtype=settings.vision_dtype,
                        n_ctx=settings.ctx_size, n_batch=settings.n_batch, n_ubatch=settings.n_ubatch,
                        threads=settings.threads or default_threads(), kv_type=settings.kv_type, flash_attn=settings.flash_attn,
                        verify=settings.verify, enable_thinking=settings.enable_thinking, projector=settings.projector)


# --- the service behind the routes ---------------------------------------------------------------------


class Service:
    """Per-app state: settings, runtime (once loaded), scheduler, metrics."""

    def __init__(self, settings: ServerSettings, runtime_factory: Callable[[ServerSettings], Any]):
        self.settings = settings
        self.runtime_factory = runtime_factory
        self.metrics = Metrics()
        self.media = settings.media_policy
        self.status = "loading"
        self.load_error: str | None = None
        self.runtime = None
        self.scheduler: Scheduler | None = None
        self.http_client = None
        self.loaded = threading.Event()
        self.created = int(time.time())
        self.fingerprint = f"glm-edge-{__version__}"

    def load(self) -> None:
        started = time.perf_counter()
        try:
            runtime = self.runtime_factory(self.settings)
        except Exception as e:  # reported by /health and every request; the CLI exits on it
            log.error("model failed to load: %s", e, exc_info=not isinstance(e, GlmEdgeError))
            self.load_error = str(e)
            self.status = "failed"
            self.loaded.set()
            return
        self.runtime = runtime
        manifest = getattr(getattr(runtime, "bundle", None), "manifest", None) or {}
        digest = (manifest.get("decoder") or {}).get("sha256", "")[:12]
        if digest:
            self.fingerprint = f"glm-edge-{__version__}-{digest}"
        self.scheduler = Scheduler(runtime, self.settings.max_queue, on_finish=self._finished)
        self.status = "ready"
        self.loaded.set()
        log.info("model ready in %.1f s", time.perf_counter() - started)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.runtime is not None and hasattr(self.runtime, "close"):
            self.runtime.close()
        self.runtime = None

    def _finished(self, job: Job) -> None:
        if job.started is not None and job.finished is not None:
            self.metrics.observe("total", job.finished - job.created)

    @property
    def model_ids(self) -> list[str]:
        ids = [self.settings.model_name]
        if self.settings.bundle is not None and Path(self.settings.bundle).name not in ids:
            ids.append(Path(self.settings.bundle).name)
        return ids

    def gauges(self) -> dict[str, float]:
        sched = self.scheduler
        return {
            "queue_depth": sched.depth if sched else 0,
            "generation_running": sched.running if sched else 0,
            "model_loaded": 1 if self.status == "ready" else 0,
        }

    def runtime_counters(self) -> dict[str, float]:
        rt = self.runtime
        stats = getattr(rt, "stats", None)
        if stats is None:
            return {}
        cache = getattr(rt, "image_cache", None)
        return {
            "runtime_images_encoded_total": stats.images_encoded,
            "runtime_image_cache_hits_total": stats.image_cache_hits,
            "runtime_kv_cached_prompt_tokens_total": stats.cached_prompt_tokens,
            "runtime_image_cache_bytes": getattr(cache, "bytes", 0),
        }


def get_service(request: Request) -> Service:
    return request.app.state.service


def ready_service(service: Service = Depends(get_service)) -> Service:
    if service.status == "loading":
        raise ApiError(503, "the model is still loading; retry shortly (GET /health says when it is ready)",
                       "model_loading", headers={"Retry-After": "2"})
    if service.status == "failed":
        raise ApiError(503, f"the model failed to load: {service.load_error}", "model_load_failed")
    return service


# --- the app -----------------------------------------------------------------------------------------


def create_app(settings: ServerSettings, runtime_factory: Callable[[ServerSettings], Any] | None = None) -> FastAPI:
    service = Service(settings, runtime_factory or load_runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=service.load, name="glm-edge-load", daemon=True)
        loader.start()
        if settings.allow_remote_media:
            import httpx

            service.http_client = httpx.AsyncClient(follow_redirects=True, max_redirects=3)
        try:
            yield
        finally:
            await asyncio.to_thread(loader.join)
            if service.http_client is not None:
                await service.http_client.aclose()
            await asyncio.to_thread(service.close)

    app = FastAPI(title="glm-edge", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible local API for GLM-4.6V-Flash (see README, API).")
    app.state.service = service
    app.add_middleware(Gate, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes, metrics=service.metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])

    def error_response(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        status, body = error_from_exception(exc)
        return error_response(status, body, exc.headers)

    @app.exception_handler(GlmEdgeError)
    async def _edge_error(request: Request, exc: GlmEdgeError):
        status, body = error_from_exception(exc)
        return error_response(status, body)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return error_response(400, error_body(400, message, "invalid_request_error", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {400: "invalid_request_error", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be parsed as JSON (malformed, or nested too deeply)"
        return error_response(exc.status_code, error_body(exc.status_code, message, code),
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        status, body = error_from_exception(exc)
        return error_response(status, body)

    @app.exception_handler(RecursionError)
    async def _recursion(request: Request, exc: RecursionError):
        return error_response(400, error_body(400, "the request body is nested too deeply", "invalid_request_error"))

    errors = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 429, 503)}

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=errors)
    async def chat_completions(body: ChatCompletionRequest, request: Request,
                               svc: Service = Depends(ready_service)):
        if body.model not in svc.model_ids:
            raise ApiError(404, f"model {body.model!r} does not exist; this server serves {', '.join(svc.model_ids)} "
                           "(GET /v1/models)", "model_not_found", "model")
        plan = plan_request(body, default_thinking=svc.settings.enable_thinking)
        try:
            messages = await svc.media.resolve(plan.messages, svc.http_client)
        except GlmEdgeError:
            svc.metrics.inc("chat_completions_total", outcome="error", mode="stream" if plan.stream else "json")
            raise
        svc.metrics.inc("images_total", svc.media.count(plan.messages))
        runtime = svc.runtime

        def run():
            return runtime.stream_chat(messages, tools=plan.tools, enable_thinking=plan.enable_thinking, **plan.overrides)

        job = Job(run, asyncio.get_running_loop())
        mode = "stream" if plan.stream else "json"
        try:
            svc.scheduler.submit(job)
        except GlmEdgeError:
            svc.metrics.inc("chat_completions_total", outcome="rejected", mode=mode)
            raise
        watcher = asyncio.create_task(_watch_disconnect(request, svc.scheduler, job))
        completion_id = new_completion_id()
        try:
            kind, payload = await job.next()
            if kind == ERROR:
                raise payload
            if kind == END:  # cancelled before anything came out (client gone)
                svc.metrics.inc("chat_completions_total", outcome="cancelled", mode=mode)
                return Response(status_code=499)
        except BaseException:
            watcher.cancel()
            svc.scheduler.cancel(job)
            if job.outcome != "cancelled":
                svc.metrics.inc("chat_completions_total", outcome="error", mode=mode)
            raise

        if plan.stream:
            mapper = StreamMapper(completion_id=completion_id, model=body.model, fingerprint=svc.fingerprint,
                                  include_usage=plan.include_usage)
            stream = _sse_stream(svc, job, mapper, payload, watcher)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            event = payload
            while not isinstance(event, ChatDone):
                kind, event = await job.next()
                if kind == ERROR:
                    raise event
                if kind == END:
                    svc.metrics.inc("chat_completions_total", outcome="cancelled", mode=mode)
                    return Response(status_code=499)
        except BaseException:
            svc.scheduler.cancel(job)
            if job.outcome != "cancelled":
                svc.metrics.inc("chat_completions_total", outcome="error", mode=mode)
            raise
        finally:
            watcher.cancel()
        _account(svc, event, job, mode)
        return JSONResponse(completion_json(event, completion_id=completion_id, model=body.model, created=int(time.time()),
                                            fingerprint=svc.fingerprint, queue_seconds=job.queue_seconds))

    @app.get("/v1/models", response_model=ModelList)
    async def list_models(svc: Service = Depends(get_service)):
        return {"object": "list", "data": [{"id": i, "object": "model", "created": svc.created, "owned_by": "glm-edge"}
                                           for i in svc.model_ids]}

    @app.get("/health")
    async def health(svc: Service = Depends(get_service)):
        body: dict[str, Any] = {"status": svc.status, "model": svc.settings.model_name, "version": __version__}
        if svc.scheduler is not None:
            body["queue"] = {"waiting": svc.scheduler.depth, "running": svc.scheduler.running,
                             "max_queue": svc.settings.max_queue}
        if svc.load_error:
            body["error"] = svc.load_error
        return JSONResponse(body, status_code=200 if svc.status == "ready" else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(svc: Service = Depends(get_service)):
        text = svc.metrics.render(svc.gauges(), svc.runtime_counters())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    if settings.serve_page:
        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page():
            return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


    return app


def _account(svc: Service, done: ChatDone, job: Job, mode: str) -> None:
    m = svc.metrics
    m.inc("chat_completions_total", outcome="ok", mode=mode)
    u, t = done.usage, done.timings
    m.inc("prompt_tokens_total", u.prompt_tokens)
    m.inc("image_tokens_total", u.image_tokens)
    m.inc("cached_tokens_total", u.cached_tokens)
    m.inc("completion_tokens_total", u.completion_tokens)
    m.observe("queue", job.queue_seconds)
    for stage in ("preprocess", "vision", "prefill", "decode", "first_token"):
        m.observe(stage, getattr(t, stage))


async def _watch_disconnect(request: Request, scheduler: Scheduler, job: Job) -> None:
    """Cancel the job when the client disconnects (the body has been read: the next message is the end)."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                scheduler.cancel(job)
                return
    except (asyncio.CancelledError, RuntimeError, OSError):
        return


async def _sse_stream(svc: Service, job: Job, mapper: StreamMapper, first, watcher: asyncio.Task):
    mode = "stream"
    finished = False
    try:
        for chunk in mapper.start():
            yield sse(chunk)
        kind, event = "event", first
        while True:
            if kind == END:
                break
            if kind == ERROR:
                status, body = error_from_exception(event)
                yield sse(body)
                svc.metrics.inc("chat_completions_total", outcome="error", mode=mode)
                finished = True
                break
            if isinstance(event, ChatDelta):
                for chunk in mapper.delta(event):
                    yield sse(chunk)
            elif isinstance(event, ChatDone):
                for chunk in mapper.finish(event, job.queue_seconds):
                    yield sse(chunk)
                _account(svc, event, job, mode)
                finished = True
            kind, event = await job.next()
        yield sse("[DONE]")
    finally:
        watcher.cancel()
        if not finished:
            svc.scheduler.cancel(job)
            svc.metrics.inc("chat_completions_total", outcome="cancelled", mode=mode)
