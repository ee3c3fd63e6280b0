"""`McpHost`: glm-edge's connections to the MCP servers of an --mcp-config, on the official `mcp` SDK.

    host = McpHost(load_mcp_config("mcp.json")).start()     # every server connected and its tools listed
    tools = host.tools(["vision"])                            # McpTool list; .function() is the model's form
    result = host.call(tools[0], {"image": "data:..."})       # ToolResult, never raises for a tool's failure
    host.close()                                              # every child process gone

Contract
- One background thread runs an asyncio loop; each server is one task holding an SDK `Client` (stdio child
  process or streamable HTTP) open from `start()` to `close()`. The synchronous methods are thread-safe.
- `start()` connects every server concurrently (each within `connect_timeout`) and lists its tools; a
  server that cannot start raises McpServerError naming it, after the others are shut down.
- Tool names the model sees: the server's own name, or `{server}_{tool}` when two selected servers share
  it. `tools(servers, allowed)` is limited to configured servers (UnknownMcpServerError otherwise).
- `call` waits at most the call timeout (the server's `timeout`, else `call_timeout`); a timeout, a
  protocol error, or a dead server become `ToolResult(is_error=True, error=...)`. A server whose
  connection broke is restarted once per call (at most `max_restarts` in the host's life) and the call is
  not retried (it may have had effects); the error says so. After that the server is reported dead.
- Content comes back as the MCP wire dicts (`{"type": "image", "data", "mimeType"}` ...); turning it into
  a tool message is the agent's job (edge.chat.agent).
- `close()` ends every session; the SDK closes a stdio server's stdin, then terminates its process tree.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.chat.handles import ImageParam, image_params, model_schema
from edge.chat.mcp_config import McpServerSpec, load_mcp_config
from edge.errors import McpServerError, ToolInputError, UnknownMcpServerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str  # the server's name for it
    function_name: str  # the name the model calls
    description: str
    input_schema: dict
    image_params: dict[str, ImageParam] = field(default_factory=dict)

    def function(self, handles: Sequence[str] | None = None) -> dict:
        """The OpenAI-style function tool the model sees (with `handles`: image params limited to them)."""
        return {"type": "function", "function": {
            "name": self.function_name, "description": self.description,
            "parameters": model_schema(self.input_schema, self.image_params, handles),
        }}


@dataclass
class ToolResult:
    server: str
    tool: str
    content: list[dict]  # MCP content blocks as wire dicts
    is_error: bool = False
    error: str | None = None  # the host's own message when the call did not complete
    seconds: float = 0.0
    structured: Any = None


class _Connection:
    def __init__(self, spec: McpServerSpec):
        self.spec = spec
        self.client: Any = None
        self.tools: list[Any] = []
        self.task: asyncio.Task | None = None
        self.stop: asyncio.Event | None = None
        self.failure: str | None = None
        self.restarts = 0
        self.generation = 0  # counts connections, so that concurrent callers restart a dead server once
        self.restart_lock: asyncio.Lock | None = None


class McpHost:
    def __init__(self, servers: Mapping[str, McpServerSpec], *, call_timeout: float = 60.0,
                 connect_timeout: float = 30.0, max_restarts: int = 3, errlog: Any = None):
        self.specs = dict(servers)
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self.max_restarts = max_restarts
        self.errlog = errlog or sys.stderr  # where stdio servers' stderr goes
        self._conns = {name: _Connection(spec) for name, spec in self.specs.items()}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, path: str | Path, **kwargs) -> McpHost:
        """Read an --mcp-config file (not started yet)."""
        return cls(load_mcp_config(path), **kwargs)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> McpHost:
        if self._loop is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-host", daemon=True)
        self._thread.start()
        try:
            self._run(self._start_all(), self.connect_timeout + 15)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._loop is None:
            return
        try:
            self._run(self._stop_all(), 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> McpHost:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_all(self) -> None:
        results = await asyncio.gather(*(self._connect(c) for c in self._conns.values()), return_exceptions=True)
        failed = [(c.spec.name, r) for c, r in zip(self._conns.values(), results) if isinstance(r, BaseException)]
        if failed:
            raise McpServerError("; ".join(f"MCP server {name!r} did not start: {self._why(e)}" for name, e in failed))

    def _why(self, error: BaseException) -> str:
        if isinstance(error, asyncio.TimeoutError):
            return f"no answer within {self.connect_timeout:g} s (connect_timeout)"
        return _describe(error)

    async def _stop_all(self) -> None:
        await asyncio.gather(*(self._disconnect(c) for c in self._conns.values()))

    def _transport(self, spec: McpServerSpec):
        from mcp.client.stdio import StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        if spec.transport == "stdio":
            params = StdioServerParameters(command=spec.command, args=list(spec.args), env=spec.env or None,
                                           cwd=spec.cwd)
            return stdio_client(params, errlog=self.errlog)
        return streamable_http_client(spec.url, http_client=create_mcp_http_client(headers=spec.headers or None))

    async def _connect(self, conn: _Connection) -> None:
        """Start the task that holds this server's session open; return once its tools are listed."""
        from mcp.client.client import Client

        ready = asyncio.get_running_loop().create_future()
        conn.stop = asyncio.Event()
        conn.failure = None

        async def hold() -> None:
            try:
                async with Client(self._transport(conn.spec)) as client:
                    conn.tools = await _list_tools(client)
                    conn.client = client
                    conn.generation += 1
                    ready.set_result(None)
                    await conn.stop.wait()
            except BaseException as e:  # reported through `ready` or `failure`, never lost
                if not ready.done():
                    ready.set_exception(e)
                else:
                    conn.failure = _describe(e)
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
            finally:
                conn.client = None

        conn.task = asyncio.get_running_loop().create_task(hold())
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.connect_timeout)
        except BaseException:
            await self._disconnect(conn, wait=False)
            if ready.done() and not ready.cancelled():
                ready.exception()  # retrieved: the error raised here is the one reported
            raise

    async def _disconnect(self, conn: _Connection, wait: bool = True) -> None:
        """End a server's session. `wait=False` (a connection that never became ready) cancels it at once;
        the SDK still shuts a stdio server down (stdin closed, then its process tree terminated)."""
        task = conn.task
        if task is None:
            return
        conn.stop.set()
        done = (await asyncio.wait({task}, timeout=15))[0] if wait else set()
        if not done:  # a handshake in progress, or a wedged transport
            task.cancel()
            await asyncio.wait({task}, timeout=10)
        conn.task = None
        conn.client = None

    # --- tools ------------------------------------------------------------------------------------

    def check_servers(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self._conns]
        if unknown:
            raise UnknownMcpServerError(f"MCP server(s) {', '.join(map(repr, unknown))} are not configured; "
                                        f"configured at launch: {', '.join(self._conns) or 'none'}")

    def tools(self, servers: Sequence[str] | None = None,
              allowed: Mapping[str, Sequence[str] | None] | None = None) -> list[McpTool]:
        """The tools of `servers` (default all), limited per server by `allowed[server]` when given."""
        names = list(self._conns) if servers is None else list(dict.fromkeys(servers))
        self.check_servers(names)
        listed = []
        for server in names:
            keep = (allowed or {}).get(server)
            available = {t.name for t in self._conns[server].tools}
            missing = [t for t in keep or () if t not in available]
            if missing:
                raise ToolInputError(f"MCP server {server!r} has no tool(s) {', '.join(map(repr, missing))}; "
                                     f"it offers {', '.join(sorted(available)) or 'none'}")
            listed += [(server, t) for t in self._conns[server].tools if keep is None or t.name in keep]
        counts: dict[str, int] = {}
        for _, t in listed:
            counts[t.name] = counts.get(t.name, 0) + 1
        return [_tool(server, t, f"{server}_{t.name}" if counts[t.name] > 1 else t.name) for server, t in listed]

    def status(self) -> dict[str, str]:
        """Per server: "running", or "down: <why>"."""
        return {name: "running" if c.client is not None and c.failure is None else f"down: {c.failure or 'not started'}"
                for name, c in self._conns.items()}

    def call(self, tool: McpTool, arguments: dict, timeout: float | None = None) -> ToolResult:
        conn = self._conns.get(tool.server)
        if conn is None:
            raise UnknownMcpServerError(f"MCP server {tool.server!r} is not configured")
        if self._loop is None:
            raise McpServerError("the MCP host is not started")
        limit = timeout or conn.spec.timeout or self.call_timeout
        started = time.perf_counter()
        result = self._run(self._call(conn, tool, arguments, limit), limit + 30)
        result.seconds = time.perf_counter() - started
        return result

    async def _call(self, conn: _Connection, tool: McpTool, arguments: dict, limit: float) -> ToolResult:
        from mcp.shared.exceptions import MCPError

        def failed(message: str) -> ToolResult:
            return ToolResult(conn.spec.name, tool.name, [], is_error=True, error=message)

        client, generation = conn.client, conn.generation
        if client is None:
            if not await self._restart(conn, generation):
                return failed(f"MCP server {conn.spec.name!r} is down ({conn.failure}); the tool was not called")
            client = conn.client
        try:
            result = await asyncio.wait_for(client.call_tool(tool.name, arguments), limit)
        except asyncio.TimeoutError:
            return failed(f"tool {tool.name!r} on MCP server {conn.spec.name!r} did not answer within {limit:g} s; "
                          "the call was cancelled")
        except Exception as e:  # a protocol error from a live server, or a broken transport
            reason = e.message if isinstance(e, MCPError) else _describe(e)
            if await self._alive(conn):
                return failed(f"MCP server {conn.spec.name!r} refused the call of {tool.name!r}: {reason}")
            conn.failure = reason
            restarted = await self._restart(conn, generation)
            return failed(f"MCP server {conn.spec.name!r} failed during the call of {tool.name!r} ({reason}); "
                          + ("it was restarted, the call was not repeated" if restarted
                             else f"it could not be restarted ({conn.failure})"))
        blocks = [b.model_dump(by_alias=True, mode="json", exclude_none=True) for b in result.content]
        return ToolResult(conn.spec.name, tool.name, blocks, is_error=bool(result.is_error),
                          structured=result.structured_content)

    async def _alive(self, conn: _Connection) -> bool:
        client = conn.client
        if client is None or conn.task is None or conn.task.done():
            return False
        try:
            # a tools/list round trip (ping is gone from the 2026 protocol)
            await asyncio.wait_for(client.list_tools(cache_mode="refresh"), 5)
            return True
        except Exception:  # no answer: the session is gone
            return False

    async def _restart(self, conn: _Connection, generation: int) -> bool:
        conn.restart_lock = conn.restart_lock or asyncio.Lock()
        async with conn.restart_lock:
            if conn.generation != generation:  # another call restarted it meanwhile
                return conn.client is not None
            return await self._reconnect(conn)

    async def _reconnect(self, conn: _Connection) -> bool:
        if conn.restarts >= self.max_restarts:
            conn.failure = f"{conn.failure}; not restarted again after {conn.restarts} restarts"
            return False
        conn.restarts += 1
        reason = conn.failure
        await self._disconnect(conn)
        log.warning("MCP server %r: restarting (%s)", conn.spec.name, reason)
        try:
            await self._connect(conn)
        except Exception as e:
            conn.failure = f"restart failed: {self._why(e)}"
            return False
        return True


async def _list_tools(client: Any) -> list[Any]:
    tools, cursor = [], None
    for _ in range(100):  # a paginator that never ends cannot hang the start
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _tool(server: str, t: Any, function_name: str) -> McpTool:
    wire = t.model_dump(by_alias=True, mode="json", exclude_none=True)
    schema = wire.get("inputSchema") or {"type": "object", "properties": {}}
    params = image_params(schema, wire.get("inputFiles"))
    description = wire.get("description") or wire.get("title") or ""
    return McpTool(server, t.name, function_name, description, schema, params)


def _describe(error: BaseException) -> str:
    """One line for an error, unwrapping the exception groups anyio task groups raise."""
    while getattr(error, "exceptions", None):  # an ExceptionGroup from an anyio task group
        error = error.exceptions[0]
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

