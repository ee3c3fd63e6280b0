"""The MCP tool loop: the model calls tools on MCP servers, sees their results (images included), answers.

    for event in stream_agent(runtime, messages, host, servers=["vision"]):
        ...  # ChatDelta (model output), AgentTurn, ToolCallStep, ToolResultStep, then one AgentDone
    done = run_agent(runtime, messages, host)   # the AgentDone only

Contract
- `runtime` is anything with `stream_chat(messages, tools=, enable_thinking=, sampling=, **overrides)`
  yielding ChatDelta / ChatDone (edge.runtime.Runtime); this module never imports the runtime or the API.
- Images are labelled with handles (edge.chat.handles) only when MCP tools are in play; with no MCP tool
  selected the messages go to the runtime untouched (the prompt is byte-identical to a plain request).
- Each model turn gets the same tool list in the prompt (the KV prefix is reused across turns).
  `tool_choice` is one choice for the first turn ("auto", "required", "none" or a tool's name / {"name": ..})
  or a sequence of choices for the first turns; later turns are "auto". A forced choice is a GBNF grammar
  (edge.chat.grammar.build_grammar) in which image parameters only accept handles that exist.
- At most `max_steps` turns call tools; the turn after that must answer (it stops before a `<tool_call>`).
  Calls run in order; each becomes a ToolCallStep then a ToolResultStep (the step list is complete: every
  call has a result). A tool error, an unknown tool or handle, a timeout, a dead server, unusable content:
  all are tool results the model reads (`error: ...`), never exceptions of the loop.
- A call of a function in `extra_tools` (the caller's own tools) ends the loop with finish_reason
  "tool_calls", as a plain request would; MCP calls of that turn are left to the caller too. Streamed
  ChatDelta events carry only those calls: MCP calls show up as steps (`step_json` for the wire).
- `resolve(uri) -> bytes` reads the links tool results point to and user images given as paths/URLs
  (the caller's media policy); without it only bytes and data: URLs are used.
- `cancel` (a threading.Event, e.g. the server job's) stops the current generation (the runtime's `cancel=`)
  and the loop: no tool is called once it is set; the AgentDone then says "cancelled".
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.chat.grammar import build_grammar
from edge.chat.handles import ImageHandles, label_messages, substitute
from edge.chat.mcp_host import McpHost, McpTool
from edge.chat.results import ChatDelta, ChatDone, ChatEvent, Usage
from edge.chat.tool_content import ReturnedImage, tool_parts
from edge.errors import InputError, ToolInputError

DEFAULT_MAX_IMAGE_BYTES = 20 << 20


class ChatRuntime(Protocol):
    def stream_chat(self, messages: Sequence[dict], tools: list[dict] | None = None,
                    enable_thinking: bool | None = None, sampling: Any = None, **overrides) -> Iterator[ChatEvent]: ...


@dataclass
class AgentTurn:
    """One model generation of the loop has finished."""

    index: int
    done: ChatDone


@dataclass
class ToolCallStep:
    call_id: str
    server: str | None  # None: no MCP tool has this name
    tool: str
    arguments: dict  # as the model wrote them (handles, not image bytes)
    images: list[str] = field(default_factory=list)  # handles passed in


@dataclass
class ToolResultStep:
    call_id: str
    server: str | None
    tool: str
    is_error: bool
    text: str  # the text the model reads (error messages included)
    images: list[ReturnedImage] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class AgentDone:
    done: ChatDone  # the last model turn (its output is the answer)
    finish_reason: str  # "stop" | "length" | "tool_calls" (a caller's own tool was called) | "cancelled"
    steps: list[ToolCallStep | ToolResultStep]
    turns: list[ChatDone]
    messages: list[dict]  # the conversation as the model saw it, tool messages included
    handles: ImageHandles

    @property
    def history(self) -> list[dict]:
        """The conversation to continue from: `messages` plus the final answer as an assistant message."""
        answer: dict[str, Any] = {"role": "assistant", "content": self.done.output.content}
        if self.done.output.tool_calls:
            answer["tool_calls"] = [c.to_openai() for c in self.done.output.tool_calls]
        return [*self.messages, answer]

    @property
    def usage(self) -> Usage:
        """Token counts summed over the turns; images and videos as in the last turn's prompt."""
        total = Usage()
        for d in self.turns:
            u = d.usage
            total.prompt_tokens += u.prompt_tokens
            total.cached_tokens += u.cached_tokens
            total.completion_tokens += u.completion_tokens
            total.images_cached += u.images_cached
        last = self.done.usage  # media as in the last turn's prompt
        total.image_tokens, total.images = last.image_tokens, last.images
        total.video_tokens, total.videos, total.video_frames = last.video_tokens, last.videos, last.video_frames
        return total


AgentEvent = ChatDelta | AgentTurn | ToolCallStep | ToolResultStep | AgentDone


def _read_default(source: Any) -> bytes:
    if isinstance(source, str) and source[:5].lower() == "data:":
        header, _, payload = source.partition(",")
        if header.lower().endswith(";base64"):
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as e:
                raise InputError(f"image data: URL has invalid base64 ({e})") from e
    raise InputError(f"image source {str(source)[:80]!r} cannot be read here: send the bytes or a data: URL")


def _choice(tool_choice: Any, turn: int) -> Any:
    if isinstance(tool_choice, (list, tuple)):
        return tool_choice[turn] if turn < len(tool_choice) else "auto"
    return tool_choice if turn == 0 else "auto"


def _choice_name(choice: Any) -> str | None:
    if isinstance(choice, dict):
        return (choice.get("function") or choice).get("name")
    return choice if isinstance(choice, str) and choice not in ("auto", "required", "none") else None


def stream_agent(runtime: ChatRuntime, messages: Sequence[dict], host: McpHost, *,
                 servers: Sequence[str] | None = None, allowed_tools: dict[str, Sequence[str] | None] | None = None,
                 extra_tools: Sequence[dict] | None = None, tool_choice: Any = "auto", max_steps: int = 8,
                 parallel_tool_calls: bool = True, enable_thinking: bool | None = None, sampling: Any = None,
                 resolve: Callable[[str], bytes] | None = None, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 call_timeout: float | None = None, cancel: threading.Event | None = None,
                 **overrides) -> Iterator[AgentEvent]:
    """Run the loop (see the module doc); `overrides` are SamplingParams fields for every turn."""
    mcp_tools = host.tools(servers, allowed_tools)
    by_name = {t.function_name: t for t in mcp_tools}
    extra = list(extra_tools or [])
    extra_names = {t["function"]["name"] for t in extra}
    clash = sorted(extra_names & set(by_name))
    if clash:
        raise ToolInputError(f"function tool(s) {', '.join(map(repr, clash))} have the name of an MCP tool")
    handles = ImageHandles()
    read = resolve or _read_default
    conversation = label_messages(messages, handles, read) if mcp_tools else list(messages)
    prompt_tools = [t.function() for t in mcp_tools] + extra or None
    steps: list[ToolCallStep | ToolResultStep] = []
    turns: list[ChatDone] = []
    if cancel is not None:  # only then: runtimes without a `cancel` parameter still work
        overrides["cancel"] = cancel

    for turn in range(max_steps + 1):
        choice = _choice(tool_choice, turn) if turn < max_steps else "none"
        turn_overrides = dict(overrides)
        thinking = enable_thinking
        named = _choice_name(choice)
        if choice == "required" or named is not None:
            forced_tools = [t.function(handles.handles) for t in mcp_tools] + extra
            thinking = False if enable_thinking is None else enable_thinking
            turn_overrides["grammar"] = build_grammar(tools=forced_tools, tool_only=named, tool_forced=True,
                                                      parallel_tool_calls=parallel_tool_calls, think=thinking)
        elif choice == "none" and prompt_tools:
            stop = overrides.get("stop") or ()
            turn_overrides["stop"] = tuple(dict.fromkeys([*((stop,) if isinstance(stop, str) else stop), "<tool_call>"]))
        done, mcp_indices = None, set()
        for event in runtime.stream_chat(conversation, tools=prompt_tools, enable_thinking=thinking,
                                         sampling=sampling, **turn_overrides):
            if isinstance(event, ChatDone):
                done = event
                continue
            # MCP calls are the host's business: only calls of the caller's own tools stream as tool_calls
            mcp_indices |= {d.index for d in event.tool_calls if d.name in by_name}
            own = [d for d in event.tool_calls if d.index not in mcp_indices]
            if event.reasoning or event.content or own:
                yield ChatDelta(event.reasoning, event.content, own)
        turns.append(done)
        yield AgentTurn(turn, done)
        calls = done.output.tool_calls if done.finish_reason == "tool_calls" and turn < max_steps else []
        if cancel is not None and cancel.is_set():
            yield AgentDone(done, "cancelled", steps, turns, conversation, handles)
            return
        if not calls or any(c.name in extra_names for c in calls):
            yield AgentDone(done, "tool_calls" if calls else done.finish_reason, steps, turns, conversation, handles)
            return
        assistant: dict[str, Any] = {"role": "assistant", "content": done.output.content,
                                     "tool_calls": [c.to_openai() for c in calls]}
        if done.output.reasoning:
            assistant["reasoning_content"] = done.output.reasoning
        conversation.append(assistant)
        for call in calls:
            if cancel is not None and cancel.is_set():
                yield AgentDone(done, "cancelled", steps, turns, conversation, handles)
                return
            for step in _run_call(call, by_name.get(call.name), host, handles, resolve, max_image_bytes,
                                  call_timeout, conversation):
                steps.append(step)
                yield step


def _run_call(call, tool: McpTool | None, host: McpHost, handles: ImageHandles, resolve, max_image_bytes: int,
              call_timeout: float | None, conversation: list[dict]) -> Iterator[ToolCallStep | ToolResultStep]:
    """Call one tool; append its tool message to `conversation`; yield its call and result steps."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = None
    server = tool.server if tool else None
    step = ToolCallStep(call.id, server, tool.name if tool else call.name,
                        arguments if isinstance(arguments, dict) else {})
    yield step
    started = time.perf_counter()
    try:
        if tool is None:
            raise ToolInputError(f"there is no tool named {call.name!r}")
        if not isinstance(arguments, dict):
            raise ToolInputError(f"the arguments of {call.name!r} are not a JSON object")
        sent, step.images = substitute(arguments, tool.image_params, handles)
        result = host.call(tool, sent, call_timeout)
        parts = tool_parts(result, handles, resolve, max_image_bytes)
        is_error = result.is_error or result.error is not None or bool(parts.errors)
        content, images = parts.parts, parts.images
    except ToolInputError as e:
        content, images, is_error = [{"type": "text", "text": f"error: {e}"}], [], True
    conversation.append({"role": "tool", "tool_call_id": call.id, "content": content})
    labels = {f"[{i.handle}]" for i in images}  # the handle labels are in `images` already
    text = "".join(p["text"] for p in content if p.get("type") == "text" and p["text"] not in labels)
    yield ToolResultStep(call.id, server, step.tool, is_error, text, images, time.perf_counter() - started)


def run_agent(runtime: ChatRuntime, messages: Sequence[dict], host: McpHost, **kwargs) -> AgentDone:
    """`stream_agent` to the end; returns its AgentDone."""
    for event in stream_agent(runtime, messages, host, **kwargs):
        if isinstance(event, AgentDone):
            return event
    raise AssertionError("stream_agent ended without AgentDone")


def describe_step(step: ToolCallStep | ToolResultStep) -> str:
    """One line for a step, as `glm-edge chat` shows it: arguments with handles, returned images by name/size."""
    where = f"{step.server}.{step.tool}" if step.server else step.tool
    if isinstance(step, ToolCallStep):
        args = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in step.arguments.items())
        return f"-> {where}({args})"
    images = "".join(f" [{i.handle}] {i.mime} {i.width}x{i.height} {i.bytes} B;" for i in step.images)
    text = step.text if len(step.text) <= 200 else step.text[:200] + "..."
    return f"<- {where}{' ERROR' if step.is_error else ''} ({step.seconds:.2f} s):{images} {text}".rstrip()


def step_json(step: ToolCallStep | ToolResultStep, image_data: bool = False) -> dict:
    """A step as JSON for the server's extension field / the chat page, shaped after the Responses API's
    `mcp_call` item: `{"type": "mcp_call", "id", "server_label", "name", "arguments"}` then
    `{"type": "mcp_call_output", "id", "server_label", "name", "output", "error", "images", "seconds"}`;
    `image_data` adds each returned image as a data URL (`images[i].url`)."""
    base = {"id": step.call_id, "server_label": step.server, "name": step.tool}
    if isinstance(step, ToolCallStep):
        return {"type": "mcp_call", **base, "arguments": json.dumps(step.arguments, ensure_ascii=False),
                "images": list(step.images)}
    images = []
    for image in step.images:
        item = {"handle": image.handle, "mime": image.mime, "width": image.width, "height": image.height,
                "bytes": image.bytes}
        if image_data:
            item["url"] = f"data:{image.mime};base64,{base64.b64encode(image.data).decode()}"
        images.append(item)
    return {"type": "mcp_call_output", **base, "output": step.text, "error": step.text if step.is_error else None,
            "images": images, "seconds": round(step.seconds, 3)}
