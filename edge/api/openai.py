"""OpenAI chat-completions semantics on top of the runtime: requests in, chunks and responses out.

`plan_request(request, ...)` turns a validated `ChatCompletionRequest` into a `Plan`: template-ready
messages (media still unresolved), tools, thinking on/off, and `SamplingParams` overrides (including the
grammar for `response_format` and forced tool calls). Decisions (also in README, "API"):
- thinking: `chat_template_kwargs.enable_thinking`, else `thinking.type` (Z.ai), else the server default;
  a constrained request (json_object / json_schema / tool_choice required or named) runs with thinking
  off unless the request turns it on explicitly, in which case the grammar allows the reasoning block first.
- `tool_choice: "none"`: the tools are not rendered into the prompt and generation stops before a
  `<tool_call>`; `"auto"` (default with tools): rendered, calls parsed; `"required"`: one or more calls
  (exactly one with `parallel_tool_calls: false`), enforced by a grammar; a named function: exactly
  one call of it. With `response_format` JSON and tools, the grammar allows either JSON or tool calls.
- `n > 1`, `logprobs`: 400. `top_p: 0` means greedy. `max_completion_tokens` wins over `max_tokens`.
- `{"type": "mcp", "server_label": ...}` tools (servers configured at launch): `Plan.mcp` is set and the plan
  carries no tool grammar, tool list or `<tool_call>` stop; the agent loop builds them (edge/api/mcp.py).
`StreamMapper` / `completion_json` write ChatDelta/ChatDone as OpenAI chunks / a chat.completion with the
extensions `reasoning_content`, `boxes`, `usage.prompt_tokens_details.image_tokens` and `timings`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from edge.api.mcp import McpRequest, mcp_request
from edge.chat.grammar import build_grammar
from edge.errors import GrammarError, RequestError
from edge.chat.parse import Box, ParseIssue, ToolCallDelta
from edge.chat.results import ChatDelta, ChatDone, Timings, Usage
from edge.api.schemas import ChatCompletionRequest


@dataclass
class Plan:
    messages: list[dict]
    tools: list[dict] | None
    enable_thinking: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    mcp: McpRequest | None = None  # MCP tools in play: the server runs the tool loop


def _thinking(req: ChatCompletionRequest) -> bool | None:
    kwargs = req.chat_template_kwargs or {}
    value = kwargs.get("enable_thinking")
    if value is not None:
        if not isinstance(value, bool):
            raise RequestError("chat_template_kwargs.enable_thinking must be true or false",
                               "chat_template_kwargs.enable_thinking")
        return value
    if req.thinking is not None:
        return req.thinking.type == "enabled"
    return None


def _messages(req: ChatCompletionRequest) -> list[dict]:
    out = []
    for msg in req.messages:
        d = msg.model_dump(exclude_none=True, by_alias=True)
        if d["role"] == "developer":
            d["role"] = "system"
        d.pop("name", None)
        if "tool_calls" in d:
            for call in d["tool_calls"]:
                call.pop("id", None)
        out.append(d)
    return out


def _check_tools(tools: list[dict]) -> None:
    seen = set()
    for i, tool in enumerate(tools):
        fn = tool["function"]
        if fn["name"] in seen:
            raise RequestError(f"tools[{i}]: function name {fn['name']!r} is used twice", f"tools[{i}].function.name")
        seen.add(fn["name"])
        params = fn.get("parameters")
        where = f"tools[{i}].function.parameters"
        if params is None:
            continue
        if params.get("type", "object") != "object":
            raise RequestError(f"{where} must be a JSON schema of type object, got type {params.get('type')!r}",
                               where, "invalid_schema")
        props = params.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(v, (dict, bool)) for v in props.values()):
            raise RequestError(f"{where}.properties must map names to schemas", where, "invalid_schema")
        required = params.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise RequestError(f"{where}.required must be a list of property names", where, "invalid_schema")
        missing = [r for r in required if r not in props]
        if missing:
            raise RequestError(f"{where}.required names {missing} that are not in properties", where, "invalid_schema")


def plan_request(req: ChatCompletionRequest, *, default_thinking: bool) -> Plan:
    if req.n is not None and req.n > 1:
        raise RequestError(f"n={req.n}: this server generates one choice per request; send n=1 or omit it "
                           "(send several requests for several samples)", "n", "unsupported_parameter")
    if req.logprobs or req.top_logprobs:
        raise RequestError("logprobs are not supported by this server", "logprobs", "unsupported_parameter")

    tools = [t.model_dump(exclude_none=True) for t in req.tools if t.type == "function"] if req.tools else None
    if tools:
        _check_tools(tools)
    mcp = mcp_request(req)
    choice = req.tool_choice
    named = None
    if choice is None:
        choice = "auto"
    elif not isinstance(choice, str):
        named = choice.function.name if choice.type == "function" else choice.name
        choice = "function"
    if choice in ("required", "function") and not tools and mcp is None:
        raise RequestError(f"tool_choice {'required' if named is None else repr(named)} needs a non-empty tools list",
                           "tool_choice")
    if named is not None and mcp is None and named not in {t["function"]["name"] for t in tools}:
        raise RequestError(f"tool_choice names function {named!r}, which is not among the tools", "tool_choice")

    fmt = req.response_format
    json_mode = fmt is not None and fmt.type == "json_object"
    schema = None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise RequestError("response_format json_schema needs a json_schema object with a schema",
                               "response_format.json_schema")
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {}
    forced = choice in ("required", "function")
    constrained = json_mode or schema is not None or forced
    if constrained and choice == "function" and (json_mode or schema is not None):
        raise RequestError("a named tool_choice and a JSON response_format cannot both be enforced", "tool_choice")
    if mcp is not None and (json_mode or schema is not None):
        raise RequestError("a JSON response_format cannot be combined with mcp tools", "response_format")

    explicit = _thinking(req)
    thinking = explicit if explicit is not None else (False if constrained else default_thinking)

    prompt_tools = tools if choice != "none" else None
    overrides: dict[str, Any] = {}
    try:
        grammar = build_grammar(
            json_schema=schema, json_mode=json_mode,
            tools=prompt_tools if (forced or (constrained and prompt_tools)) else None,
            tool_only=named, tool_forced=forced, parallel_tool_calls=req.parallel_tool_calls is not False,
            think=thinking,
        ) if constrained and mcp is None else None
    except GrammarError as e:
        raise RequestError(str(e), e.param or "response_format", "invalid_schema") from e
    if grammar:
        overrides["grammar"] = grammar

    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in stop) or len(stop) > 16:
        raise RequestError("stop must be up to 16 non-empty strings", "stop")
    if choice == "none" and tools and mcp is None:
        stop.append("<tool_call>")
    if stop:
        overrides["stop"] = tuple(dict.fromkeys(stop))

    for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "seed"):
        value = getattr(req, name)
        if value is not None:
            overrides[name] = value
    if req.top_p == 0:
        overrides.pop("top_p")
        overrides["temperature"] = 0.0
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None:
        overrides["max_tokens"] = max_tokens

    if mcp is not None:
        mcp.extra_tools = tools or []
        mcp.tool_choice = {"name": named} if named is not None and mcp.choice is None else choice
        prompt_tools = None
    return Plan(
        messages=_messages(req), tools=prompt_tools, enable_thinking=thinking, overrides=overrides,
        stream=req.stream, include_usage=bool(req.stream_options and req.stream_options.include_usage), mcp=mcp,
    )


# --- responses --------------------------------------------------------------------------------------


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_json(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "image_tokens": usage.image_tokens,
                                  "video_tokens": usage.video_tokens,
                                  "text_tokens": usage.prompt_tokens - usage.image_tokens - usage.video_tokens},
        "images": usage.images,
        "videos": usage.videos,
        "video_frames": usage.video_frames,
    }


def timings_json(timings: Timings, usage: Usage, queue_seconds: float) -> dict:
    ms = lambda s: round(s * 1000, 3)  # noqa: E731
    decoded = usage.prompt_tokens - usage.cached_tokens - usage.image_tokens - usage.video_tokens
    return {
        "queue_ms": ms(queue_seconds),
        "preprocess_ms": ms(timings.preprocess),
        "vision_ms": ms(timings.vision),
        "prefill_ms": ms(timings.prefill),
        "decode_ms": ms(timings.decode),
        "first_token_ms": ms(timings.first_token),
        "prefill_tokens_per_second": round(timings.prefill_tokens_per_second(max(decoded, 0) + usage.image_tokens + usage.video_tokens), 2),
        "decode_tokens_per_second": round(timings.decode_tokens_per_second(usage.completion_tokens), 2),
    }


def boxes_json(boxes: list[Box]) -> list[dict]:
    return [{"label": b.label, "box_1000": list(b.box_1000), "box_px": list(b.box_px) if b.box_px else None,
             "image_index": b.image_index} for b in boxes]


def issues_json(issues: list[ParseIssue]) -> list[dict]:
    """Extension: output the parser could not use as the format intends (e.g. a malformed tool call)."""
    return [{"kind": i.kind, "message": i.message, "raw": i.raw} for i in issues]


def finish_reason(done: ChatDone) -> str:
    return done.finish_reason if done.finish_reason in ("stop", "length", "tool_calls") else "stop"


def completion_json(done: ChatDone, *, completion_id: str, model: str, created: int, fingerprint: str,
                    queue_seconds: float) -> dict:
    out = done.output
    message: dict[str, Any] = {"role": "assistant", "content": out.content or (None if out.tool_calls else "")}
    if out.reasoning:
        message["reasoning_content"] = out.reasoning
    if out.tool_calls:
        message["tool_calls"] = [c.to_openai() for c in out.tool_calls]
    if out.boxes:
        message["boxes"] = boxes_json(out.boxes)
    if out.errors:
        message["parse_errors"] = issues_json(out.errors)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(done), "logprobs": None}],
        "usage": usage_json(done.usage),
        "timings": timings_json(done.timings, done.usage, queue_seconds),
    }


def _tool_delta(d: ToolCallDelta) -> dict:
    if d.id is not None:
        return {"index": d.index, "id": d.id, "type": "function", "function": {"name": d.name, "arguments": d.arguments}}
    return {"index": d.index, "function": {"arguments": d.arguments}}


class StreamMapper:
    """Events of one generation -> `chat.completion.chunk` dicts, in OpenAI's order."""

    def __init__(self, *, completion_id: str, model: str, fingerprint: str, include_usage: bool):
        self.id = completion_id
        self.model = model
        self.created = int(time.time())
        self.fingerprint = fingerprint
        self.include_usage = include_usage

    def _chunk(self, delta: dict, finish: str | None = None, **extra) -> dict:
        chunk = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        chunk.update(extra)
        return chunk

    def start(self) -> list[dict]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def delta(self, event: ChatDelta) -> list[dict]:
        chunks = []
        if event.reasoning:
            chunks.append(self._chunk({"reasoning_content": event.reasoning}))
        if event.content:
            chunks.append(self._chunk({"content": event.content}))
        for call in event.tool_calls:
            chunks.append(self._chunk({"tool_calls": [_tool_delta(call)]}))
        return chunks

    def step(self, step: dict) -> list[dict]:
        """One MCP tool-loop step (edge.api.mcp), as the extension `delta.mcp_steps`."""
        return [self._chunk({"mcp_steps": [step]})]

    def finish(self, done: ChatDone, queue_seconds: float) -> list[dict]:
        delta: dict[str, Any] = {}
        if done.output.boxes:
            delta["boxes"] = boxes_json(done.output.boxes)
        if done.output.errors:
            delta["parse_errors"] = issues_json(done.output.errors)
        timings = timings_json(done.timings, done.usage, queue_seconds)
        chunks = [self._chunk(delta, finish_reason(done), timings=timings)]
        if self.include_usage:
            chunks.append({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, "choices": [], "usage": usage_json(done.usage),
                "timings": timings,
            })
        return chunks


def sse(data: dict | str) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {body}\n\n".encode()
