"""Output constraints as GBNF grammars for llama.cpp's grammar sampler (`SamplingParams.grammar`).

Used by the server for `response_format` (json_object, json_schema) and for forced tool calls
(`tool_choice: "required"` or a named function). JSON rules come from llama-cpp-python's own
JSON-schema converter (`llama_cpp.llama_grammar.SchemaConverter`, through edge.engine.llama); the tool-call rules write the model's
native format, `<tool_call>{name}\\n<arg_key>k</arg_key>\\n<arg_value>v</arg_value>\\n...</tool_call>`,
with string values raw and other values as JSON typed by the tool's parameter schema.

Thinking: a grammar constrains the whole generated text, so with thinking on the output would have to
start with the reasoning. `build_grammar(..., think=True)` lets an optional `<think>`, reasoning text (any
text not containing `</`) and `</think>` come first. The server turns thinking off for constrained requests
unless the request asks for it explicitly (see README, "API").

Pure functions; unsupported or invalid schemas raise `GrammarError` (an InputError: HTTP 400).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from edge.engine.llama import SchemaConverter
from edge.errors import GrammarError


_RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
# Errors the third-party converter raises on schemas it does not support (it uses assert and dict lookups).
_CONVERTER_ERRORS = (AssertionError, KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError)

THINK_RULES = (
    'c-think ::= "<think>"? c-think-text "</think>" "\\n"?\n'
    'c-think-text ::= ( [^<] | "<" [^/] )*'
)


def _lit(text: str) -> str:
    """A GBNF string literal."""
    return json.dumps(text, ensure_ascii=False)


def _rule_name(*parts: str) -> str:
    return "-".join(_RULE_CHARS.sub("-", p).strip("-") or "x" for p in parts).lower()


def _converter() -> SchemaConverter:
    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _visit(conv: SchemaConverter, schema: Any, name: str, param: str) -> str:
    if not isinstance(schema, dict):
        raise GrammarError(f"{param}: a JSON schema must be an object, got {type(schema).__name__}", param)
    try:
        schema = conv.resolve_refs(schema, "request")
        return conv.visit(schema, name)
    except _CONVERTER_ERRORS as e:
        detail = str(e) or type(e).__name__
        raise GrammarError(f"{param}: this JSON schema cannot be enforced ({detail[:200]})", param) from e


def json_rules(conv: SchemaConverter, schema: dict | None, param: str = "response_format") -> str:
    """Add rules for a JSON document (any object when `schema` is None); return the start rule's name."""
    return _visit(conv, schema if schema is not None else {"type": "object"}, "c-json", param)


def _tool_list(tools: Sequence[dict]) -> list[tuple[str, dict]]:
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise GrammarError(f"tools[{i}] needs function.name", f"tools[{i}]")
        params = fn.get("parameters") or {}
        out.append((fn["name"], params))
    return out


def _value_rule(conv: SchemaConverter, rules: dict, schema: Any, name: str, param: str) -> str:
    """An <arg_value> body: raw text for strings, JSON for other types (as the parser reads them back)."""
    if not isinstance(schema, dict) or not schema:
        return "c-raw"
    if schema.get("type") == "string" and "enum" not in schema and "const" not in schema:
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        if isinstance(lo, int) or isinstance(hi, int):
            lo = lo if isinstance(lo, int) and lo >= 0 else 0
            hi = f"{hi}" if isinstance(hi, int) and hi >= lo else ""
            rules[name] = f"[^<]{{{lo},{hi}}}"
            return name
        return "c-raw"
    values = schema.get("enum") if isinstance(schema.get("enum"), list) else None
    if values is None and "const" in schema:
        values = [schema["const"]]
    if values and all(isinstance(v, str) for v in values):
        rules[name] = " | ".join(_lit(v) for v in values)
        return name
    return _visit(conv, schema, name, param)


def _call_rule(conv: SchemaConverter, rules: dict, index: int, name: str, params: Any) -> str:
    param = f"tools[{index}].function.parameters"
    if not isinstance(params, dict):
        raise GrammarError(f"{param} must be a JSON schema object", param)
    props = params.get("properties") or {}
    if not isinstance(props, dict):
        raise GrammarError(f"{param}.properties must be an object", param)
    required = params.get("required") or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise GrammarError(f"{param}.required must be a list of property names", param)
    base = _rule_name("c-call", str(index))
    parts = []
    ordered = [k for k in props if k in required] + [k for k in props if k not in required]
    for j, key in enumerate(ordered):
        value = _value_rule(conv, rules, props[key], _rule_name(base, "v", str(j)), param)
        arg = f'"<arg_key>" {_lit(key)} "</arg_key>" "\\n"? "<arg_value>" {value} "</arg_value>" "\\n"?'
        parts.append(arg if key in required else f"( {arg} )?")
    rules[base] = " ".join([f'"<tool_call>" {_lit(name)} "\\n"'] + parts + ['"</tool_call>"'])
    return base


def tool_rules(conv: SchemaConverter, rules: dict, tools: Sequence[dict], only: str | None, parallel: bool) -> str:
    """Rules for one forced call of `only`, or for one or more (`parallel`) calls of any tool."""
    listed = _tool_list(tools)
    names = [n for n, _ in listed]
    if only is not None and only not in names:
        raise GrammarError(f"tool_choice names function {only!r}, which is not among the tools ({', '.join(names)})",
                           "tool_choice")
    rules["c-raw"] = "[^<]*"
    calls = [_call_rule(conv, rules, i, n, p) for i, (n, p) in enumerate(listed) if only is None or n == only]
    rules["c-call"] = " | ".join(calls)
    rules["c-calls"] = 'c-call ( "\\n"? c-call )*' if parallel and only is None else "c-call"
    return "c-calls"


def build_grammar(*, json_schema: dict | None = None, json_mode: bool = False, tools: Sequence[dict] | None = None,
                  tool_only: str | None = None, tool_forced: bool = False, parallel_tool_calls: bool = True,
                  think: bool = False) -> str | None:
    """The GBNF for a request, or None when nothing is constrained.

    json_mode / json_schema: the answer is one JSON document. tool_forced: the answer is tool call(s)
    (`tool_only` names the one function allowed). Both: either a JSON answer or tool calls.
    think: an optional reasoning block may come first (for requests with thinking on).
    """
    want_json = json_mode or json_schema is not None
    if not want_json and not tool_forced:
        return None
    conv = _converter()
    rules: dict[str, str] = {}
    alternatives = []
    if want_json:
        alternatives.append(json_rules(conv, json_schema))
    if tool_forced or (want_json and tools):
        alternatives.append(tool_rules(conv, rules, tools or [], tool_only, parallel_tool_calls))
    body = " | ".join(alternatives)
    lines = [f"root ::= {'c-think ' if think else ''}( {body} )"]
    lines += [f"{k} ::= {v}" for k, v in rules.items()]
    if think:
        lines.append(THINK_RULES)
    lines.append(conv.format_grammar())
    return "\n".join(_strict_json_chars(line) for line in lines) + "\n"


# The converter's string character rule lets raw control characters into JSON strings (invalid JSON);
# llama.cpp's own newer converter excludes them, as this does.
_CHAR_RULE = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def _strict_json_chars(text: str) -> str:
    return "\n".join(_CHAR_RULE if line.startswith("char ::= ") else line for line in text.split("\n"))
