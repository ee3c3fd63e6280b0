"""edge/chat/parse.py: whole-output results, streaming equivalence at every split, malformed input, boxes."""

import json
import random
import re

import pytest

from edge.chat.boxes import BOX_CLOSE, BOX_OPEN, Box, box_to_pixels, find_boxes
from edge.chat.parse import (
    TAGS,
    ChatDelta,
    ParseIssue,
    StreamParser,
    ToolCall,
    ToolCallDelta,
    new_call_id,
    parse,
)


def _tool(name, properties):
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": properties}}}


WEATHER = _tool("get_weather", {
    "city": {"type": "string"},
    "days": {"type": "integer"},
    "zip": {"type": "string", "description": "postal code, may start with 0"},
    "units": {"type": "string", "enum": ["c", "f"]},
    "detailed": {"type": "boolean"},
    "options": {"type": "object", "properties": {"lang": {"type": "string"}}},
    "tags": {"type": "array", "items": {"type": "string"}},
    "ratio": {"type": "number"},
    "note": {"type": ["string", "null"]},
    "level": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
})
TIME = _tool("get_time", {})
SEARCH = _tool("search", {"query": {"type": "string"}, "limit": {"type": "integer"}})
TOOLS = [WEATHER, TIME, SEARCH]


def ids():
    n = iter(range(1, 1000))
    return lambda: f"call_{next(n):024x}"


def call(i, name, args):
    return ToolCall(f"call_{i:024x}", name, json.dumps(args, ensure_ascii=False))


# name: (text, reasoning flag, tools, image sizes, expected reasoning, content, [(name, args)])
CASES = {
    "think_full": (
        "<think>The user greets me.</think>\nHello! How can I help?", True, None, None,
        "The user greets me.", "Hello! How can I help?", []),
    "think_open_omitted": (
        "\nLet me think about 2+2.\nIt is 4.</think>\nThe answer is 4.", True, None, None,
        "Let me think about 2+2.\nIt is 4.", "The answer is 4.", []),
    "thinking_off_plain": (
        "Plain answer: a < b, x<y, <b>bold</b>, <thin> and </tool> are text.", False, None, None,
        "", "Plain answer: a < b, x<y, <b>bold</b>, <thin> and </tool> are text.", []),
    "thinking_off_stray_think": (
        "<think>hidden</think>\n\nVisible.", False, None, None, "hidden", "Visible.", []),
    "empty_reasoning": ("</think>\nJust content.", True, None, None, "", "Just content.", []),
    "reasoning_truncated": ("still thinking < about it", True, None, None, "still thinking < about it", "", []),
    "content_then_think": (
        "Intro.<think>second thoughts</think>\nOutro.", False, None, None, "second thoughts", "Intro.\nOutro.", []),
    "zero_args": ("<tool_call>get_time</tool_call>", False, TOOLS, None, "", "", [("get_time", {})]),
    "zero_args_newline": ("<tool_call>get_time\n</tool_call>", False, TOOLS, None, "", "", [("get_time", {})]),
    "one_arg_after_think": (
        "<think>Need the weather.</think>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n"
        "<arg_value>Paris</arg_value>\n</tool_call>", True, TOOLS, None,
        "Need the weather.", "", [("get_weather", {"city": "Paris"})]),
    "three_args_typed": (
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>New York</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>zip</arg_key>\n<arg_value>02139</arg_value>\n"
        "</tool_call>", False, TOOLS, None,
        "", "", [("get_weather", {"city": "New York", "days": 3, "zip": "02139"})]),
    "typed_everything": (
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>42</arg_value>\n"
        "<arg_key>options</arg_key>\n<arg_value>{\"lang\": \"fr\", \"hourly\": [1, 2], \"x\": {\"y\": null}}</arg_value>\n"
        "<arg_key>tags</arg_key>\n<arg_value>[\"a\", \"b\"]</arg_value>\n"
        "<arg_key>detailed</arg_key>\n<arg_value>true</arg_value>\n"
        "<arg_key>ratio</arg_key>\n<arg_value>0.5</arg_value>\n"
        "<arg_key>note</arg_key>\n<arg_value>null</arg_value>\n"
        "<arg_key>units</arg_key>\n<arg_value>f</arg_value>\n"
        "<arg_key>level</arg_key>\n<arg_value>7</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>soon</arg_value>\n"
        "</tool_call>", False, TOOLS, None, "", "",
        [("get_weather", {"city": "42", "options": {"lang": "fr", "hourly": [1, 2], "x": {"y": None}},
                          "tags": ["a", "b"], "detailed": True, "ratio": 0.5, "note": None, "units": "f",
                          "level": 7, "days": "soon"})]),
    "python_literal_bool": (
        "<tool_call>get_weather\n<arg_key>detailed</arg_key>\n<arg_value>True</arg_value>\n"
        "<arg_key>note</arg_key>\n<arg_value>nothing</arg_value>\n</tool_call>", False, TOOLS, None, "", "",
        [("get_weather", {"detailed": True, "note": "nothing"})]),
    "two_calls_after_content": (
        "I'll check both cities.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "</tool_call>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n</tool_call>",
        False, TOOLS, None, "", "I'll check both cities.",
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
    "no_schema_guessing": (
        "<tool_call>lookup\n<arg_key>n</arg_key>\n<arg_value>7</arg_value>\n<arg_key>flag</arg_key>\n"
        "<arg_value>false</arg_value>\n<arg_key>q</arg_key>\n<arg_value>hello world</arg_value>\n"
        "<arg_key>obj</arg_key>\n<arg_value>{\"a\": [1, null]}</arg_value>\n<arg_key>quoted</arg_key>\n"
        "<arg_value>\"x\"</arg_value>\n<arg_key>nan</arg_key>\n<arg_value>NaN</arg_value>\n</tool_call>",
        False, None, None, "", "",
        [("lookup", {"n": 7, "flag": False, "q": "hello world", "obj": {"a": [1, None]}, "quoted": '"x"',
                     "nan": "NaN"})]),
    "name_then_tags_no_newlines": (
        "<tool_call>search<arg_key>query</arg_key><arg_value>cats</arg_value><arg_key>limit</arg_key>"
        "<arg_value>5</arg_value></tool_call>", False, TOOLS, None, "", "",
        [("search", {"query": "cats", "limit": 5})]),
    "spaces_instead_of_newlines": (  # seen from GLM-4.5 in the wild
        "Let me look: <tool_call>ls <arg_key>dirPath</arg_key> <arg_value>backend</arg_value> </tool_call>",
        False, None, None, "", "Let me look:", [("ls", {"dirPath": "backend"})]),
    "text_after_call": (
        "Before.\n<tool_call>get_time</tool_call>\nAfter.", False, TOOLS, None, "", "Before.\n\nAfter.",
        [("get_time", {})]),
    "raw_multiline_string": (
        "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>line1\n  line2 </arg_value>\n</tool_call>",
        False, TOOLS, None, "", "", [("search", {"query": "line1\n  line2 "})]),
    "json_body_call": (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', False, TOOLS, None,
        "", "", [("get_weather", {"city": "Oslo"})]),
    "tool_call_closes_reasoning": (
        "I should call it.<tool_call>get_time</tool_call>", True, TOOLS, None,
        "I should call it.", "", [("get_time", {})]),
    "boxes_mixed_brackets": (
        f"The cat{BOX_OPEN}[100,200,500,800]{BOX_CLOSE} and the dog {BOX_OPEN}[[10, 20, 30, 40]]{BOX_CLOSE}.",
        False, None, [(640, 480)], "",
        f"The cat{BOX_OPEN}[100,200,500,800]{BOX_CLOSE} and the dog {BOX_OPEN}[[10, 20, 30, 40]]{BOX_CLOSE}.", []),
    "boxes_parens_and_lists": (
        f"<think>Find them.</think>\nObjects:\n1. car: {BOX_OPEN}(0,0,1000,1000){BOX_CLOSE}\n"
        f"- **person** {BOX_OPEN}[[1,2,3,4],[5,6,7,8]]{BOX_CLOSE}", True, None, [(100, 50), (200, 100)], "Find them.",
        f"Objects:\n1. car: {BOX_OPEN}(0,0,1000,1000){BOX_CLOSE}\n- **person** {BOX_OPEN}[[1,2,3,4],[5,6,7,8]]{BOX_CLOSE}",
        []),
    "stop_tokens": (
        "<think>a<|user|>b</think>c<|endoftext|>", True, None, None, "ab", "c", []),
    "stop_token_after_call": (
        "<tool_call>get_time\n</tool_call><|observation|>", False, TOOLS, None, "", "", [("get_time", {})]),
}

# name: (text, reasoning, tools, expected content, [(name, args)], [issue kinds])
MALFORMED = {
    "unclosed_at_end": (
        "Checking.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par", False, TOOLS,
        "Checking.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par", [], ["unclosed_tool_call"]),
    "key_without_value": (
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n</tool_call>", False, TOOLS,
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n</tool_call>", [], ["missing_arg_value"]),
    "unknown_tool": (
        "<tool_call>delete_all\n<arg_key>x</arg_key>\n<arg_value>1</arg_value>\n</tool_call>", False, TOOLS,
        "<tool_call>delete_all\n<arg_key>x</arg_key>\n<arg_value>1</arg_value>\n</tool_call>", [], ["unknown_tool"]),
    "empty_tool_list": (
        "<tool_call>get_time</tool_call>", False, [], "<tool_call>get_time</tool_call>", [], ["unknown_tool"]),
    "bad_then_good": (
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n</tool_call>\n<tool_call>get_time\n</tool_call>", False, TOOLS,
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n</tool_call>", [("get_time", {})], ["missing_arg_value"]),
    "nested_open": (
        "<tool_call>get_weather\n<arg_key>city</arg_key><tool_call>get_time</tool_call>", False, TOOLS,
        "<tool_call>get_weather\n<arg_key>city</arg_key>", [("get_time", {})], ["unclosed_tool_call"]),
    "empty_call": ("<tool_call></tool_call>", False, None, "<tool_call></tool_call>", [], ["invalid_tool_call"]),
    "sentence_as_name": (
        "<tool_call>I will call the weather tool\n</tool_call>", False, None,
        "<tool_call>I will call the weather tool\n</tool_call>", [], ["invalid_tool_call"]),
    "unclosed_value": (
        "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>cats\n</tool_call>", False, TOOLS,
        "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>cats\n</tool_call>", [], ["invalid_tool_call"]),
    "text_between_args": (
        "<tool_call>search\n<arg_key>query</arg_key><arg_value>x</arg_value> oops </tool_call>", False, TOOLS,
        "<tool_call>search\n<arg_key>query</arg_key><arg_value>x</arg_value> oops </tool_call>", [],
        ["invalid_tool_call"]),
    "stray_close_tags": ("Hi</tool_call> there</arg_value>", False, None, "Hi there", [], ["stray_tag", "stray_tag"]),
    "stray_think_close_in_content": ("blah</think>answer", False, None, "blahanswer", [], ["stray_tag"]),
}


def _args(case):
    text, reasoning, tools, sizes = case[:4]
    return text, reasoning, tools, sizes


def _run_stream(text, chunks, reasoning, tools, sizes=None):
    parser = StreamParser(reasoning, tools, image_sizes=sizes, id_factory=ids())
    deltas = [parser.feed(c) for c in chunks] + [parser.finish()]
    return parser.result, deltas


def _assemble(deltas):
    """Concatenate deltas like an OpenAI streaming client; checks name-before-arguments on the way."""
    reasoning, content, errors, calls = "", "", [], {}
    for d in deltas:
        reasoning += d.reasoning
        content += d.content
        errors += d.errors
        for tc in d.tool_calls:
            if tc.index not in calls:
                assert tc.id is not None and tc.name and tc.arguments == "", f"first delta of a call must be id+name: {tc}"
                calls[tc.index] = [tc.id, tc.name, ""]
            else:
                assert tc.id is None and tc.name is None, f"name streamed twice: {tc}"
                calls[tc.index][2] += tc.arguments
    complete = [ToolCall(*calls[i]) for i in sorted(calls) if calls[i][2]]
    return reasoning, content, errors, complete


def _chunkings(text, seed_count=12):
    yield [text]
    yield list(text)
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    for seed in range(seed_count):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12)))) if len(text) > 1 else []
        bounds = [0, *cuts, len(text)]
        yield [text[a:b] for a, b in zip(bounds, bounds[1:])]


# --- whole outputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_parse_whole_output(name):
    text, reasoning, tools, sizes, want_reasoning, want_content, want_calls = CASES[name]
    got = parse(text, reasoning, tools, image_sizes=sizes, id_factory=ids())
    assert got.reasoning == want_reasoning
    assert got.content == want_content
    assert got.tool_calls == [call(i + 1, n, a) for i, (n, a) in enumerate(want_calls)]
    assert got.errors == []
    for tag in TAGS:
        assert tag not in got.content and tag not in got.reasoning


def test_typed_arguments_exact_json():
    got = parse(CASES["three_args_typed"][0], False, TOOLS, id_factory=ids())
    assert got.tool_calls[0].arguments == '{"city": "New York", "days": 3, "zip": "02139"}'
    assert got.tool_calls[0].to_openai() == {
        "id": "call_" + "0" * 23 + "1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "New York", "days": 3, "zip": "02139"}'}}


def test_default_ids_are_openai_style_and_unique():
    got = parse(CASES["two_calls_after_content"][0], False, TOOLS)
    assert [bool(re.fullmatch(r"call_[0-9a-f]{24}", c.id)) for c in got.tool_calls] == [True, True]
    assert got.tool_calls[0].id != got.tool_calls[1].id
    assert re.fullmatch(r"call_[0-9a-f]{24}", new_call_id())


def test_non_ascii_arguments_kept_readable():
    got = parse("<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>東京 café</arg_value>\n</tool_call>", False, TOOLS)
    assert got.tool_calls[0].arguments == '{"query": "東京 café"}'


# --- streaming equivalence -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*CASES, *MALFORMED])
def test_streaming_equals_whole_parse_at_every_split(name):
    if name in CASES:
        text, reasoning, tools, sizes = _args(CASES[name])
    else:
        text, reasoning, tools = MALFORMED[name][:3]
        sizes = None
    whole = parse(text, reasoning, tools, image_sizes=sizes, id_factory=ids())
    for chunks in _chunkings(text):
        result, deltas = _run_stream(text, chunks, reasoning, tools, sizes)
        assert result == whole, chunks
        reasoning_s, content_s, errors_s, calls_s = _assemble(deltas)
        assert (reasoning_s, content_s, errors_s) == (whole.reasoning, whole.content, whole.errors), chunks
        assert calls_s == whole.tool_calls, chunks
        if name in CASES:
            for d in deltas:
                for tag in TAGS:
                    assert tag not in d.content and tag not in d.reasoning


def test_tool_name_streams_before_call_closes():
    parser = StreamParser(False, TOOLS, id_factory=ids())
    assert parser.feed("Sure.\n<tool_call>get_wea").tool_calls == []
    first = parser.feed("ther\n<arg_key>ci")
    assert first.tool_calls == [ToolCallDelta(0, "call_" + "0" * 23 + "1", "get_weather", "")]
    assert parser.feed("ty</arg_key>\n<arg_value>Paris</arg_value>\n").tool_calls == []
    last = parser.feed("</tool_call>")
    assert last.tool_calls == [ToolCallDelta(0, None, None, '{"city": "Paris"}')]
    assert parser.finish() == ChatDelta()


def test_plain_text_is_not_held_back():
    parser = StreamParser(False)
    assert parser.feed("The answer is 4").content == "The answer is 4"
    assert parser.feed(" and a <").content == " and a"  # "<" may start a tag; the space waits for text
    assert parser.feed("b").content == " <b"
    assert parser.feed("\n\n").content == ""
    assert parser.feed("<|endoftext|>").content == ""
    assert parser.finish().content == ""
    assert parser.result.content == "The answer is 4 and a <b"


def test_reasoning_streams_before_close():
    parser = StreamParser(True)
    assert parser.feed("<think>\nStep one").reasoning == "Step one"
    assert parser.feed(". </thi").reasoning == "."
    d = parser.feed("nk>\nDone")
    assert (d.reasoning, d.content) == ("", "Done")


def test_feed_after_finish_is_a_bug():
    parser = StreamParser(False)
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


# --- malformed output ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_is_reported_not_raised(name):
    text, reasoning, tools, want_content, want_calls, want_kinds = MALFORMED[name]
    got = parse(text, reasoning, tools, id_factory=ids())
    assert got.content == want_content
    assert [(c.name, json.loads(c.arguments)) for c in got.tool_calls] == want_calls
    assert [e.kind for e in got.errors] == want_kinds
    assert all(isinstance(e, ParseIssue) and e.message for e in got.errors)


def test_unknown_tool_never_streams_its_name():
    text = MALFORMED["unknown_tool"][0]
    for chunks in _chunkings(text, seed_count=3):
        _, deltas = _run_stream(text, chunks, False, TOOLS)
        assert [tc for d in deltas for tc in d.tool_calls] == []


def test_rejected_call_after_streamed_name_keeps_later_indices_distinct():
    text = MALFORMED["bad_then_good"][0]
    _, deltas = _run_stream(text, list(text), False, TOOLS)
    streamed = [tc for d in deltas for tc in d.tool_calls]
    assert [(tc.index, tc.name, tc.arguments) for tc in streamed] == [
        (0, "get_weather", ""), (1, "get_time", ""), (1, None, "{}")]
    assert [e.kind for d in deltas for e in d.errors] == ["missing_arg_value"]


def test_issue_keeps_raw_text():
    got = parse("<tool_call>get_weather\n<arg_key>city</arg_key>", False, TOOLS)
    assert got.errors == [ParseIssue("unclosed_tool_call", "<tool_call> without </tool_call>",
                                     "<tool_call>get_weather\n<arg_key>city</arg_key>")]


# --- boxes -----------------------------------------------------------------------------------------


def test_box_pixels_on_original_size():
    assert box_to_pixels([100, 200, 500, 800], 640, 480) == (64.0, 96.0, 320.0, 384.0)
    assert box_to_pixels((0, 0, 1000, 1000), 1919, 1081) == (0.0, 0.0, 1919.0, 1081.0)


def test_boxes_structured_from_parse():
    text, reasoning, tools, sizes = _args(CASES["boxes_mixed_brackets"])
    got = parse(text, reasoning, tools, image_sizes=sizes)
    assert got.boxes == [
        Box("The cat", (100, 200, 500, 800), (64.0, 96.0, 320.0, 384.0), 0),
        Box("and the dog", (10, 20, 30, 40), (6.4, 9.6, 19.2, 19.2), 0),
    ]
    text, reasoning, tools, sizes = _args(CASES["boxes_parens_and_lists"])
    got = parse(text, reasoning, tools, image_sizes=sizes)
    assert got.boxes == [
        Box("car", (0, 0, 1000, 1000), (0.0, 0.0, 200.0, 100.0), 1),
        Box("person", (1, 2, 3, 4), (0.2, 0.2, 0.6, 0.4), 1),
        Box("person", (5, 6, 7, 8), (1.0, 0.6, 1.4, 0.8), 1),
    ]


def test_find_boxes_variants():
    text = (f"{BOX_OPEN}[ 1 , 2 , 3 , 4 ]{BOX_CLOSE} Red car: {BOX_OPEN}((10,20),(30,40)){BOX_CLOSE}"
            f" It is here. Big tree - {BOX_OPEN}12,34,56,78{BOX_CLOSE} bad {BOX_OPEN}[1,2]{BOX_CLOSE}")
    got = find_boxes(text)
    assert [(b.label, b.box_1000, b.box_px, b.image_index) for b in got] == [
        ("", (1, 2, 3, 4), None, None),
        ("Red car", (10, 20, 30, 40), None, None),
        ("Big tree", (12, 34, 56, 78), None, None),
    ]
    two = find_boxes(text, [(1000, 1000), (10, 20)], image_index=0)
    assert [b.box_px for b in two][:1] == [(1.0, 2.0, 3.0, 4.0)] and {b.image_index for b in two} == {0}
    with pytest.raises(ValueError):
        find_boxes(text, [(10, 10)], image_index=1)
    assert find_boxes("no boxes [1,2,3,4] here") == []


def test_boxes_stay_in_content_and_not_in_reasoning_boxes():
    got = parse(f"<think>maybe {BOX_OPEN}[1,2,3,4]{BOX_CLOSE}</think>ok", False, image_sizes=[(10, 10)])
    assert got.reasoning == f"maybe {BOX_OPEN}[1,2,3,4]{BOX_CLOSE}" and got.boxes == []
