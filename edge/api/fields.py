"""Field names across dialects: error locations as request field paths, and plan errors renamed.

The dialects (`edge.api.responses`, `edge.api.anthropic`) plan through chat completions, whose errors name
chat-completions fields (`response_format`, `stop`, `tools[0].function.parameters`); `renamed(error, params,
words)` rewrites such an error's param and message into the dialect's own fields. `field_path(loc, body)`
turns a pydantic error location into the field path of the request body; `validation_error(exc)` is the
(message, param) of a request that failed validation, with that path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError

from edge.api.gate import validation_message
from edge.errors import RequestError

Renames = Sequence[tuple[str, str]]  # (regular expression, replacement)


def _rename(text: str, renames: Renames) -> str:
    for pattern, replacement in renames:
        text = re.sub(pattern, replacement, text)
    return text


def renamed(error: RequestError, params: Renames, words: Renames) -> RequestError:
    """The same refusal with its param rewritten by `params` and its message by `words`."""
    param = _rename(error.param, params) if error.param else error.param
    new = RequestError(_rename(str(error), words), param, error.code, error.http_status)
    new.__cause__ = error.__cause__
    return new


def field_path(loc: tuple, body: Any) -> str:
    """pydantic's error location as the request's field path (`messages[0].content[1].source.media_type`).

    Walks the request body beside the location, so the union tags pydantic inserts are left out: a
    discriminator value (the node's own `type` or `role`), a class name, or a type label (`str`, `list[...]`)."""
    parts: list[str] = []
    node, tagged = body, False  # tagged: this node's discriminator value was passed already
    for key in loc:
        if key == "body" and not parts:
            continue
        if isinstance(key, int):
            parts.append(f"[{key}]")
            node = node[key] if isinstance(node, list) and 0 <= key < len(node) else None
            tagged = False
            continue
        if not tagged and isinstance(node, dict) and key in (node.get("type"), node.get("role")):
            tagged = True
            continue
        if "[" in key or key in ("str", "int", "float", "bool", "none") or key[:1].isupper() or key.startswith("function-"):
            continue
        parts.append(("." if parts else "") + key)
        node = node.get(key) if isinstance(node, dict) else None
        tagged = False
    return "".join(parts)


def validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) for a request that failed validation, the param as a field path of the body."""
    errors = exc.errors()
    if not errors or any(e.get("type") == "json_invalid" for e in errors):
        return validation_message(exc)
    # the most specific problem: union alternatives that failed on their type are less useful
    first = max(errors, key=lambda e: (len(e.get("loc", ())), e.get("type") not in ("string_type", "list_type")))
    param = field_path(tuple(first.get("loc", ())), exc.body) or None
    return f"invalid request{f' at {param}' if param else ''}: {first.get('msg')}", param
