"""Routes of the other API dialects: `POST /v1/responses` (OpenAI Responses) and `POST /v1/messages` (Anthropic).

`dialects_router` holds both (the app includes it). Each route validates its own request model, maps it onto
the chat-completions plan (`edge.api.responses`, `edge.api.anthropic`), runs it as an
`edge.api.generation.Generation` (the same queue, cancellation and counting as chat completions; counters
`glm_edge_responses_total` / `glm_edge_messages_total`) and maps the events out, as JSON or as SSE with
named events. Errors before the first token are plain HTTP errors in the dialect's own shape: OpenAI's for
/v1/responses, Anthropic's for /v1/messages (`route_class` answers the errors of a dialect's routes,
validation included, with field paths of that dialect's body); errors after the first token are the
dialect's `error` event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge.api import anthropic, responses
from edge.api.anthropic_schemas import AnthropicError, MessagesRequest
from edge.api.fields import validation_error
from edge.api.gate import anthropic_error_body, error_body, error_from_exception
from edge.api.generation import Generation, plan_body, respond
from edge.api.mcp import check_mcp
from edge.api.openai import Plan
from edge.api.responses_schemas import ResponsesRequest
from edge.api.routes import ERRORS, check_model
from edge.api.service import Service, ready_service
from edge.api.token_facts import detokenizer
from edge.chat.results import ChatDone
from edge.errors import GlmEdgeError, InputError

log = logging.getLogger(__name__)


def route_class(render: Callable[[Exception], Response | None]) -> type[APIRoute]:
    """An APIRoute whose errors (validation and dependencies included) `render` answers; None re-raises."""

    class Route(APIRoute):
        def get_route_handler(self) -> Callable:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as e:
                    response = render(e)
                    if response is None:
                        raise
                    return response

            return route

    return Route


def named_sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def _run(svc: Service, request: Request, plan: Plan, route: str, mapper: Any,
               to_json: Callable[[ChatDone], dict], on_error: Callable[[BaseException], list[dict]]) -> Response:
    """Generate `plan`: a named-event SSE stream through `mapper`, or `to_json(done)`; 499 when the client left."""
    gen = Generation(svc, request, plan_body(svc, plan), route=route, mode="stream" if plan.stream else "json")
    return await respond(gen, plan.stream, lambda first: _sse(gen, mapper, first, on_error), to_json)


async def _sse(gen: Generation, mapper: Any, first: Any, on_error: Callable[[BaseException], list[dict]]
               ) -> AsyncIterator[bytes]:
    try:
        for event in mapper.start():
            yield named_sse(event)
        item = first
        while True:
            for event in mapper.finish(item) if isinstance(item, ChatDone) else mapper.delta(item):
                yield named_sse(event)
            try:
                item = await gen.events.__anext__()
            except StopAsyncIteration:
                break
            except Exception as e:  # after the headers went out: the dialect's error event, then the end
                if not isinstance(e, GlmEdgeError):
                    log.error("generation failed mid-stream", exc_info=e)
                for event in on_error(e):
                    yield named_sse(event)
                break
    finally:
        await gen.aclose()


# --- /v1/responses ----------------------------------------------------------------------------------


def _input_param(error: GlmEdgeError) -> None:
    """Bad input found before the first token is about the messages (media, template, context): `input` here."""
    param = getattr(error, "param", None)
    if isinstance(error, InputError) and (param is None or param.startswith("messages")):
        error.param = "input"


def _openai_validation(error: Exception) -> Response | None:
    """Validation errors with the Responses field path; everything else goes to the app's OpenAI-shaped handlers."""
    if not isinstance(error, RequestValidationError):
        return None
    message, param = validation_error(error)
    return JSONResponse(error_body(400, message, "invalid_request_error", param), status_code=400)


responses_router = APIRouter(route_class=route_class(_openai_validation))


@responses_router.post("/v1/responses", responses=ERRORS)
async def create_response(body: ResponsesRequest, request: Request, svc: Service = Depends(ready_service)):
    check_model(svc, body.model)
    plan = responses.plan_responses(body, default_thinking=svc.settings.runtime.thinking)
    check_mcp(svc, plan)
    base = responses.shell(body, response_id=responses.new_id("resp"), model=body.model)
    summary = bool(body.reasoning and body.reasoning.summary)
    detok = detokenizer(svc.runtime)
    mapper = responses.ResponsesStream(base, detok, summary, plan.mcp.tools if plan.mcp else None)
    try:
        return await _run(svc, request, plan, "responses", mapper,
                          lambda done: responses.response_json(done, base, detok, summary),
                          lambda e: mapper.error(*error_from_exception(e)))
    except InputError as e:
        _input_param(e)
        raise


# --- /v1/messages -----------------------------------------------------------------------------------


def anthropic_error(error: BaseException) -> tuple[int, dict]:
    """Any error of a Messages route as (status, Anthropic error body); the field is named in the message."""
    if isinstance(error, RequestValidationError):
        message, _ = validation_error(error)
        return 400, anthropic_error_body(400, message)
    if isinstance(error, StarletteHTTPException):
        message = str(error.detail)
        if error.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be parsed as JSON (malformed, or nested too deeply)"
        return error.status_code, anthropic_error_body(error.status_code, message)
    if isinstance(error, RecursionError):
        return 400, anthropic_error_body(400, "the request body is nested too deeply")
    if not isinstance(error, GlmEdgeError):
        log.error("unhandled error on /v1/messages", exc_info=error)
    status, body = error_from_exception(error)
    message, param = body["error"]["message"], body["error"]["param"]
    if param and param not in message:
        message = f"{param}: {message}"
    return status, anthropic_error_body(status, message)


def _anthropic_response(error: Exception) -> Response:
    status, body = anthropic_error(error)
    return JSONResponse(body, status_code=status, headers=getattr(error, "headers", None))


messages_router = APIRouter(route_class=route_class(_anthropic_response))


@messages_router.post("/v1/messages", responses={s: {"model": AnthropicError} for s in ERRORS})
async def create_message(body: MessagesRequest, request: Request, svc: Service = Depends(ready_service)):
    check_model(svc, body.model)
    plan = anthropic.plan_messages(body, default_thinking=svc.settings.runtime.thinking)
    message_id, stops, detok = anthropic.new_message_id(), tuple(body.stop_sequences or ()), detokenizer(svc.runtime)
    mapper = anthropic.MessagesStream(message_id=message_id, model=body.model, stops=stops, detok=detok)
    return await _run(svc, request, plan, "messages", mapper,
                      lambda done: anthropic.message_json(done, message_id=message_id, model=body.model, stops=stops,
                                                          detok=detok),
                      lambda e: [anthropic_error(e)[1]])


dialects_router = APIRouter()
dialects_router.include_router(responses_router)
dialects_router.include_router(messages_router)
