"""HTTP plumbing of the server that is not about chat: OpenAI-shaped errors and the request gate.

- `error_from_exception(e)` -> (status, {"error": {"message", "type", "param", "code"}}) for any
  `edge.errors.GlmEdgeError` (its `http_status`, `code` and `param`) and, as a 500, anything else;
  `anthropic_error_body(status, message)`: Anthropic's `{"type": "error", "error": {"type", "message"}}`.
- `validation_message(exc)`: one readable line and an OpenAI-style `param` path for pydantic's errors.
- `Gate`: pure ASGI middleware for API-key checks, the body-size limit and request counting.
"""

from __future__ import annotations

import hmac
import json

from fastapi.exceptions import RequestValidationError

from edge.errors import ContextOverflowError, GlmEdgeError, ImageError, MediaAccessError
from edge.api.metrics import Metrics


# --- errors ------------------------------------------------------------------------------------------


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _error_type(status), "param": param, "code": code}}


# Anthropic's error shape, for the routes of its Messages API (edge.api.anthropic).
ANTHROPIC_PATHS = ("/v1/messages",)
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error"}


def anthropic_error_body(status: int, message: str) -> dict:
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _param_for(error: GlmEdgeError) -> str | None:
    if error.param:
        return error.param
    if isinstance(error, (ImageError, MediaAccessError, ContextOverflowError)):
        return "messages"
    return None


def error_from_exception(error: BaseException) -> tuple[int, dict]:
    if isinstance(error, GlmEdgeError):
        status = error.http_status
        return status, error_body(status, str(error), error.code, _param_for(error))
    return 500, error_body(500, f"internal error ({type(error).__name__}); see the server log", "internal_error")


def _clean_loc(loc) -> str:
    """pydantic's error location as an OpenAI param path (`messages[0].content[1].image_url.detail`), without
    the union-member tags pydantic inserts."""
    parts, drop_tag = [], False
    for p in loc:
        if p == "body":
            continue
        if isinstance(p, int):
            parts.append(f"[{p}]")
            continue
        if drop_tag:  # the discriminator value that follows a tagged-union list index
            drop_tag = False
            continue
        if "[" in p or p in ("str", "int", "float", "bool", "none") or p[:1].isupper() or p.startswith("function-"):
            drop_tag = "tagged-union" in p
            continue
        parts.append(("." if parts else "") + p)
    return "".join(parts)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    # the most specific problem: union alternatives that failed on their type are less useful
    first = max(errors, key=lambda e: (len(e.get("loc", ())), e.get("type") not in ("string_type", "list_type")))
    param = _clean_loc(first.get("loc", ())) or None
    where = f" at {param}" if param else ""
    return f"invalid request{where}: {first.get('msg')}", param


# --- middleware --------------------------------------------------------------------------------------


class Gate:
    """Pure ASGI middleware in front of every route: API key, body size limit, request counting.

    - With an API key, /v1/* and /metrics need `Authorization: Bearer <key>` or `x-api-key: <key>` (401
      otherwise, checked before the body is read; in Anthropic's error shape on /v1/messages); /health and
      the page stay open (the page asks for the key and sends it).
    - Bodies over `max_bytes` (declared or streamed) get 413 before the app reads them.
    - `glm_edge_http_requests_total{route,status}` counts every response.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics: Metrics):
        self.app = app
        self.api_key = api_key
        self.max_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status_seen = {}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, counting_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or ("unmatched" if status_seen.get("status") == 404 else "other")
            self.metrics.inc("http_requests_total", route=route, status=status_seen.get("status", 0))

    async def _handle(self, scope, receive, send):
        path = scope.get("path", "")
        key = self.api_key
        if key and scope.get("method") != "OPTIONS" and (path.startswith("/v1/") or path == "/metrics"):
            headers = dict(scope.get("headers") or [])
            scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":  # Anthropic clients send the key as x-api-key
                token = headers.get(b"x-api-key", b"").decode("latin-1")
            if not token or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return await self._reply(send, 401, "missing or incorrect API key (send Authorization: Bearer <key> "
                                         "or x-api-key: <key>)", "invalid_api_key", [(b"www-authenticate", b"Bearer")],
                                         path)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send, int(declared), path)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(send, size, path)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send, size: int, path: str):
        await self._reply(send, 413, f"request body is {size} bytes or more; the limit is {self.max_bytes} "
                          "(--max-body-mb)", "request_too_large", [(b"connection", b"close")], path)

    @staticmethod
    async def _reply(send, status: int, message: str, code: str, headers: list, path: str):
        body = anthropic_error_body(status, message) if path.startswith(ANTHROPIC_PATHS) else error_body(status, message, code)
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), *headers]})
        await send({"type": "http.response.body", "body": payload})
