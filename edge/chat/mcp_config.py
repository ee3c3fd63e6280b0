"""`--mcp-config FILE`: the MCP servers glm-edge may use, in the format MCP clients share.

    {"mcpServers": {
        "vision": {"command": "python", "args": ["tools/vision_server.py"], "env": {"LOG": "1"}},
        "search": {"url": "http://127.0.0.1:8931/mcp", "headers": {"Authorization": "Bearer ..."}}
    }}

A server is either a command started as a child process speaking MCP over stdio (`command`, `args`, `env`,
`cwd`) or a streamable-HTTP endpoint (`url`, `headers`). Optional per server: `type` ("stdio", "http" or
"streamable-http"; inferred when absent; "sse" is refused), `timeout` (seconds per tool call) and
`disabled` (true: skipped). Any other key is an error, so a typo never silently changes what runs.
Server names are 1-64 of `[A-Za-z0-9_-]` (they become `server_label`s in requests).

Only this file, read at launch, can start processes or name URLs; requests choose among these servers.
A command server gets the MCP SDK's minimal environment (HOME, PATH, SHELL, TERM, USER, LOGNAME) plus its
`env`, not the whole environment of glm-edge (API keys stay out unless listed).
`load_mcp_config(path)` / `parse_mcp_config(obj)` return `{name: McpServerSpec}` or raise McpConfigError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import McpConfigError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEYS = {"type", "command", "args", "env", "cwd", "url", "headers", "timeout", "disabled"}
_TYPES = {"stdio": "stdio", "http": "http", "streamable-http": "http", "streamable_http": "http",
          "streamableHttp": "http"}


@dataclass(frozen=True)
class McpServerSpec:
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # seconds per tool call; None: the host's default

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"


def _strings(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise McpConfigError(f"{where} must be an object of string values")
    return dict(value)


def _server(name: str, entry: Any) -> McpServerSpec | None:
    where = f"mcpServers.{name}"
    if not _NAME.match(name):
        raise McpConfigError(f"{where}: a server name must be 1-64 letters, digits, '_' or '-'")
    if not isinstance(entry, dict):
        raise McpConfigError(f"{where} must be an object with `command` or `url`")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise McpConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    if entry.get("disabled") is True:
        return None
    kind = entry.get("type")
    if kind is not None and kind not in _TYPES:
        hint = " (the older SSE transport is not supported; use the server's streamable-HTTP endpoint)" if kind == "sse" else ""
        raise McpConfigError(f"{where}.type is {kind!r}; allowed: stdio, http, streamable-http{hint}")
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        raise McpConfigError(f"{where} needs exactly one of `command` (stdio) or `url` (streamable HTTP)")
    if kind is not None and _TYPES[kind] != ("stdio" if has_command else "http"):
        raise McpConfigError(f"{where}.type is {kind!r} but the entry has `{'command' if has_command else 'url'}`")
    timeout = entry.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise McpConfigError(f"{where}.timeout must be a positive number of seconds")
    if has_command:
        for key in ("url", "headers"):
            if key in entry:
                raise McpConfigError(f"{where}.{key} belongs to URL servers; this one has a `command`")
        command, args = entry["command"], entry.get("args", [])
        if not isinstance(command, str) or not command:
            raise McpConfigError(f"{where}.command must be a non-empty string")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise McpConfigError(f"{where}.args must be a list of strings")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise McpConfigError(f"{where}.cwd must be a string")
        return McpServerSpec(name, command=command, args=tuple(args), env=_strings(entry.get("env", {}), f"{where}.env"),
                             cwd=cwd, timeout=timeout)
    for key in ("args", "env", "cwd"):
        if key in entry:
            raise McpConfigError(f"{where}.{key} belongs to command servers; this one has a `url`")
    url = entry["url"]
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise McpConfigError(f"{where}.url must be an http:// or https:// URL")
    return McpServerSpec(name, url=url, headers=_strings(entry.get("headers", {}), f"{where}.headers"), timeout=timeout)


def parse_mcp_config(data: Any) -> dict[str, McpServerSpec]:
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers"), dict):
        raise McpConfigError('an MCP config must be a JSON object {"mcpServers": {NAME: {...}}}')
    servers = {}
    for name, entry in data["mcpServers"].items():
        spec = _server(name, entry)
        if spec is not None:
            servers[name] = spec
    return servers


def load_mcp_config(path: str | Path) -> dict[str, McpServerSpec]:
    """Read and check an MCP config file (see the module doc)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise McpConfigError(f"cannot read MCP config {str(path)!r}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise McpConfigError(f"MCP config {str(path)!r} is not valid JSON: {e}") from e
    servers = parse_mcp_config(data)
    if not servers:
        raise McpConfigError(f"MCP config {str(path)!r} names no enabled server")
    return servers
