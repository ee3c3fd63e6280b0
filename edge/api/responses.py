"""The OpenAI Responses API over the chat-completions machinery: requests in, response objects and events out.

(About 400 lines: the request mapping and the event stream of one dialect, kept together.)

`plan_responses(request, default_thinking=...)` maps a validated `ResponsesRequest` onto the one internal
request model, a `ChatCompletionRequest`, and plans it with `edge.api.openai.plan_request` (so sampling,
tools, grammars and thinking rules are exactly those of /v1/chat/completions); errors name the Responses
field (`text.format`, `max_output_tokens`, `input[3].arguments`, ...). Mapping:
- `instructions` -> a first system message; `input` a string -> one user message; message items keep their
  role (developer = system); consecutive assistant-side items (`reasoning`, assistant `message`,
  `function_call`) form one assistant turn (reasoning_content, content, tool_calls); `function_call_output`
  -> a tool message (its `call_id` must name an earlier `function_call`), images allowed.
- `reasoning.effort`: none/minimal -> thinking off, low/medium/high -> on, absent -> the server default
  (off for constrained requests, as in chat completions). `text.format` -> `response_format`;
  `max_output_tokens` -> `max_completion_tokens`; `tool_choice` {"type": "function", "name"} -> named.
- Stateless: nothing is stored (`store` is accepted and answered `false`); `previous_response_id`,
  `conversation` and `background` are refused with a 400, as are hosted tools, `input_file` and `file_id`.
- `{"type": "mcp"}` tools and an `{"type": "mcp"}` tool_choice become the chat-completions MCP entries
  (edge/api/mcp.py): only servers configured at launch (`--mcp-config`), checked by `check_mcp` (400
  `mcp_not_configured` without any, `server_url` refused); the server runs the calls. Output: one
  `mcp_list_tools` item per server first, then one `mcp_call` item per call (`output` the text the model read,
  `error` a `mcp_tool_execution_error`, status completed/failed; extension `images`: the returned images with
  their handles and data URLs), then the answer's items. Streamed: `response.mcp_list_tools.in_progress` /
  `.completed`, `response.mcp_call.in_progress`, `response.mcp_call_arguments.delta` / `.done`,
  `response.mcp_call.completed` / `.failed`, each between the item's `output_item.added` / `.done`.
Out: `response_json(done, shell)` is the `response` object (output items `reasoning` with the reasoning as
`reasoning_text` content, and as `summary_text` too when `reasoning.summary` asks for one; `message` with one
`output_text`; one `function_call` per call), `ResponsesStream` writes the streamed event sequence
(`response.created`, `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
`response.reasoning_text.delta`, `response.output_text.delta`, `response.function_call_arguments.delta`,
their `.done` events, `response.completed` or `response.incomplete`; `error` mid-stream).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from pydantic import ValidationError

from edge.api.fields import renamed
from edge.api.mcp import AgentChatDone, is_step
from edge.api.openai import Plan, plan_request
from edge.api.responses_schemas import (
    FunctionCallItem, FunctionCallOutputItem, FunctionTool, InputFile, InputImage, InputText, McpTool, MessageItem,
    NamedMcp, OutputText, ReasoningItem, Refusal, ResponsesRequest,
)
from edge.api.token_facts import Detok, reasoning_tokens
from edge.api.schemas import ChatCompletionRequest
from edge.chat.agent import ToolCallStep, ToolResultStep, step_json
from edge.chat.mcp_host import McpTool as HostTool
from edge.chat.results import ChatDelta, ChatDone
from edge.errors import RequestError


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --- request ----------------------------------------------------------------------------------------


def _mcp_tools(tool: McpTool, where: str) -> list[dict]:
    """The chat-completions MCP entry of `tool` (checked against the launch config by edge.api.mcp.check_mcp)."""
    entry = tool.model_dump(exclude_none=True)
    if isinstance(tool.allowed_tools, dict) and not isinstance(tool.allowed_tools.get("tool_names", []), list):
        raise RequestError("allowed_tools.tool_names must be a list of tool names", f"{where}.allowed_tools")
    return [entry]


def _parts(content: Any, where: str, role: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    out: list[dict] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, (InputText, OutputText)):
            out.append({"type": "text", "text": part.text})
        elif isinstance(part, Refusal):
            out.append({"type": "text", "text": part.refusal})
        elif isinstance(part, InputImage):
            if role == "assistant":
                raise RequestError("images in assistant messages are not supported; put them in a user message or a "
                                   "function_call_output", at)
            if part.image_url is None:
                raise RequestError("input_image needs image_url (a data: URL, a path under --media-dir or, with "
                                   "--allow-remote-media, http(s)); file_id is not supported: this server keeps no "
                                   "files", f"{at}.image_url")
            out.append({"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}})
        elif isinstance(part, InputFile):
            raise RequestError("input_file parts are not supported (text and images only)", at)
    if role == "assistant":
        return "".join(p["text"] for p in out)
    return out


def _messages(req: ResponsesRequest) -> list[dict]:
    messages: list[dict] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    turn: dict | None = None  # the assistant turn being gathered from consecutive items
    calls: set[str] = set()

    def flush() -> None:
        nonlocal turn
        if turn is not None:
            messages.append(turn)
            turn = None

    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        if isinstance(item, ReasoningItem):
            if turn is not None and (turn["content"] or turn.get("tool_calls") or "reasoning_content" in turn):
                flush()
            texts = [c.text for c in item.content or []] or [s.text for s in item.summary]
            turn = turn or {"role": "assistant", "content": ""}
            turn["reasoning_content"] = "\n".join(texts)
        elif isinstance(item, MessageItem) and item.role == "assistant":
            if turn is not None and turn.get("tool_calls"):
                flush()
            turn = turn or {"role": "assistant", "content": ""}
            turn["content"] += _parts(item.content, where, "assistant")
        elif isinstance(item, FunctionCallItem):
            try:
                args = json.loads(item.arguments) if item.arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise RequestError(f"function_call arguments are not valid JSON ({e})", f"{where}.arguments") from e
            if not isinstance(args, dict):
                raise RequestError("function_call arguments must be a JSON object", f"{where}.arguments")
            turn = turn or {"role": "assistant", "content": ""}
            turn.setdefault("tool_calls", []).append(
                {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": args}})
            calls.add(item.call_id)
        elif isinstance(item, FunctionCallOutputItem):
            flush()
            if item.call_id not in calls:
                raise RequestError(f"no function_call with call_id {item.call_id!r} comes before this output",
                                   f"{where}.call_id")
            messages.append({"role": "tool", "tool_call_id": item.call_id,
                             "content": _parts(item.output, f"{where}.output", "tool")})
        elif isinstance(item, MessageItem):
            flush()
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _parts(item.content, where, role)})
        else:
            hint = (" (this server is stateless: send the items themselves)" if item.type == "item_reference" else "")
            raise RequestError(f"input items of type {item.type!r} are not supported{hint}; allowed: message, "
                               "function_call, function_call_output, reasoning", f"{where}.type")
    flush()
    if not messages:
        raise RequestError("input must hold at least one item", "input")
    return messages


def _tools(req: ResponsesRequest) -> list[dict] | None:
    if not req.tools:
        return None
    tools = []
    for i, tool in enumerate(req.tools):
        where = f"tools[{i}]"
        if isinstance(tool, FunctionTool):
            tools.append({"type": "function", "function": tool.model_dump(exclude_none=True, exclude={"type"})})
        elif isinstance(tool, McpTool):
            tools.extend(_mcp_tools(tool, where))
        else:
            raise RequestError(f"hosted tools of type {tool.type!r} are not available on this server; allowed: "
                               "function (and mcp, from servers configured at launch)", f"{where}.type")
    return tools


def _tool_choice(req: ResponsesRequest) -> Any:
    choice = req.tool_choice
    if isinstance(choice, NamedMcp):
        return choice.model_dump(exclude_none=True)
    if choice is None or isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice.name}}


def _response_format(req: ResponsesRequest) -> dict | None:
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict,
                                                   "description": fmt.description}}


def _thinking(req: ResponsesRequest) -> bool | None:
    effort = req.reasoning.effort if req.reasoning else None
    return None if effort is None else effort not in ("none", "minimal")


# chat-completions field -> Responses field, in error params and messages
PARAMS = ((r"^response_format(\.json_schema)?", "text.format"), (r"^max_completion_tokens", "max_output_tokens"),
          (r"^chat_template_kwargs\.enable_thinking", "reasoning.effort"), (r"^messages.*", "input"),
          (r"^(tools\[\d+\])\.function\.", r"\1."))
WORDS = ((r"^response_format: ", "text.format: "), (r"(tools\[\d+\])\.function\.", r"\1."),
         (r"max_completion_tokens", "max_output_tokens"))


def refuse_stateful(req: ResponsesRequest) -> None:
    if req.previous_response_id is not None:
        raise RequestError("previous_response_id is not supported: this server is stateless and keeps no responses; "
                           "send the whole conversation in input (earlier output items included)",
                           "previous_response_id", "unsupported_parameter")
    if req.conversation is not None:
        raise RequestError("conversation is not supported: this server is stateless; send the whole conversation in "
                           "input", "conversation", "unsupported_parameter")
    if req.background:
        raise RequestError("background responses are not supported; stream instead", "background",
                           "unsupported_parameter")
    if req.top_logprobs:
        raise RequestError("top_logprobs is not supported by this server", "top_logprobs", "unsupported_parameter")


def plan_responses(req: ResponsesRequest, *, default_thinking: bool) -> Plan:
    """The chat-completions plan of a Responses request (see the module doc)."""
    refuse_stateful(req)
    chat: dict[str, Any] = {
        "model": req.model, "messages": _messages(req), "stream": req.stream, "tools": _tools(req),
        "tool_choice": _tool_choice(req), "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": _response_format(req), "temperature": req.temperature, "top_p": req.top_p,
        "max_completion_tokens": req.max_output_tokens,
    }
    thinking = _thinking(req)
    if thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": thinking}
    try:
        internal = ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})
        return plan_request(internal, default_thinking=default_thinking)
    except ValidationError as e:
        first = e.errors()[0]
        raise RequestError(f"invalid request: {first['msg']}", "input") from e
    except RequestError as e:
        raise renamed(e, PARAMS, WORDS) from e.__cause__


# --- response objects -------------------------------------------------------------------------------


def shell(req: ResponsesRequest, *, response_id: str, model: str) -> dict:
    """The response object before any output: request settings echoed, status in_progress."""
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else {"type": "text"}
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
        "error": None, "incomplete_details": None, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "model": model, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": None,
        "reasoning": req.reasoning.model_dump() if req.reasoning else {"effort": None, "summary": None},
        "store": False, "temperature": req.temperature, "text": {"format": fmt},
        "tool_choice": req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else (req.tool_choice or "auto"),
        "tools": [t.model_dump(by_alias=True, exclude_none=True) for t in req.tools or []],
        "top_p": req.top_p, "truncation": "disabled", "usage": None, "metadata": req.metadata or {},
    }


def usage_json(done: ChatDone, detok: Detok) -> dict:
    u = done.usage
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens(done, detok)},
            "total_tokens": u.total_tokens}


def _reasoning_item(item_id: str, text: str, summary: bool) -> dict:
    return {"id": item_id, "type": "reasoning", "status": "completed",
            "summary": [{"type": "summary_text", "text": text}] if summary else [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [_text_part(text)]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def _finish(response: dict, done: ChatDone, output: list[dict], detok) -> dict:
    incomplete = done.finish_reason == "length"
    response.update(status="incomplete" if incomplete else "completed", output=output,
                    incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
                    usage=usage_json(done, detok))
    return response


def _list_tools_items(tools: list[HostTool]) -> list[dict]:
    """One `mcp_list_tools` item per server, in the order the tools were offered."""
    servers: dict[str, list[dict]] = {}
    for t in tools:
        servers.setdefault(t.server, []).append({"name": t.name, "description": t.description,
                                                 "input_schema": t.input_schema, "annotations": None})
    return [{"id": new_id("mcpl"), "type": "mcp_list_tools", "server_label": label, "tools": listed, "error": None}
            for label, listed in servers.items()]


def _mcp_call_item(item_id: str, call: ToolCallStep) -> dict:
    return {"id": item_id, "type": "mcp_call", "server_label": call.server or "", "name": call.tool,
            "arguments": step_json(call)["arguments"], "output": None, "error": None, "status": "in_progress",
            "approval_request_id": None}


def _mcp_result(item: dict, result: ToolResultStep) -> dict:
    """`item` completed (or failed) by its result; extension `images`: what the tool returned."""
    error = {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": result.text}]}
    item.update(output=None if result.is_error else result.text, error=error if result.is_error else None,
                status="failed" if result.is_error else "completed",
                images=step_json(result, image_data=True)["images"])
    return item


def _mcp_items(done: ChatDone) -> list[dict]:
    if not isinstance(done, AgentChatDone):
        return []
    items = _list_tools_items(done.mcp_tools)
    results = {s.call_id: s for s in done.steps if isinstance(s, ToolResultStep)}
    for step in done.steps:
        if isinstance(step, ToolCallStep):
            item = _mcp_call_item(new_id("mcp"), step)
            items.append(_mcp_result(item, results[step.call_id]) if step.call_id in results else item)
    return items


def response_json(done: ChatDone, base: dict, detok: Detok, summary: bool) -> dict:
    out = done.output
    status = "incomplete" if done.finish_reason == "length" else "completed"
    items = _mcp_items(done)
    if out.reasoning:
        items.append(_reasoning_item(new_id("rs"), out.reasoning, summary))
    if out.content:
        items.append(_message_item(new_id("msg"), out.content, status if not out.tool_calls else "completed"))
    items += [_call_item(new_id("fc"), c.id, c.name, c.arguments) for c in out.tool_calls]
    return _finish(dict(base), done, items, detok)


class ResponsesStream:
    """Events of one generation -> Responses stream events (dicts with `type` and `sequence_number`)."""

    def __init__(self, base: dict, detok: Detok, summary: bool, mcp_tools: list[HostTool] | None = None):
        self.base = base
        self.mcp_tools = mcp_tools or []
        self.mcp_calls: dict[str, dict] = {}  # call id -> its mcp_call item
        self.detok = detok
        self.summary = summary
        self.seq = 0
        self.items: list[dict] = []
        self.open: dict | None = None  # the item receiving deltas
        self.text = ""  # of the open item
        self.calls: dict[int, dict] = {}  # streamed call index -> its item

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _where(self) -> dict:
        return {"item_id": self.open["id"], "output_index": len(self.items) - 1}

    def start(self) -> list[dict]:
        events = [self._event("response.created", response=dict(self.base)),
                  self._event("response.in_progress", response=dict(self.base))]
        for item in _list_tools_items(self.mcp_tools):
            self.items.append(item)
            where = {"item_id": item["id"], "output_index": len(self.items) - 1}
            events += [self._event("response.output_item.added", output_index=where["output_index"],
                                   item={**item, "tools": []}),
                       self._event("response.mcp_list_tools.in_progress", **where),
                       self._event("response.mcp_list_tools.completed", **where),
                       self._event("response.output_item.done", output_index=where["output_index"], item=dict(item))]
        return events

    def _step(self, step: ToolCallStep | ToolResultStep) -> list[dict]:
        """An MCP call as an `mcp_call` item: added with its arguments, done with its result."""
        if isinstance(step, ToolCallStep):
            events = self._close()
            item = _mcp_call_item(new_id("mcp"), step)
            self.items.append(item)
            self.mcp_calls[step.call_id] = item
            where = {"item_id": item["id"], "output_index": len(self.items) - 1}
            return events + [
                self._event("response.output_item.added", output_index=where["output_index"], item=dict(item)),
                self._event("response.mcp_call.in_progress", **where),
                self._event("response.mcp_call_arguments.delta", **where, delta=item["arguments"]),
                self._event("response.mcp_call_arguments.done", **where, arguments=item["arguments"])]
        item = _mcp_result(self.mcp_calls[step.call_id], step)
        where = {"item_id": item["id"], "output_index": self.items.index(item)}
        kind = "response.mcp_call.failed" if step.is_error else "response.mcp_call.completed"
        return [self._event(kind, **where),
                self._event("response.output_item.done", output_index=where["output_index"], item=dict(item))]

    def _add(self, item: dict, part: dict | None) -> list[dict]:
        self.items.append(item)
        self.open, self.text = item, ""
        events = [self._event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))]
        if part is not None:
            events.append(self._event("response.content_part.added", **self._where(), content_index=0, part=part))
        return events

    def _close(self, status: str = "completed") -> list[dict]:
        item, events = self.open, []
        if item is None:
            return events
        where = self._where()
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": self.text}
            events += [self._event("response.reasoning_text.done", **where, content_index=0, text=self.text),
                       self._event("response.content_part.done", **where, content_index=0, part=part)]
            if self.summary:
                summary = {"type": "summary_text", "text": self.text}
                events += [
                    self._event("response.reasoning_summary_part.added", **where, summary_index=0,
                                part={"type": "summary_text", "text": ""}),
                    self._event("response.reasoning_summary_text.delta", **where, summary_index=0, delta=self.text),
                    self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=self.text),
                    self._event("response.reasoning_summary_part.done", **where, summary_index=0, part=summary)]
            item.update(_reasoning_item(item["id"], self.text, self.summary))
        elif item["type"] == "message":
            part = _text_part(self.text)
            events += [self._event("response.output_text.done", **where, content_index=0, text=self.text, logprobs=[]),
                       self._event("response.content_part.done", **where, content_index=0, part=part)]
            item.update(_message_item(item["id"], self.text, status))
        else:
            if item["arguments"]:
                events.append(self._event("response.function_call_arguments.done", **where, name=item["name"],
                                          arguments=item["arguments"]))
            else:  # a call the parser rejected after its name was streamed: no arguments ever came
                status = "incomplete"
            item["status"] = status
        events.append(self._event("response.output_item.done", output_index=where["output_index"], item=dict(item)))
        self.open = None
        return events

    def delta(self, event: ChatDelta | ToolCallStep | ToolResultStep) -> list[dict]:
        if is_step(event):
            return self._step(event)
        events: list[dict] = []
        if event.reasoning:
            if self.open is None or self.open["type"] != "reasoning":
                events += self._close()
                events += self._add({"id": new_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [],
                                     "content": []}, {"type": "reasoning_text", "text": ""})
            self.text += event.reasoning
            events.append(self._event("response.reasoning_text.delta", **self._where(), content_index=0,
                                      delta=event.reasoning))
        if event.content:
            if self.open is None or self.open["type"] != "message":
                events += self._close()
                events += self._add({"id": new_id("msg"), "type": "message", "status": "in_progress",
                                     "role": "assistant", "content": []}, _text_part(""))
            self.text += event.content
            events.append(self._event("response.output_text.delta", **self._where(), content_index=0,
                                      delta=event.content, logprobs=[]))
        for call in event.tool_calls:
            if call.id is not None:
                events += self._close()
                events += self._add(_call_item(new_id("fc"), call.id, call.name, "", "in_progress"), None)
                self.calls[call.index] = self.open
            item = self.calls.get(call.index)
            if call.arguments and item is not None:
                item["arguments"] += call.arguments
                where = {"item_id": item["id"], "output_index": self.items.index(item)}
                events.append(self._event("response.function_call_arguments.delta", **where, delta=call.arguments))
        return events

    def finish(self, done: ChatDone) -> list[dict]:
        events = self._close("incomplete" if done.finish_reason == "length" else "completed")
        response = _finish(dict(self.base), done, self.items, self.detok)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return events + [self._event(kind, response=response)]

    def error(self, status: int, body: dict) -> list[dict]:
        error = body["error"]
        return [self._event("error", code=error.get("code"), message=error["message"], param=error.get("param"))]
