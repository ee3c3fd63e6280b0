"""MCP tool results -> the parts of a `tool` message the model reads (text and images).

`tool_parts(result, handles, resolve, max_image_bytes)` maps each content block of a `ToolResult`:
- `text` -> a text part; `image` (base64 + mimeType) -> `[imgN]` and an image part, the image registered
  in `handles` so later tool calls can name it;
- `resource_link` / `resource` (EmbeddedResource) with an image MIME type -> the same, the link's bytes read
  through `resolve(uri)` (the caller's media policy: the server's refuses files outside --media-dir and
  http without --allow-remote-media); a text resource -> its text; anything else -> a one-line note;
- `audio` -> a note (the model has no ears); structured content alone -> its JSON.
A block that cannot be used (invalid base64, over `max_image_bytes`, bytes that are no image, a MIME type
that is not an image's, a link the policy refuses) becomes an `error: ...` text part and is listed in
`errors`; the other blocks still go through. A failed call (`result.error`) is one `error: ...` part.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.chat.handles import ImageHandles, sniff_image_type
from edge.chat.mcp_host import ToolResult
from edge.errors import GlmEdgeError, ToolImageTooLargeError, ToolResultError


@dataclass(frozen=True)
class ReturnedImage:
    handle: str
    mime: str
    bytes: int
    width: int
    height: int
    data: bytes = field(default=b"", repr=False, compare=False)


@dataclass
class ToolParts:
    parts: list[dict] = field(default_factory=list)
    images: list[ReturnedImage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def check_image(data: bytes, declared: str | None, max_bytes: int, what: str) -> tuple[str, int, int]:
    """(mime, width, height) of bytes a tool returned, or ToolResultError saying what is wrong."""
    if declared is not None and not declared.startswith("image/"):
        raise ToolResultError(f"{what} has MIME type {declared!r}, not an image type")
    if len(data) > max_bytes:
        raise ToolImageTooLargeError(f"{what} is {len(data)} bytes; images from tools may be at most {max_bytes} bytes")
    mime = sniff_image_type(data)
    if mime is None:
        raise ToolResultError(f"{what} is labelled {declared or 'an image'} but its bytes are not an image")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ToolResultError(f"{what} ({mime}) cannot be read: {e}") from e
    return mime, width, height


def _b64(data: Any, what: str) -> bytes:
    if not isinstance(data, str):
        raise ToolResultError(f"{what} has no base64 data")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ToolResultError(f"{what} is not valid base64 ({e})") from e


def tool_parts(result: ToolResult, handles: ImageHandles, resolve: Callable[[str], bytes] | None,
               max_image_bytes: int) -> ToolParts:
    out = ToolParts()
    if result.error is not None:
        out.parts.append({"type": "text", "text": f"error: {result.error}"})
        out.errors.append(result.error)
        return out

    def image(data: bytes, declared: str | None, what: str) -> None:
        mime, width, height = check_image(data, declared, max_image_bytes, what)
        handle = handles.add(data, f"tool:{result.tool}")
        out.parts += [{"type": "text", "text": f"[{handle}]"}, {"type": "image", "image": data}]
        out.images.append(ReturnedImage(handle, mime, len(data), width, height, data))

    for i, block in enumerate(result.content):
        kind = block.get("type")
        what = f"content[{i}] ({kind}) of {result.tool}"
        try:
            if kind == "text":
                out.parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image":
                image(_b64(block.get("data"), what), block.get("mimeType") or None, what)
            elif kind == "resource_link":
                _link(block, what, resolve, image, out)
            elif kind == "resource":
                _embedded(block.get("resource") or {}, what, image, out)
            elif kind == "audio":
                out.parts.append({"type": "text", "text": f"[{what}: audio omitted, this model cannot hear]"})
            else:
                raise ToolResultError(f"{what}: unknown content type {kind!r}")
        except GlmEdgeError as e:
            out.parts.append({"type": "text", "text": f"error: {e}"})
            out.errors.append(str(e))
    if not result.content and result.structured is not None:
        out.parts.append({"type": "text", "text": json.dumps(result.structured, ensure_ascii=False)})
    if not out.parts:
        out.parts.append({"type": "text", "text": "(the tool returned nothing)"})
    return out


def _link(block: dict, what: str, resolve, image, out: ToolParts) -> None:
    uri, mime = block.get("uri"), block.get("mimeType")
    if not isinstance(uri, str):
        raise ToolResultError(f"{what} has no uri")
    if not (isinstance(mime, str) and mime.startswith("image/")):
        name = block.get("name") or uri
        out.parts.append({"type": "text", "text": f"[resource {name}: {uri}{f' ({mime})' if mime else ''}]"})
        return
    if resolve is None:
        raise ToolResultError(f"{what}: links are not followed here (no media policy was given)")
    image(resolve(uri), mime, f"{what} {uri[:120]}")


def _embedded(resource: dict, what: str, image, out: ToolParts) -> None:
    mime, uri = resource.get("mimeType"), resource.get("uri", "")
    if "text" in resource:
        out.parts.append({"type": "text", "text": str(resource["text"])})
    elif isinstance(mime, str) and mime.startswith("image/"):
        image(_b64(resource.get("blob"), what), mime, what)
    else:
        out.parts.append({"type": "text", "text": f"[binary resource {uri} ({mime or 'unknown type'}) omitted]"})
