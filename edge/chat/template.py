"""Prompts from chat messages, rendered by the checkpoint's own chat template (never a second copy of it).

`normalize_messages` turns OpenAI-style messages into what the GLM template understands: image parts become
`{"type": "image"}` (the template does not know `image_url` in user turns and would silently drop the
image), tool-call arguments become mappings. It returns the image references in the order the template
places them. `PromptBuilder` renders with a sandboxed jinja2 environment configured as transformers does
(trim/lstrip blocks, a non-escaping `tojson`), splits the text at `<|image|>` and tokenises each text piece
with special tokens parsed: the prompt comes out as segments in order (token ids, or an `ImageRef` where
the image goes); the runtime turns each into an engine chunk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge.engine.chunks import Chunk
from edge.errors import InputError, TemplateError

IMAGE_PLACEHOLDER = "<|image|>"
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ImageRef:
    """One image of a request: where it comes from and its per-image token budget."""

    source: Any  # bytes, a path, or a data: URL (the server has already checked access)
    min_tokens: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class VideoRef:
    """One video of a request: its source and per-request sampling knobs (None: transformers' behaviour)."""

    source: Any  # bytes or a path (the server has already checked access)
    fps: float | None = None  # sampled frames per second of video
    max_frames: int | None = None
    max_tokens: int | None = None  # video token budget


MediaRef = ImageRef | VideoRef
Segment = Chunk | ImageRef | VideoRef  # a prompt in template order: a text chunk, or the medium that goes there
VIDEO_PLACEHOLDER = "<|video|>"
_PLACEHOLDERS = re.compile(r"(<\|image\|>|<\|video\|>)")
VIDEO_KNOBS = ("fps", "max_frames", "max_video_tokens")

DETAIL_MAX_TOKENS = {"low": 256, "high": None, "auto": None}


def _image_ref(part: dict) -> ImageRef:
    if part.get("type") == "image_url" or "image_url" in part:
        spec = part.get("image_url")
        spec = {"url": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
            raise InputError("an image_url part needs image_url.url (a data: URL or an allowed path)")
        detail = spec.get("detail", "auto")
        if detail not in DETAIL_MAX_TOKENS:
            raise InputError(f"image_url.detail is {detail!r}; allowed: low, high, auto")
        max_tokens = spec.get("max_tokens", DETAIL_MAX_TOKENS[detail])
        return ImageRef(spec["url"], spec.get("min_tokens"), max_tokens)
    source = part.get("image")
    if source is None:
        raise InputError("an image part needs an `image` value (bytes, path or data: URL)")
    return ImageRef(source, part.get("min_tokens"), part.get("max_tokens"))


def _video_ref(part: dict) -> VideoRef:
    if part.get("type") == "video_url" or "video_url" in part:
        spec = part.get("video_url")
        spec = {"url": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not spec.get("url"):
            raise InputError("a video_url part needs video_url.url (a data: URL or an allowed path)")
        source = spec["url"]
    else:
        spec, source = part, part.get("video")
        if source is None:
            raise InputError("a video part needs a `video` value (bytes or a path)")
    fps, frames, tokens = (spec.get(k) for k in VIDEO_KNOBS)
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 60):
        raise InputError(f"video fps is {fps!r}; allowed: a number in (0, 60] (sampled frames per second)")
    for name, value in (("max_frames", frames), ("max_video_tokens", tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            raise InputError(f"video {name} is {value!r}; allowed: an integer >= 2")
    return VideoRef(source, fps, frames, tokens)


def _is_video_part(part: Any) -> bool:
    return isinstance(part, dict) and (
        part.get("type") in ("video", "video_url") or "video" in part or "video_url" in part
    )


def _is_image_part(part: Any) -> bool:
    return isinstance(part, dict) and (
        part.get("type") in ("image", "image_url") or "image" in part or "image_url" in part
    )


def _normalize_content(content: Any, role: str, images: list[MediaRef]) -> Any:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise InputError(f"{role} message content must be a string or a list of parts")
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif _is_image_part(part):
            if role == "assistant":
                raise InputError("images in assistant messages are not supported; put them in a user or tool message")
            images.append(_image_ref(part))
            parts.append({"type": "image"})
        elif _is_video_part(part):
            if role != "user":
                raise InputError("videos are supported in user messages only (the model's template renders them there)")
            images.append(_video_ref(part))
            parts.append({"type": "video"})
        elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InputError(f"unsupported {role} content part {kind!r}; allowed: text, image_url, image, "
                             "video_url, video, file")
    return parts


def _normalize_tool_calls(calls: Any) -> list[dict]:
    out = []
    for call in calls or []:
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InputError("each assistant tool_calls entry needs function.name")
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise InputError(f"tool call {fn['name']!r}: arguments are not valid JSON ({e})") from e
        if not isinstance(args, dict):
            raise InputError(f"tool call {fn['name']!r}: arguments must be a JSON object")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def normalize_messages(messages: Sequence[dict]) -> tuple[list[dict], list[MediaRef]]:
    """Template-ready messages and the media (images, videos) they hold, in template order."""
    if not messages:
        raise InputError("messages must not be empty")
    out, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            raise InputError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        role = msg["role"]
        clean = {"role": role, "content": _normalize_content(msg.get("content"), role, images)}
        if role == "assistant":
            if msg.get("tool_calls"):
                clean["tool_calls"] = _normalize_tool_calls(msg["tool_calls"])
            reasoning = msg.get("reasoning_content")
            if isinstance(reasoning, str):
                clean["reasoning_content"] = reasoning
        if role == "tool" and msg.get("tool_call_id") is not None:
            clean["tool_call_id"] = msg["tool_call_id"]
        out.append(clean)
    return out, images


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' override: no HTML escaping, and the keyword arguments chat templates use
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the bundle's chat template does not compile: {e}") from e


class PromptBuilder:
    """Render + split + tokenise. `tokenize(text)` must parse special tokens."""

    def __init__(self, template_source: str, tokenize: Callable[[str], list[int]]):
        self.template = compile_template(template_source)
        self.tokenize = tokenize

    def render(self, messages: list[dict], tools: list[dict] | None = None, enable_thinking: bool = True,
               add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(
                messages=messages, tools=tools or None, enable_thinking=enable_thinking,
                add_generation_prompt=add_generation_prompt,
            )
        except jinja2.TemplateError as e:
            raise TemplateError(f"the chat template rejected these messages: {e}") from e

    def build(self, messages: Sequence[dict], tools: list[dict] | None = None, enable_thinking: bool = True
              ) -> tuple[list[Segment], list[MediaRef], str]:
        """(segments, media, rendered text): the prompt in order (text pieces tokenised into text chunks, each
        image or video as its reference), the media alone, and the text."""
        clean, media = normalize_messages(messages)
        text = self.render(clean, tools, enable_thinking)
        pieces = _PLACEHOLDERS.split(text)  # text, placeholder, text, placeholder, ..., text
        placed = pieces[1::2]
        wanted = [IMAGE_PLACEHOLDER if isinstance(m, ImageRef) else VIDEO_PLACEHOLDER for m in media]
        if placed != wanted:
            raise TemplateError(
                f"the chat template placed {placed.count(IMAGE_PLACEHOLDER)} image(s) and "
                f"{placed.count(VIDEO_PLACEHOLDER)} video(s) but the messages hold {wanted.count(IMAGE_PLACEHOLDER)} "
                f"and {wanted.count(VIDEO_PLACEHOLDER)}; media in this position are not supported by the model's template"
            )
        segments: list[Segment] = []
        for i, piece in enumerate(pieces[0::2]):
            if piece:
                segments.append(Chunk.text(self.tokenize(piece)))
            if i < len(media):
                segments.append(media[i])
        return segments, media, text
