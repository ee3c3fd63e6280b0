"""One request's generation through the scheduler, as an async stream of runtime events, for every dialect.

    gen = Generation(svc, request, prepare, route="chat_completions", mode="stream")
    first = await gen.first()              # errors before the first event become a normal HTTP error
    async for event in gen.events: ...     # ChatDelta ..., ChatDone (or `done = await gen.final(first)`)

`prepare()` (async) resolves the request's media and returns the job body: `start(cancel)` returning the
runtime's event iterator (the runtime stops that generation when the `cancel` event is set). The stream owns
everything around it, in one place: queueing (429 when full), watching for the client's disconnect, cancelling the job whenever the stream ends early (client gone, error, consumer
stopped), and counting the outcome exactly once (`<route>_total{outcome, mode}`) with the usage metrics.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edge.api.mcp import agent_start
from edge.api.openai import Plan
from edge.api.scheduler import END, ERROR, Job, Scheduler
from edge.api.service import Service
from edge.chat.results import ChatDone
from edge.errors import GlmEdgeError

Prepare = Callable[[], Awaitable[Callable[[threading.Event], Iterator[Any]]]]


def plan_body(svc: Service, plan: Plan) -> Prepare:
    """The Generation body of a planned request (any dialect): media resolved under the server's policy, then
    the runtime's stream, stopped by the job's cancel event; with MCP tools, the agent loop (edge/api/mcp.py),
    which ends on its AgentChatDone (a ChatDone) like any generation."""

    async def prepare():
        messages = await svc.media.resolve(plan.messages, svc.http_client)
        svc.metrics.inc("images_total", svc.media.count(plan.messages))
        if plan.mcp is not None:
            return agent_start(svc, plan, messages)
        runtime = svc.runtime
        return lambda cancel: runtime.stream_chat(messages, tools=plan.tools, enable_thinking=plan.enable_thinking,
                                                  cancel=cancel, **plan.overrides)

    return prepare


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def respond(gen: Generation, stream: bool, events: Callable[[Any], AsyncIterator[bytes]],
                  to_json: Callable[[ChatDone], dict]) -> Response:
    """The HTTP answer of a generation in any dialect: `events(first)` as SSE, or `to_json(final event)`;
    499 when the client left before the first event."""
    try:
        first = await gen.first()
        if stream:
            return StreamingResponse(events(first), media_type="text/event-stream", headers=SSE_HEADERS)
        done = await gen.final(first)
    except Cancelled:
        return Response(status_code=499)
    finally:
        if not stream:
            await gen.aclose()
    return JSONResponse(to_json(done))


class Cancelled(Exception):
    """The generation ended without a result because the client went away."""


class Generation:
    """The stream of one request's events; `queue_seconds` is known once the job started."""

    def __init__(self, svc: Service, request: Request, prepare: Prepare, *, route: str, mode: str):
        self.svc, self.request, self.prepare, self.route, self.mode = svc, request, prepare, route, mode
        self.job: Job | None = None
        self.events = self._events()

    @property
    def queue_seconds(self) -> float:
        return self.job.queue_seconds if self.job is not None else 0.0

    async def first(self) -> Any:
        """The first event; `Cancelled` when the stream ended before one (client gone)."""
        try:
            return await self.events.__anext__()
        except StopAsyncIteration:
            raise Cancelled() from None

    async def final(self, first: Any) -> ChatDone:
        """Drain the stream to its ChatDone; `Cancelled` when it ended without one."""
        event = first
        while not isinstance(event, ChatDone):
            try:
                event = await self.events.__anext__()
            except StopAsyncIteration:
                raise Cancelled() from None
        return event

    async def aclose(self) -> None:
        await self.events.aclose()

    async def _events(self) -> AsyncIterator[Any]:
        svc, outcome, watcher = self.svc, "error", None
        try:
            start = await self.prepare()
            self.job = job = Job(start, asyncio.get_running_loop())
            try:
                svc.scheduler.submit(job)
            except GlmEdgeError:
                outcome = "rejected"
                raise
            watcher = asyncio.create_task(_watch_disconnect(self.request, svc.scheduler, job))
            while True:
                kind, payload = await job.next()
                if kind == ERROR:
                    raise payload
                if kind == END:
                    if outcome != "ok":
                        outcome = "cancelled"
                    return
                if isinstance(payload, ChatDone):
                    outcome = "ok"
                    _account(svc, payload, job)
                yield payload
        except (GeneratorExit, asyncio.CancelledError):
            if outcome != "ok":
                outcome = "cancelled"
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if self.job is not None and outcome != "ok":
                svc.scheduler.cancel(self.job)
            svc.metrics.inc(f"{self.route}_total", outcome=outcome, mode=self.mode)


def _account(svc: Service, done: ChatDone, job: Job) -> None:
    m = svc.metrics
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
