"""Image handles: how the model names an image of the conversation in a tool call.

Convention (used only when MCP tools are in play; without them no message is touched, so the prompt is
byte-identical to a plain request):
- Every image of the conversation gets a short handle in order of first appearance: `img1`, `img2`, ...
  for images sent by the user or returned by tools; the same bytes seen again keep their first handle. A
  video frame is named by its video and timestamp, `vid1@2.5s`. Handles are a pure function of the
  conversation so far, so they stay stable across turns and requests that resend the history.
- The model is told a handle by a text part `[img1]` placed right before the image, in user and tool
  messages alike (`label_messages`). Each image parameter of a tool says in its description that it takes
  a handle, and the parameter shown to the model is a plain string (`model_schema`).
- An image parameter is a string property whose schema has `x-mcp-file` or is listed in the tool's
  `inputFiles` (MCP draft file input, SEP-2356), `contentEncoding: base64`, a `contentMediaType` of
  `image/*`, or a name mentioning image/img/photo/picture/frame/screenshot (arrays of such strings too).
- Before the call the host replaces each handle by the form the schema asks for (`substitute`):
  file inputs: `data:<mime>;name=<handle>.<ext>;base64,<data>` (checked against `accept` and `maxSize`);
  `contentEncoding: base64`: the bare base64; anything else: a `data:<mime>;base64,<data>` URI. A value in
  an image parameter that looks like a handle but names no image is refused (ToolInputError); any other
  value (a URL the model typed) passes unchanged.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.errors import ToolInputError

HANDLE = re.compile(r"^(img[1-9][0-9]*|vid[1-9][0-9]*@[0-9]+(\.[0-9]+)?s)$")
_IMAGE_NAME = re.compile(r"image|img|photo|picture|frame|screenshot", re.I)
HANDLE_NOTE = "Pass an image handle such as img1: the [imgN] label written before each image of the conversation."

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"),
)
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/bmp": "bmp", "image/tiff": "tif",
        "image/webp": "webp"}


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type an image's first bytes announce, or None for bytes no image format starts with."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    return None


@dataclass(frozen=True)
class ImageEntry:
    handle: str
    data: bytes
    mime: str
    origin: str  # "user", "tool:<name>", "video"


class ImageHandles:
    """The images of one conversation by handle (see the module doc)."""

    def __init__(self):
        self._entries: dict[str, ImageEntry] = {}
        self._by_digest: dict[str, str] = {}
        self._images = 0

    def add(self, data: bytes, origin: str) -> str:
        digest = hashlib.sha256(data).hexdigest()
        handle = self._by_digest.get(digest)
        if handle is None:
            self._images += 1
            handle = f"img{self._images}"
            self._store(handle, data, origin, digest)
        return handle

    def add_frame(self, video: int, seconds: float, data: bytes) -> str:
        """A video frame's handle: `vid{video}@{seconds:.1f}s` (video counts from 1, as the prompt's timestamps)."""
        handle = f"vid{video}@{seconds:.1f}s"
        self._store(handle, data, "video", hashlib.sha256(data).hexdigest())
        return handle

    def _store(self, handle: str, data: bytes, origin: str, digest: str) -> None:
        self._entries[handle] = ImageEntry(handle, data, sniff_image_type(data) or "application/octet-stream", origin)
        self._by_digest.setdefault(digest, handle)

    def get(self, handle: str) -> ImageEntry:
        entry = self._entries.get(handle)
        if entry is None:
            known = ", ".join(self._entries) or "none"
            raise ToolInputError(f"image handle {handle!r} names no image of this conversation (known: {known})")
        return entry

    def __contains__(self, handle: str) -> bool:
        return handle in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def handles(self) -> list[str]:
        return list(self._entries)


# --- telling the model ----------------------------------------------------------------------------


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and (part.get("type") in ("image", "image_url") or "image" in part or "image_url" in part)


def _image_source(part: dict) -> Any:
    if part.get("type") == "image_url" or "image_url" in part:
        spec = part.get("image_url")
        return spec.get("url") if isinstance(spec, dict) else spec
    return part.get("image")


def label_messages(messages: Sequence[dict], handles: ImageHandles, read: Callable[[Any], bytes]) -> list[dict]:
    """Copies of `messages` with `[handle]` before every user/tool image, each image's source replaced by its
    bytes (`read(source)` for anything that is not bytes yet), and every image registered in `handles`.
    Idempotent: a label already in place is not written twice."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if msg.get("role") not in ("user", "tool") or not isinstance(content, list):
            out.append(msg)
            continue
        parts = []
        for part in content:
            if not _is_image_part(part):
                parts.append(part)
                continue
            source = _image_source(part)
            data = source if isinstance(source, (bytes, bytearray)) else read(source)
            handle = handles.add(bytes(data), "user" if msg["role"] == "user" else "tool")
            label = {"type": "text", "text": f"[{handle}]"}
            if parts and parts[-1] == label:  # a conversation labelled before (an agent's history)
                parts.pop()
            image = {"type": "image", "image": bytes(data)}
            for key in ("min_tokens", "max_tokens"):
                if part.get(key) is not None:
                    image[key] = part[key]
            parts += [label, image]
        out.append({**msg, "content": parts})
    return out


# --- image parameters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageParam:
    form: str  # "file" | "base64" | "data_uri"
    array: bool = False
    accept: tuple[str, ...] = ()  # file inputs: MIME patterns like image/*
    max_size: int | None = None


def _param(name: str, schema: Any, file_inputs: dict) -> ImageParam | None:
    if not isinstance(schema, dict):
        return None
    array = schema.get("type") == "array" and isinstance(schema.get("items"), dict)
    item = schema["items"] if array else schema
    if item.get("type", "string") != "string":
        return None
    declared = item.get("x-mcp-file") if isinstance(item.get("x-mcp-file"), dict) else file_inputs.get(name)
    if declared is not None or "x-mcp-file" in item:
        declared = declared if isinstance(declared, dict) else {}
        accept = declared.get("accept") or ()
        max_size = declared.get("maxSize")
        return ImageParam("file", array, tuple(a for a in accept if isinstance(a, str)),
                          max_size if isinstance(max_size, int) else None)
    if item.get("contentEncoding") == "base64":
        return ImageParam("base64", array)
    media = item.get("contentMediaType")
    if (isinstance(media, str) and media.startswith("image/")) or _IMAGE_NAME.search(name):
        return ImageParam("data_uri", array)
    return None


def image_params(input_schema: dict, input_files: dict | None = None) -> dict[str, ImageParam]:
    """The top-level properties of a tool's input schema that take images."""
    props = input_schema.get("properties") if isinstance(input_schema, dict) else None
    if not isinstance(props, dict):
        return {}
    files = input_files if isinstance(input_files, dict) else {}
    found = {name: _param(name, schema, files) for name, schema in props.items()}
    return {name: p for name, p in found.items() if p is not None}


def model_schema(input_schema: dict, params: dict[str, ImageParam], handles: Sequence[str] | None = None) -> dict:
    """The schema the model sees: image parameters become handle strings (their encoding keywords dropped,
    the handle note added); with `handles`, restricted to those (for a forcing grammar, never the prompt)."""
    schema = copy.deepcopy(input_schema) if isinstance(input_schema, dict) else {"type": "object", "properties": {}}
    props = schema.get("properties") or {}
    for name, param in params.items():
        old = props[name]
        described = (old["items"] if param.array else old).get("description")
        item = {"type": "string", "description": f"{described} {HANDLE_NOTE}" if described else HANDLE_NOTE}
        if handles:
            item["enum"] = list(handles)
        if param.array:
            props[name] = {"type": "array", "items": item, **{k: old[k] for k in ("description", "minItems", "maxItems")
                                                             if k in old}}
        else:
            props[name] = item
    return schema


def _accepts(accept: Sequence[str], mime: str) -> bool:
    return not accept or any(a == mime or (a.endswith("/*") and mime.startswith(a[:-1])) or a == "*/*" for a in accept)


def encode_image(entry: ImageEntry, param: ImageParam, where: str) -> str:
    data = base64.b64encode(entry.data).decode("ascii")
    if param.form == "base64":
        return data
    if param.form == "file":
        if not _accepts(param.accept, entry.mime):
            raise ToolInputError(f"{where}: {entry.handle} is {entry.mime}; the tool accepts {', '.join(param.accept)}")
        if param.max_size is not None and len(entry.data) > param.max_size:
            raise ToolInputError(f"{where}: {entry.handle} is {len(entry.data)} bytes; the tool accepts at most "
                                 f"{param.max_size}")
        name = f"{entry.handle.replace('@', '-')}.{_EXT.get(entry.mime, 'bin')}"
        return f"data:{entry.mime};name={name};base64,{data}"
    return f"data:{entry.mime};base64,{data}"


def substitute(arguments: dict, params: dict[str, ImageParam], handles: ImageHandles) -> tuple[dict, list[str]]:
    """(arguments with image handles replaced, the handles used); see the module doc."""
    out, used = dict(arguments), []

    def one(value: Any, param: ImageParam, where: str) -> Any:
        if not isinstance(value, str) or not HANDLE.match(value.strip()):
            return value
        entry = handles.get(value.strip())
        used.append(entry.handle)
        return encode_image(entry, param, where)

    for name, param in params.items():
        if name not in out:
            continue
        value = out[name]
        if param.array and isinstance(value, list):
            out[name] = [one(v, param, f"argument {name}[{i}]") for i, v in enumerate(value)]
        else:
            out[name] = one(value, param, f"argument {name}")
    return out, used
