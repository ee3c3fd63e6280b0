"""The local OpenAI-compatible HTTP API: `create_app(settings, runtime_factory)` builds a FastAPI app.

Routes (edge/api/routes.py): POST /v1/chat/completions (JSON or SSE), GET /v1/models, GET /health, GET /metrics,
GET / (chat page). The runtime is loaded in the app's lifespan, in a background thread (so /health can answer
"loading"), by `runtime_factory(settings)`; routes reach it through dependencies (`get_service`), never through
module state, and tests pass their own factory. With `--mcp-config` the MCP host starts in that same load
(`Service.load`) and closes at the lifespan's end (`Service.close`). Generation is serialised by `edge.api.scheduler` (FIFO,
bounded, 429 when full, cancelled when the client disconnects). Every error leaves in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`; bad input is never a 5xx.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge import __version__
from edge.api.gate import Gate, error_body, error_from_exception, validation_message
from edge.api.routes import page_router, router
from edge.api.service import RuntimeFactory, ServerSettings, Service, load_runtime
from edge.errors import GlmEdgeError

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, runtime_factory: RuntimeFactory | None = None) -> FastAPI:
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
    _add_error_handlers(app)
    app.include_router(router)
    from edge.api.dialects import dialects_router  # POST /v1/responses (OpenAI) and /v1/messages (Anthropic)

    app.include_router(dialects_router)
    if settings.serve_page:
        app.include_router(page_router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    def reply(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(GlmEdgeError)
    async def _edge_error(request: Request, exc: GlmEdgeError):
        return reply(*error_from_exception(exc), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return reply(400, error_body(400, message, "invalid_request_error", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {400: "invalid_request_error", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be parsed as JSON (malformed, or nested too deeply)"
        return reply(exc.status_code, error_body(exc.status_code, message, code), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return reply(*error_from_exception(exc))

    @app.exception_handler(RecursionError)
    async def _recursion(request: Request, exc: RecursionError):
        return reply(400, error_body(400, "the request body is nested too deeply", "invalid_request_error"))
