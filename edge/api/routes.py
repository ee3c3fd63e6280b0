"""The routes of the OpenAI-compatible API: chat completions (JSON or SSE), models, health, metrics, the page.

Handlers map a request in and the runtime's events out; the generation itself (queue, cancellation,
counting) is `edge.api.generation.Generation`, shared with the other dialects.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from edge import __version__
from edge.api.gate import error_from_exception
from edge.api.generation import Generation, plan_body, respond
from edge.api.mcp import check_mcp, is_step, steps_json
from edge.api.openai import StreamMapper, completion_json, new_completion_id, plan_request, sse
from edge.api.schemas import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList
from edge.api.service import Service, get_service, ready_service
from edge.chat.agent import step_json
from edge.chat.results import ChatDelta, ChatDone
from edge.errors import ModelNotFoundError

STATIC = Path(__file__).with_name("static")
ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 429, 503)}

router = APIRouter()


def check_model(svc: Service, model: str) -> None:
    if model not in svc.model_ids:
        raise ModelNotFoundError(f"model {model!r} does not exist; this server serves {', '.join(svc.model_ids)} "
                                 "(GET /v1/models)")


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request, svc: Service = Depends(ready_service)):
    check_model(svc, body.model)
    plan = plan_request(body, default_thinking=svc.settings.runtime.thinking)
    check_mcp(svc, plan)

    gen = Generation(svc, request, plan_body(svc, plan), route="chat_completions", mode="stream" if plan.stream else "json")
    completion_id = new_completion_id()
    mapper = StreamMapper(completion_id=completion_id, model=body.model, fingerprint=svc.fingerprint,
                          include_usage=plan.include_usage)

    def to_json(done):
        out = completion_json(done, completion_id=completion_id, model=body.model, created=int(time.time()),
                              fingerprint=svc.fingerprint, queue_seconds=gen.queue_seconds)
        steps = steps_json(done)
        if steps is not None:
            out["choices"][0]["message"]["mcp_steps"] = steps
        return out

    return await respond(gen, plan.stream, lambda first: _sse(gen, mapper, first), to_json)


async def _sse(gen: Generation, mapper: StreamMapper, first):
    try:
        for chunk in mapper.start():
            yield sse(chunk)
        event = first
        while True:
            if isinstance(event, ChatDelta):
                for chunk in mapper.delta(event):
                    yield sse(chunk)
            elif isinstance(event, ChatDone):
                for chunk in mapper.finish(event, gen.queue_seconds):
                    yield sse(chunk)
            elif is_step(event):
                for chunk in mapper.step(step_json(event, image_data=True)):
                    yield sse(chunk)
            try:
                event = await gen.events.__anext__()
            except StopAsyncIteration:
                break
            except Exception as e:  # after the headers went out: an SSE error event, then the end
                yield sse(error_from_exception(e)[1])
                break
        yield sse("[DONE]")
    finally:
        await gen.aclose()


@router.get("/v1/models", response_model=ModelList)
async def list_models(svc: Service = Depends(get_service)):
    extra: dict[str, Any] = {}
    if svc.runtime is not None:
        rt = svc.runtime
        extra["sampling_defaults"] = {k: {"value": getattr(rt.defaults, k), "source": s}
                                      for k, s in rt.default_sources.items()}
    return {"object": "list", "data": [{"id": i, "object": "model", "created": svc.created, "owned_by": "glm-edge",
                                        **extra} for i in svc.model_ids]}


@router.get("/health")
async def health(svc: Service = Depends(get_service)):
    body: dict[str, Any] = {"status": svc.status, "model": svc.settings.model_name, "version": __version__}
    if svc.scheduler is not None:
        body["queue"] = {"waiting": svc.scheduler.depth, "running": svc.scheduler.running,
                         "max_queue": svc.settings.max_queue}
    if svc.load_error:
        body["error"] = svc.load_error
    if svc.mcp_host is not None:
        body["mcp_servers"] = svc.mcp_host.status()  # extension: the servers tools entries may name
    return JSONResponse(body, status_code=200 if svc.status == "ready" else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(svc: Service = Depends(get_service)):
    text = svc.metrics.render(svc.gauges(), svc.runtime_counters())
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


page_router = APIRouter()


@page_router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))
