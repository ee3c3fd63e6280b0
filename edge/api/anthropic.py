"""The Anthropic Messages API over the chat-completions machinery: requests in, messages and events out.

`plan_messages(request, default_thinking=...)` maps a validated `MessagesRequest` onto the one internal
request model, a `ChatCompletionRequest`, and plans it with `edge.api.openai.plan_request` (same sampling,
tools, grammars and thinking rules as /v1/chat/completions). Mapping:
- `system` -> a first system message; user `text`/`image` blocks -> text / image_url parts (base64 -> a
  data: URL; `url` sources go through the server's media policy like any image URL); `tool_result` blocks
  -> tool messages (they must open their user message and name an earlier `tool_use` id, as Anthropic
  requires; images allowed; `is_error` is accepted and not rendered: the model's template has no slot for
  it); assistant `thinking` / `text` / `tool_use` blocks -> reasoning_content / content / tool_calls.
- A final assistant message (prefill) is refused: the model's template always opens a new assistant turn.
- `thinking` enabled or adaptive / disabled -> thinking on / off (`budget_tokens` is accepted; `max_tokens`
  bounds thinking and text together); absent -> the server default (off for forced tool use and structured
  output, as in chat completions). `output_config.format` (json_schema) -> `response_format` json_schema.
- `tool_choice` auto/any/tool/none -> auto/required/named/none; `disable_parallel_tool_use` -> one call.
- `stop_sequences` -> stop (up to 16); `max_tokens`, `temperature`, `top_p`, `top_k` as they are.
Out: `message_json(done, ...)` is the `message` object (blocks `thinking` (empty signature), `text`,
`tool_use` with `toolu_` ids; `stop_reason` end_turn / max_tokens / stop_sequence / tool_use with the
matched `stop_sequence`; `usage.input_tokens` excludes the prompt tokens reused from the KV cache, which
are `cache_read_input_tokens`; `output_tokens_details.thinking_tokens`). `MessagesStream` writes message_start, content_block_start/delta/stop
(thinking_delta, text_delta, input_json_delta), message_delta (stop reason and the usage, input tokens
included) and message_stop; `error` mid-stream. Errors use Anthropic's shape (`edge.api.gate.anthropic_error_body`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from edge.api.anthropic_schemas import (
    AssistantMessage, Base64Source, ImageBlock, MessagesRequest, TextBlock, ThinkingBlock, ToolResultBlock,
    ToolUseBlock,
)
from edge.api.fields import renamed
from edge.api.openai import Plan, plan_request
from edge.api.token_facts import Detok, matched_stop, reasoning_tokens
from edge.api.schemas import ChatCompletionRequest
from edge.chat.results import ChatDelta, ChatDone
from edge.errors import RequestError


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def tool_use_id(call_id: str) -> str:
    """Our `call_<hex>` ids in Anthropic's spelling."""
    return "toolu_" + call_id.removeprefix("call_")


# --- request ----------------------------------------------------------------------------------------


def _image(block: ImageBlock) -> dict:
    src = block.source
    url = f"data:{src.media_type};base64,{src.data}" if isinstance(src, Base64Source) else src.url
    return {"type": "image_url", "image_url": {"url": url}}


def _parts(blocks: Sequence[Any]) -> list[dict]:
    return [{"type": "text", "text": b.text} if isinstance(b, TextBlock) else _image(b) for b in blocks]


def _assistant(msg: AssistantMessage, where: str, uses: set[str]) -> dict:
    turn: dict[str, Any] = {"role": "assistant", "content": ""}
    if isinstance(msg.content, str):
        turn["content"] = msg.content
        return turn
    reasoning = []
    for block in msg.content:
        if isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, TextBlock):
            turn["content"] += block.text
        elif isinstance(block, ToolUseBlock):
            turn.setdefault("tool_calls", []).append(
                {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": block.input}})
            uses.add(block.id)
    if reasoning:
        turn["reasoning_content"] = "\n".join(reasoning)
    return turn


def _messages(req: MessagesRequest) -> list[dict]:
    out: list[dict] = []
    if isinstance(req.system, str) and req.system:
        out.append({"role": "system", "content": req.system})
    elif isinstance(req.system, list) and req.system:
        out.append({"role": "system", "content": _parts(req.system)})
    uses: set[str] = set()
    last = len(req.messages) - 1
    for i, msg in enumerate(req.messages):
        where = f"messages[{i}]"
        if isinstance(msg, AssistantMessage):
            if i == last:
                raise RequestError("a final assistant message (prefill) is not supported: the model's chat template "
                                   "always starts a new assistant turn; end with a user message", where)
            out.append(_assistant(msg, where, uses))
            continue
        if isinstance(msg.content, str):
            out.append({"role": "user", "content": msg.content})
            continue
        if not msg.content:
            raise RequestError("user messages must have non-empty content", f"{where}.content")
        parts: list[Any] = []
        for j, block in enumerate(msg.content):
            at = f"{where}.content[{j}]"
            if isinstance(block, ToolResultBlock):
                if parts:
                    raise RequestError("tool_result blocks must come first in a user message, before any text or "
                                       "image", at)
                if block.tool_use_id not in uses:
                    raise RequestError(f"tool_result names tool_use_id {block.tool_use_id!r}, which no earlier "
                                       "assistant tool_use block has", f"{at}.tool_use_id")
                content = block.content if isinstance(block.content, str) else _parts(block.content)
                out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
            else:
                parts.append(block)
        if parts:
            out.append({"role": "user", "content": _parts(parts)})
    return out


def _tool_choice(req: MessagesRequest) -> tuple[Any, bool | None]:
    choice = req.tool_choice
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if choice.name is None:
            raise RequestError("tool_choice of type tool needs the tool's name", "tool_choice.name")
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


# chat-completions field -> Messages field, in error params and messages
PARAMS = ((r"^(tools\[\d+\])\.function\.parameters", r"\1.input_schema"), (r"^(tools\[\d+\])\.function\.", r"\1."),
          (r"^stop$", "stop_sequences"), (r"^max_completion_tokens", "max_tokens"),
          (r"^chat_template_kwargs\.enable_thinking", "thinking"), (r"^response_format(\.json_schema)?", "output_config.format"))
WORDS = ((r"(tools\[\d+\])\.function\.parameters", r"\1.input_schema"), (r"^response_format: ", ""),
         (r"^stop must", "stop_sequences must"), (r"^tool_choice required", "tool_choice any"),
         (r"names function", "names tool"), (r"function name", "tool name"))


def plan_messages(req: MessagesRequest, *, default_thinking: bool) -> Plan:
    """The chat-completions plan of a Messages request (see the module doc)."""
    choice, parallel = _tool_choice(req)
    chat: dict[str, Any] = {
        "model": req.model, "messages": _messages(req), "stream": req.stream,
        "tools": [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                    "parameters": t.input_schema}} for t in req.tools or []] or None,
        "tool_choice": choice, "parallel_tool_calls": parallel, "stop": req.stop_sequences,
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "max_completion_tokens": req.max_tokens,
    }
    if req.thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": req.thinking.type != "disabled"}
    fmt = req.output_config.format if req.output_config else None
    if fmt is not None:
        chat["response_format"] = {"type": "json_schema", "json_schema": {"schema": fmt.schema_}}
    try:
        internal = ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})
        return plan_request(internal, default_thinking=default_thinking)
    except ValidationError as e:
        first = e.errors()[0]
        raise RequestError(f"invalid request: {first['msg']}", "messages") from e
    except RequestError as e:
        raise renamed(e, PARAMS, WORDS) from e.__cause__


# --- response objects -------------------------------------------------------------------------------


def stop_reason(done: ChatDone, sequence: str | None) -> str:
    if done.finish_reason == "tool_calls":
        return "tool_use"
    if done.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if sequence is not None else "end_turn"


def usage_json(done: ChatDone, detok: Detok) -> dict:
    u = done.usage
    return {"input_tokens": u.prompt_tokens - u.cached_tokens, "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": u.cached_tokens,
            "output_tokens_details": {"thinking_tokens": reasoning_tokens(done, detok)}}


def _tool_use(call_id: str, name: str, arguments: str) -> dict:
    return {"type": "tool_use", "id": tool_use_id(call_id), "name": name, "input": json.loads(arguments or "{}")}


def message_json(done: ChatDone, *, message_id: str, model: str, stops: Sequence[str],
                 detok: Detok) -> dict:
    out = done.output
    blocks: list[dict] = []
    if out.reasoning:
        blocks.append({"type": "thinking", "thinking": out.reasoning, "signature": ""})
    if out.content:
        blocks.append({"type": "text", "text": out.content})
    blocks += [_tool_use(c.id, c.name, c.arguments) for c in out.tool_calls]
    sequence = matched_stop(done, stops, detok)
    return {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": blocks,
            "stop_reason": stop_reason(done, sequence), "stop_sequence": sequence, "usage": usage_json(done, detok)}


class MessagesStream:
    """Events of one generation -> Messages stream events (dicts with `type`)."""

    def __init__(self, *, message_id: str, model: str, stops: Sequence[str], detok: Detok):
        self.id, self.model, self.stops, self.detok = message_id, model, stops, detok
        self.index = -1  # of the open content block
        self.kind: str | None = None  # thinking, text, tool_use (None: no block open)
        self.calls: dict[int, int] = {}  # streamed call index -> its block index

    def start(self) -> list[dict]:
        return [{"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}}]

    def _open(self, kind: str, block: dict) -> list[dict]:
        events = self._close()
        self.index += 1
        self.kind = kind
        return events + [{"type": "content_block_start", "index": self.index, "content_block": block}]

    def _close(self) -> list[dict]:
        if self.kind is None:
            return []
        events = []
        if self.kind == "thinking":  # Anthropic closes a thinking block with its signature; ours is empty
            events.append({"type": "content_block_delta", "index": self.index,
                           "delta": {"type": "signature_delta", "signature": ""}})
        self.kind = None
        return events + [{"type": "content_block_stop", "index": self.index}]

    def delta(self, event: ChatDelta) -> list[dict]:
        events: list[dict] = []
        if event.reasoning:
            if self.kind != "thinking":
                events += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events.append({"type": "content_block_delta", "index": self.index,
                           "delta": {"type": "thinking_delta", "thinking": event.reasoning}})
        if event.content:
            if self.kind != "text":
                events += self._open("text", {"type": "text", "text": ""})
            events.append({"type": "content_block_delta", "index": self.index,
                           "delta": {"type": "text_delta", "text": event.content}})
        for call in event.tool_calls:
            if call.id is not None:
                events += self._open("tool_use", {"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
                                                  "input": {}})
                self.calls[call.index] = self.index
            index = self.calls.get(call.index)
            if call.arguments and index is not None:
                events.append({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": call.arguments}})
        return events

    def finish(self, done: ChatDone) -> list[dict]:
        sequence = matched_stop(done, self.stops, self.detok)
        return self._close() + [
            {"type": "message_delta", "delta": {"stop_reason": stop_reason(done, sequence), "stop_sequence": sequence},
             "usage": usage_json(done, self.detok)},
            {"type": "message_stop"},
        ]
