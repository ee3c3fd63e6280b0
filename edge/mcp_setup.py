"""What the CLI and the server call to use MCP tools: start the host of an --mcp-config, and a media resolver.

    host = start_mcp_host("mcp.json")                        # McpHost, started; close() it at exit
    resolve = media_resolver(MediaPolicy(media_dir=..., allow_remote=...))
    done = run_agent(runtime, messages, host, resolve=resolve)

`media_resolver(policy)` gives the synchronous `resolve(uri) -> bytes` the agent uses for links in tool
results (and user images given by path or URL): it applies the same policy as request images (files only
under --media-dir, http(s) only with --allow-remote-media). The agent runs synchronously (call it from a
worker thread in async code); the resolver runs the policy's async fetch on a private event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from edge.chat.mcp_host import McpHost
from edge.media import MediaPolicy

log = logging.getLogger(__name__)


def start_mcp_host(path: str | Path, *, call_timeout: float = 60.0, connect_timeout: float = 30.0) -> McpHost:
    """Read an --mcp-config file, start every server in it and log the tools each offers."""
    host = McpHost.from_config(path, call_timeout=call_timeout, connect_timeout=connect_timeout).start()
    for server in host.specs:
        names = ", ".join(t.name for t in host.tools([server])) or "no tools"
        log.info("MCP server %s: %s", server, names)
    return host


def media_resolver(policy: MediaPolicy) -> Callable[[str], bytes]:
    def resolve(uri: str) -> bytes:
        return asyncio.run(policy.fetch(uri))

    return resolve
