"""MCP tools in API requests: servers configured at launch (`glm-edge serve --mcp-config FILE`), run by the server.

A chat-completions tools entry (the shape of the Responses API's MCP tool; /v1/responses maps onto it):

    {"type": "mcp", "server_label": "vision", "allowed_tools": ["crop"], "require_approval": "never"}

Contract
- `mcp_request(req)` (planning, no host needed) gathers the entries and an MCP `tool_choice`; the plan then
  has no tool grammar or `<tool_call>` stop of its own: the agent (edge.chat.agent) builds those per turn.
- `check_mcp(svc, plan)` runs before the job starts, so every refusal is a 400 in OpenAI's shape: no host
  (`mcp_not_configured`), `server_url` / `connector_id` (`mcp_server_url_refused`: nothing in a request
  starts a process or reaches a new URL), a label not configured at launch (`unknown_mcp_server`), an
  approval mode other than "never" (`unsupported_parameter`: the operator's config is the approval), an
  allowed tool the server lacks, a function tool named like an MCP tool, a named `tool_choice` that is
  neither. `allowed_tools` is a list of names or `{"tool_names": [...]}`.
- `agent_start(svc, plan, messages)` is the job of an MCP request (its messages already resolved under the
  media policy by `edge.api.generation.plan_body`): `stream_agent` with the job's cancel event. Its events: ChatDelta, ToolCallStep / ToolResultStep (as they
  happen), and one final `AgentChatDone` (a ChatDone: the last turn's output, usage and timings summed over
  the turns, `steps`, the `mcp_tools` offered), so every route ends on it as on a plain generation.
- Wire form of a step: `edge.chat.agent.step_json(step, image_data=True)`; chat completions put the list on
  the message as `mcp_steps` and stream each as `delta.mcp_steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.chat.agent import AgentDone, AgentTurn, ToolCallStep, ToolResultStep, step_json, stream_agent
from edge.chat.mcp_host import McpTool
from edge.chat.results import ChatDone, Timings
from edge.errors import RequestError, ToolInputError

if TYPE_CHECKING:
    from edge.api.openai import Plan
    from edge.api.schemas import ChatCompletionRequest
    from edge.api.service import Service

MCP_NOT_CONFIGURED = ("no MCP servers configured: this server runs MCP tools only from servers configured when "
                      "it starts (glm-edge serve --mcp-config FILE), and none are; send function tools and run the "
                      "calls yourself")


@dataclass
class McpRequest:
    entries: list[tuple[str, Any]]  # (param path "tools[i]", McpToolEntry) in request order
    choice: Any = None  # an MCP tool_choice {"type": "mcp", "server_label", "name"?}, else None
    extra_tools: list[dict] = field(default_factory=list)  # the request's function tools
    tool_choice: Any = "auto"  # for the agent's first turn: "auto" | "none" | "required" | {"name": ...}
    parallel_tool_calls: bool = True
    tools: list[McpTool] = field(default_factory=list)  # filled by check_mcp

    @property
    def servers(self) -> list[str]:
        return [e.server_label for _, e in self.entries]

    @property
    def allowed(self) -> dict[str, list[str] | None]:
        return {e.server_label: _allowed(e) for _, e in self.entries}


@dataclass
class AgentChatDone(ChatDone):
    """The end of an MCP request: a ChatDone for the routes, plus the loop's steps and the tools offered."""

    steps: list[ToolCallStep | ToolResultStep] = field(default_factory=list)
    mcp_tools: list[McpTool] = field(default_factory=list)


def _allowed(entry: Any) -> list[str] | None:
    allowed = entry.allowed_tools
    return list(allowed) if isinstance(allowed, list) else (allowed.tool_names if allowed is not None else None)


def mcp_request(req: ChatCompletionRequest) -> McpRequest | None:
    """The MCP part of a request, or None when it names no MCP server (then nothing changes)."""
    entries = [(f"tools[{i}]", t) for i, t in enumerate(req.tools or []) if t.type == "mcp"]
    choice = req.tool_choice if getattr(req.tool_choice, "type", None) == "mcp" else None
    if not entries and choice is None:
        return None
    return McpRequest(entries, choice, parallel_tool_calls=req.parallel_tool_calls is not False)


def check_mcp(svc: Service, plan: Plan) -> None:
    """Refuse what the launch configuration does not allow (see the module doc); fills `plan.mcp.tools`."""
    mcp: McpRequest | None = plan.mcp
    if mcp is None:
        return
    host = svc.mcp_host
    if host is None:
        raise RequestError(MCP_NOT_CONFIGURED, mcp.entries[0][0] if mcp.entries else "tool_choice", "mcp_not_configured")
    seen: set[str] = set()
    for where, entry in mcp.entries:
        for key in ("server_url", "connector_id"):
            if getattr(entry, key) is not None:
                raise RequestError(f"{key} is refused: this server reaches only the MCP servers configured when it "
                                   "starts; name one of them by server_label", f"{where}.{key}", "mcp_server_url_refused")
        label = entry.server_label
        if label not in host.specs:
            raise RequestError(f"MCP server {label!r} is not configured; configured at launch: "
                               f"{', '.join(host.specs) or 'none'}", f"{where}.server_label", "unknown_mcp_server")
        if label in seen:
            raise RequestError(f"MCP server {label!r} is named twice", f"{where}.server_label")
        seen.add(label)
        if entry.require_approval not in (None, "never"):
            raise RequestError("only require_approval \"never\" is supported: the tools of servers configured at "
                               "launch run without asking (the operator's config is the approval)",
                               f"{where}.require_approval", "unsupported_parameter")
        try:
            host.tools([label], {label: _allowed(entry)})
        except ToolInputError as e:
            raise RequestError(str(e), f"{where}.allowed_tools") from e
    mcp.tools = host.tools(mcp.servers, mcp.allowed)
    names = {t.function_name: t for t in mcp.tools}
    clash = sorted(names.keys() & {t["function"]["name"] for t in mcp.extra_tools})
    if clash:
        raise RequestError(f"function tool(s) {', '.join(map(repr, clash))} have the name of an MCP tool", "tools")
    if mcp.choice is not None:
        label, name = mcp.choice.server_label, mcp.choice.name
        if label not in seen:
            raise RequestError(f"tool_choice names MCP server {label!r}, which is not among the tools", "tool_choice")
        if name is None:
            mcp.tool_choice = "required"
        else:
            match = [t for t in mcp.tools if t.server == label and t.name == name]
            if not match:
                raise RequestError(f"tool_choice names tool {name!r}, which MCP server {label!r} does not offer here",
                                   "tool_choice")
            mcp.tool_choice = {"name": match[0].function_name}
    elif isinstance(mcp.tool_choice, dict):
        name = mcp.tool_choice["name"]
        if name not in names and name not in {t["function"]["name"] for t in mcp.extra_tools}:
            raise RequestError(f"tool_choice names function {name!r}, which is neither among the tools nor a tool of "
                               f"the MCP servers named ({', '.join(sorted(names)) or 'none'})", "tool_choice")


def agent_start(svc: Service, plan: Plan, messages: list[dict]) -> Callable[[Any], Iterator[Any]]:
    """The job of a planned MCP request (see the module doc)."""
    from edge.mcp_setup import media_resolver

    runtime, host, mcp = svc.runtime, svc.mcp_host, plan.mcp
    resolve = media_resolver(svc.media)  # asyncio.run: the scheduler's worker threads have no event loop

    def start(cancel) -> Iterator[Any]:
        events = stream_agent(runtime, messages, host, servers=mcp.servers, allowed_tools=mcp.allowed,
                              extra_tools=mcp.extra_tools, tool_choice=mcp.tool_choice,
                              parallel_tool_calls=mcp.parallel_tool_calls, enable_thinking=plan.enable_thinking,
                              resolve=resolve, max_image_bytes=svc.settings.max_image_bytes, cancel=cancel,
                              **plan.overrides)
        return route_events(events, mcp.tools)

    return start


def route_events(events: Iterator[Any], tools: list[McpTool]) -> Iterator[Any]:
    """Agent events as the routes take them: turns dropped, the AgentDone as one AgentChatDone."""
    for event in events:
        if isinstance(event, AgentTurn):
            continue
        if isinstance(event, AgentDone):
            last = event.done
            yield AgentChatDone(event.finish_reason, last.output, event.usage, _timings(event.turns), last.text,
                                last.token_ids, steps=list(event.steps), mcp_tools=tools)
            return
        yield event


def _timings(turns: list[ChatDone]) -> Timings:
    """Stage seconds summed over the turns; first_token as the first turn saw it."""
    total = Timings(first_token=turns[0].timings.first_token)
    for d in turns:
        for stage in ("preprocess", "vision", "prefill", "decode"):
            setattr(total, stage, getattr(total, stage) + getattr(d.timings, stage))
    return total


def steps_json(done: ChatDone) -> list[dict] | None:
    """The `mcp_steps` extension of a finished request (None for a request without MCP tools)."""
    if not isinstance(done, AgentChatDone):
        return None
    return [step_json(s, image_data=True) for s in done.steps]


def is_step(event: Any) -> bool:
    return isinstance(event, (ToolCallStep, ToolResultStep))
