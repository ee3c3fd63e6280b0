"""A real MCP server for the tool-loop tests, on the official SDK: `python mcp_vision_server.py stdio` or
`python mcp_vision_server.py http PORT` (streamable HTTP on 127.0.0.1).

Good tools: crop(image, box) -> ImageContent, snapshot() -> ImageContent, read_text(image) -> text,
linked() -> a ResourceLink to $MCP_TEST_LINK, embedded() -> the snapshot as an EmbeddedResource.
Bad ones for failure tests: crash() exits mid-call, hang() never returns, malformed() sends invalid base64,
not_image() sends text bytes as image/png, huge() a PNG of $MCP_TEST_HUGE_BYTES or more.
Every image a tool receives is logged as one JSON line {tool, sha256, bytes, mime} to $MCP_TEST_LOG.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import time
from typing import Annotated, Literal

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer
from PIL import Image
from pydantic import Field

server = MCPServer("vision-test")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_content(data: bytes, mime: str = "image/png") -> types.ImageContent:
    return types.ImageContent(data=base64.b64encode(data).decode(), mime_type=mime)


def _receive(tool: str, value: str) -> bytes:
    """Decode a data URI argument and log what arrived."""
    header, _, payload = value.partition(",")
    if not header.startswith("data:") or not header.endswith(";base64"):
        raise ValueError(f"expected a data: URI, got {value[:40]!r}")
    data = base64.b64decode(payload, validate=True)
    log = os.environ.get("MCP_TEST_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"tool": tool, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                "mime": header[5:].split(";")[0]}) + "\n")
    return data


# Coordinates on the model's 0..1000 grid, from a short list so that a grammar-forced random model writes a
# bounded call (llama-cpp-python's schema converter does not bound integers).
Coordinate = Literal[0, 250, 500, 750, 1000]


@server.tool()
def crop(image: str, box: Annotated[list[Coordinate], Field(min_length=4, max_length=4)]) -> types.ImageContent:
    """Crop an image to box [x1, y1, x2, y2], coordinates 0..1000 relative to its width and height."""
    picture = Image.open(io.BytesIO(_receive("crop", image))).convert("RGB")
    w, h = picture.size
    (x1, x2), (y1, y2) = sorted(box[0::2]), sorted(box[1::2])
    left, top = min(x1 * w // 1000, w - 1), min(y1 * h // 1000, h - 1)
    right, bottom = max(x2 * w // 1000, left + 1), max(y2 * h // 1000, top + 1)
    return _image_content(_png(picture.crop((left, top, right, bottom))))


@server.tool()
def snapshot() -> types.ImageContent:
    """Take a picture with the camera."""
    with open(os.environ["MCP_TEST_SNAPSHOT"], "rb") as f:
        return _image_content(f.read())


@server.tool()
def read_text(image: str) -> str:
    """Read the text written in an image."""
    data = _receive("read_text", image)
    width, height = Image.open(io.BytesIO(data)).size
    return f"TEXT[{hashlib.sha256(data).hexdigest()[:12]} {width}x{height}]"


@server.tool()
def linked() -> types.ResourceLink:
    """A picture stored on disk, returned by reference."""
    path = os.environ["MCP_TEST_LINK"]
    return types.ResourceLink(uri=f"file://{path}", name=os.path.basename(path), mime_type="image/png")


@server.tool()
def embedded() -> types.EmbeddedResource:
    """The camera picture as an embedded resource."""
    with open(os.environ["MCP_TEST_SNAPSHOT"], "rb") as f:
        blob = types.BlobResourceContents(uri="camera://last", mime_type="image/png", blob=base64.b64encode(f.read()).decode())
    return types.EmbeddedResource(resource=blob)


@server.tool()
def crash() -> str:
    """Dies in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answers."""
    await anyio.sleep(3600)
    return "late"


@server.tool()
def malformed() -> types.ImageContent:
    """An image whose data is not base64."""
    return types.ImageContent(data="%%% this is not base64 %%%", mime_type="image/png")


@server.tool()
def not_image() -> types.ImageContent:
    """Text bytes labelled image/png."""
    return _image_content(b"hello, I am plain text and not a picture at all")


@server.tool()
def huge() -> types.ImageContent:
    """A PNG larger than the host accepts."""
    size = int(os.environ.get("MCP_TEST_HUGE_BYTES", "100000"))
    noise = os.urandom(size)
    side = int((size / 3) ** 0.5) + 1
    picture = Image.frombytes("RGB", (side, side), (noise * 2)[: side * side * 3])
    return _image_content(_png(picture))


@server.tool()
def slow_ok(seconds: float) -> str:
    """Sleeps, then answers."""
    time.sleep(seconds)
    return "done"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run()
    else:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
