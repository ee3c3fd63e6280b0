"""Parse GLM-4.6V-Flash generated text into reasoning, content, tool calls and grounding boxes.

(About 500 lines on purpose: one incremental state machine over one stream; its scanner, states and
results read best together, and every split point is tested in tests/test_parse.py.)

Contract
- Pure: text in, dataclasses out; no model, no I/O, no module-level mutable state.
- Streaming-safe: `StreamParser.feed` accepts the detokenised output split at ANY character boundary.
  Text that could still be the start of a tag (`<too`) is held back until it is known not to be one,
  so tag text never reaches a reasoning or content delta. Feeding all chunks then `finish()` gives the
  same `result` as `parse(whole_text)`.
- Never raises on model output: malformed tool calls are reported in `errors` (`ParseIssue`) and their
  raw text is kept in `content`.

Routing
- `reasoning=True` (the prompt ended with `<think>` or thinking is on): everything is reasoning until
  `</think>`; an explicit opening `<think>` is swallowed. `<tool_call>` before `</think>` ends the
  reasoning implicitly. `reasoning=False` (prompt ended `<think></think>\\n`): everything is content,
  but a stray `<think>...</think>` is still routed to reasoning.
- `reasoning` and `content` are each the concatenation of their segments with leading and trailing
  whitespace removed (the newline after `</think>`, the newline before `<tool_call>` and between calls).
  Streaming holds back only a trailing whitespace run until non-space text follows.
- `<tool_call>{name}\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>...</tool_call>`: the name is
  streamed first (`ToolCallDelta(index, id, name, arguments="")`) as soon as the name line ends, the
  arguments JSON follows in one delta at `</tool_call>`. Values are typed by the tool's JSON schema
  (see `_convert_value`). A `{"name":..,"arguments":..}` JSON body is accepted too (no early name).
- Stop tokens `<|endoftext|>`, `<|user|>`, `<|observation|>` are removed wherever they appear.
  Stray tool tags outside a call are removed and reported (`stray_tag`).
- Grounding: box tags `<|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>` stay in `content` exactly as
  written (clients that render them, `edge.chat.boxes.find_boxes` and re-prompting need them); `result.boxes` is the
  structured extra: coordinates are 0..1000 relative to the image, `box_px` = v/1000 * size.

A rejected call whose name was already streamed gets no arguments delta; `errors` says why, and the
indices of later calls keep counting (streamed indices can skip the rejected one).
"""

from __future__ import annotations

import ast
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from edge.chat.boxes import Box, find_boxes

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
KEY_OPEN, KEY_CLOSE = "<arg_key>", "</arg_key>"
VALUE_OPEN, VALUE_CLOSE = "<arg_value>", "</arg_value>"
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
TAGS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE, KEY_OPEN, KEY_CLOSE, VALUE_OPEN, VALUE_CLOSE, *STOP_TOKENS)
_MAX_TAG = max(map(len, TAGS))

# ParseIssue.kind values
UNCLOSED_TOOL_CALL = "unclosed_tool_call"
MISSING_ARG_VALUE = "missing_arg_value"
INVALID_TOOL_CALL = "invalid_tool_call"
UNKNOWN_TOOL = "unknown_tool"
STRAY_TAG = "stray_tag"


@dataclass(frozen=True)
class ParseIssue:
    """Something in the output that could not be used as the format intends; `raw` is the text involved."""

    kind: str
    message: str
    raw: str = ""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as OpenAI's `function.arguments`

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCallDelta:
    """OpenAI-style streamed call: first delta has id+name and arguments "", later ones id/name None."""

    index: int
    id: str | None
    name: str | None
    arguments: str




@dataclass
class ChatDelta:
    """A streamed fragment of parsed output (also the runtime's streaming event); `errors` holds what could not
    be used as the format intends (a malformed tool call), reported rather than turned into content."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    errors: list[ParseIssue] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls or self.errors)


@dataclass
class ParsedOutput:
    reasoning: str
    content: str
    tool_calls: list[ToolCall]
    boxes: list[Box]
    errors: list[ParseIssue]


def new_call_id() -> str:
    """`call_` + 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


class _Malformed(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


class _Scanner:
    """Splits text into (tag, text) events; holds back a suffix that may still become a tag."""

    def __init__(self) -> None:
        self._buf = ""

    def push(self, text: str, final: bool = False) -> list[tuple[str | None, str]]:
        buf = self._buf + text
        events: list[tuple[str | None, str]] = []
        start = i = 0
        hold = len(buf)
        while (j := buf.find("<", i)) >= 0:
            tag = next((t for t in TAGS if buf.startswith(t, j)), None)
            if tag is not None:
                if j > start:
                    events.append((None, buf[start:j]))
                events.append((tag, tag))
                start = i = j + len(tag)
            elif not final and len(buf) - j < _MAX_TAG and any(t.startswith(buf[j:]) for t in TAGS):
                hold = j
                break
            else:
                i = j + 1
        if hold > start:
            events.append((None, buf[start:hold]))
        self._buf = buf[hold:]
        return events


class _Channel:
    """Accumulates one output stream, stripped at both ends, emitting as early as that allows."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._pending_ws = ""

    def push(self, text: str) -> str:
        if not self.parts:
            text = text.lstrip()
        body = text.rstrip()
        if not body:
            if self.parts:
                self._pending_ws += text
            return ""
        out = self._pending_ws + body
        self._pending_ws = text[len(body):]
        self.parts.append(out)
        return out

    def text(self) -> str:
        return "".join(self.parts)


_REASONING, _CONTENT, _TOOL = "reasoning", "content", "tool"
_NAME_END = re.compile(r"[\n<]")
_VALID_NAME = re.compile(r"[^\s<>{}\[\]()\"',;]{1,256}")
_HEAD_LIMIT = 4096  # stop looking for an early name after this much undecided text (decided at close)


class StreamParser:
    """Incremental parser: `feed(chunk) -> Delta` any number of times, then `finish() -> Delta`."""

    def __init__(
        self,
        reasoning: bool,
        tools: Sequence[dict] | None = None,
        *,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self._state = _REASONING if reasoning else _CONTENT
        self._schemas = _index_tools(tools)
        self._image_sizes = list(image_sizes) if image_sizes else None
        self._new_id = id_factory or new_call_id
        self._scanner = _Scanner()
        self._reasoning, self._content = _Channel(), _Channel()
        self._calls: list[ToolCall] = []
        self._errors: list[ParseIssue] = []
        self._streamed = 0  # tool-call indices handed out
        self._finished = False
        self._body: list[str] = []
        self._head = ""
        self._name_state = ""  # "" undecided, "emitted", "rejected", "json", "late"
        self._call_id = ""
        self._call_index = 0
        self._reject: _Malformed | None = None

    def feed(self, text: str) -> ChatDelta:
        if self._finished:
            raise RuntimeError("StreamParser.feed() called after finish()")
        delta = ChatDelta()
        for tag, piece in self._scanner.push(text):
            self._handle(tag, piece, delta)
        return delta

    def finish(self) -> ChatDelta:
        """Flush held-back text; an unclosed `<tool_call>` is reported and kept as content."""
        if self._finished:
            return ChatDelta()
        delta = ChatDelta()
        for tag, piece in self._scanner.push("", final=True):
            self._handle(tag, piece, delta)
        if self._state == _TOOL:
            self._close_call(delta, closed=False)
        self._finished = True
        return delta

    @property
    def result(self) -> ParsedOutput:
        """Everything parsed so far (complete after `finish()`)."""
        content = self._content.text()
        return ParsedOutput(
            reasoning=self._reasoning.text(),
            content=content,
            tool_calls=list(self._calls),
            boxes=find_boxes(content, self._image_sizes),
            errors=list(self._errors),
        )

    # --- internals ------------------------------------------------------------------------------

    def _handle(self, tag: str | None, piece: str, delta: ChatDelta) -> None:
        if tag in STOP_TOKENS:
            return
        if self._state == _TOOL:
            if tag == CALL_CLOSE:
                self._close_call(delta, closed=True)
            elif tag == CALL_OPEN:  # a new call before the previous one closed
                self._close_call(delta, closed=False)
                self._open_call()
            else:
                self._body.append(piece)
                self._maybe_stream_name(piece, delta)
        elif tag is None:
            if self._state == _REASONING:
                delta.reasoning += self._reasoning.push(piece)
            else:
                delta.content += self._content.push(piece)
        elif tag == THINK_OPEN:
            self._state = _REASONING
        elif tag == THINK_CLOSE and self._state == _REASONING:
            self._state = _CONTENT
        elif tag == CALL_OPEN:
            self._open_call()
        else:
            self._issue(delta, STRAY_TAG, f"{tag} outside the place the format allows it; removed", tag)

    def _issue(self, delta: ChatDelta, kind: str, message: str, raw: str) -> None:
        issue = ParseIssue(kind, message, raw)
        self._errors.append(issue)
        delta.errors.append(issue)

    def _open_call(self) -> None:
        self._state = _TOOL
        self._body, self._head, self._name_state, self._reject = [], "", "", None

    def _maybe_stream_name(self, piece: str, delta: ChatDelta) -> None:
        if self._name_state:
            return
        self._head += piece
        head = self._head.lstrip()
        if not head:
            return
        if head[0] == "{":
            self._name_state = "json"
        elif (m := _NAME_END.search(head)) is not None:
            self._decide_name(head[: m.start()].strip(), delta)
        elif len(self._head) > _HEAD_LIMIT:
            self._name_state = "late"

    def _decide_name(self, name: str, delta: ChatDelta) -> bool:
        try:
            self._check_name(name)
        except _Malformed as bad:
            self._name_state, self._reject = "rejected", bad
            return False
        self._name_state = "emitted"
        self._call_id, self._call_index = self._new_id(), self._streamed
        self._streamed += 1
        delta.tool_calls.append(ToolCallDelta(self._call_index, self._call_id, name, ""))
        return True

    def _check_name(self, name: str) -> None:
        if not _VALID_NAME.fullmatch(name):
            raise _Malformed(INVALID_TOOL_CALL, f"tool call name {name[:80]!r} is not a function name")
        if self._schemas is not None and name not in self._schemas:
            known = ", ".join(sorted(self._schemas)) or "none"
            raise _Malformed(UNKNOWN_TOOL, f"tool {name!r} is not among the request's tools ({known})")

    def _close_call(self, delta: ChatDelta, closed: bool) -> None:
        body = "".join(self._body)
        raw = CALL_OPEN + body + (CALL_CLOSE if closed else "")
        self._state = _CONTENT
        try:
            if not closed:
                raise _Malformed(UNCLOSED_TOOL_CALL, "<tool_call> without </tool_call>")
            if self._reject is not None:
                raise self._reject
            name, args = _parse_call_body(body, self._schemas)
            if self._name_state != "emitted":
                self._check_name(name)  # raises before any delta is produced
                self._decide_name(name, delta)
        except _Malformed as bad:
            self._issue(delta, bad.kind, bad.message, raw)
            delta.content += self._content.push(raw)
            return
        arguments = json.dumps(args, ensure_ascii=False)
        self._calls.append(ToolCall(self._call_id, name, arguments))
        delta.tool_calls.append(ToolCallDelta(self._call_index, None, None, arguments))


def parse(
    text: str,
    reasoning: bool,
    tools: Sequence[dict] | None = None,
    *,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    id_factory: Callable[[], str] | None = None,
) -> ParsedOutput:
    """Whole-output parse; identical to feeding `text` to a `StreamParser` in any chunks, then finish()."""
    parser = StreamParser(reasoning, tools, image_sizes=image_sizes, id_factory=id_factory)
    parser.feed(text)
    parser.finish()
    return parser.result


# --- tool-call bodies -------------------------------------------------------------------------------


def _index_tools(tools: Sequence[dict] | None) -> dict[str, dict] | None:
    """name -> parameters schema, from OpenAI tool dicts (a bare {"name", "parameters"} also works)."""
    if tools is None:
        return None
    out: dict[str, dict] = {}
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params if isinstance(params, dict) else {}
    return out


_WS = re.compile(r"\s*")


def _parse_call_body(body: str, schemas: dict[str, dict] | None) -> tuple[str, dict[str, Any]]:
    """`name\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>...` (or a JSON object) -> (name, args)."""
    text = body.lstrip()
    if text.startswith("{"):
        return _parse_json_call(text)
    m = _NAME_END.search(text)
    name, rest = (text[: m.start()], text[m.start():]) if m else (text, "")
    name = name.strip()
    props = ((schemas or {}).get(name) or {}).get("properties")
    props = props if isinstance(props, dict) else {}
    args: dict[str, Any] = {}
    pos = 0
    while (pos := _WS.match(rest, pos).end()) < len(rest):
        if not rest.startswith(KEY_OPEN, pos):
            raise _Malformed(INVALID_TOOL_CALL, f"expected <arg_key> in tool call {name!r}, got {rest[pos:pos + 40]!r}")
        end = rest.find(KEY_CLOSE, pos)
        key = rest[pos + len(KEY_OPEN): end].strip() if end >= 0 else ""
        if end < 0 or not key or "<" in key:
            raise _Malformed(INVALID_TOOL_CALL, f"unterminated or empty <arg_key> in tool call {name!r}")
        pos = _WS.match(rest, end + len(KEY_CLOSE)).end()
        if not rest.startswith(VALUE_OPEN, pos):
            raise _Malformed(MISSING_ARG_VALUE, f"<arg_key>{key}</arg_key> in tool call {name!r} has no <arg_value>")
        end = rest.find(VALUE_CLOSE, pos)
        value = rest[pos + len(VALUE_OPEN): end] if end >= 0 else ""
        if end < 0 or KEY_OPEN in value or VALUE_OPEN in value:
            raise _Malformed(INVALID_TOOL_CALL, f"<arg_value> of {key!r} in tool call {name!r} is not closed")
        args[key] = _convert_value(value, _schema_types(props.get(key)))
        pos = end + len(VALUE_CLOSE)
    return name, args


def _parse_json_call(text: str) -> tuple[str, dict[str, Any]]:
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        obj = None
    name = obj.get("name") if isinstance(obj, dict) else None
    args = obj.get("arguments", obj.get("parameters", {})) if isinstance(obj, dict) else None
    if isinstance(args, str):
        ok, args = _loads(args)
    if not isinstance(name, str) or not isinstance(args, dict):
        raise _Malformed(INVALID_TOOL_CALL, "tool call body is neither name+arg tags nor a {name, arguments} object")
    return name, args


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


def _literal(text: str) -> tuple[bool, Any]:
    """Python-literal fallback (True, None, single quotes), kept only if it is JSON-representable."""
    try:
        value = ast.literal_eval(text.strip())
        return True, json.loads(json.dumps(value, allow_nan=False))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


_PY_TO_JSON = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
               (type(None), "null"), (dict, "object"), (list, "array"))


def _json_type(value: Any) -> str:
    return next(name for py, name in _PY_TO_JSON if isinstance(value, py))


def _schema_types(schema: Any) -> set[str] | None:
    """The JSON types a property schema allows; None when the schema does not say."""
    if not isinstance(schema, dict):
        return None
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {x for x in t if isinstance(x, str)} or None
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            subs = [_schema_types(s) for s in schema[key]]
            return None if any(s is None for s in subs) else set().union(*subs) or None
    values = schema["enum"] if isinstance(schema.get("enum"), list) else [schema["const"]] if "const" in schema else None
    if values:
        try:
            return {_json_type(v) for v in values}
        except StopIteration:
            return None
    if "properties" in schema:
        return {"object"}
    if "items" in schema:
        return {"array"}
    return None


def _type_ok(value: Any, types: set[str]) -> bool:
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def _convert_value(raw: str, types: set[str] | None) -> Any:
    """Type an `<arg_value>` by its schema.

    string only -> raw text unchanged; no schema -> JSON numbers/booleans/null/objects/arrays are decoded,
    anything else stays raw; other types -> JSON (then Python literal), falling back to the raw text.
    A union with string (["string", "null"]) decodes only to one of the other allowed types.
    """
    if types == {"string"}:
        return raw
    ok, value = _loads(raw)
    if types is None:
        return value if ok and not isinstance(value, str) else raw
    if not ok:
        ok, value = _literal(raw)
    if not ok:
        return raw
    if "string" in types:
        return value if _type_ok(value, types - {"string"}) else raw
    return value


__all__ = [
    "ChatDelta", "ParseIssue", "ParsedOutput", "StreamParser", "ToolCall", "ToolCallDelta",
    "new_call_id", "parse", "STOP_TOKENS", "TAGS",
]
