"""Pydantic models of the OpenAI Responses API request (`POST /v1/responses`) as this server accepts it.

Unknown fields are ignored (as OpenAI does); fields we know but cannot honour are declared here and refused
by `edge.api.responses` with a 400 that says why (`previous_response_id`, `conversation`, `background`,
`top_logprobs`, tools other than `function` and `mcp`). Input items: messages (`input_text`, `input_image`,
and `output_text` / `refusal` in assistant turns), `function_call`, `function_call_output` (a string or
text and image parts), `reasoning`. Numbers are finite.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from edge.api.schemas import MAX_INT


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class InputText(_Model):
    type: Literal["input_text"]
    text: str


class InputImage(_Model):
    type: Literal["input_image"]
    image_url: str | None = Field(None, min_length=1, description="a data: URL, a path under --media-dir, or http(s)")
    file_id: str | None = Field(None, description="refused: this server keeps no files")
    detail: Literal["low", "high", "auto"] = "auto"


class InputFile(_Model):
    type: Literal["input_file"]


class OutputText(_Model):
    type: Literal["output_text"]
    text: str


class Refusal(_Model):
    type: Literal["refusal"]
    refusal: str


InputPart = Annotated[InputText | InputImage | InputFile, Field(discriminator="type")]
MessagePart = Annotated[InputText | InputImage | InputFile | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Model):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[MessagePart]


class FunctionCallItem(_Model):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None


class FunctionCallOutputItem(_Model):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputPart]


class SummaryText(_Model):
    type: Literal["summary_text"]
    text: str


class ReasoningText(_Model):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(_Model):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = []
    content: list[ReasoningText] | None = None


class OtherItem(_Model):
    """Any other item kind (item_reference, mcp_call, web_search_call, ...): refused by the planner, by name."""

    type: str


def _by_type(members: dict[str, type], other: type, default: str | None = None) -> Any:
    """A union discriminated by `type` (a missing type is `default`); unknown kinds go to `other`. The tags are
    the class names, which error paths leave out (see edge.api.dialects.field_path)."""

    def tag(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        return (members.get(kind) or other).__name__

    union = tuple(Annotated[m, Tag(m.__name__)] for m in (*members.values(), other))
    return Annotated[Union[union], Discriminator(tag)]


InputItem = _by_type({"message": MessageItem, "function_call": FunctionCallItem,
                      "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem},
                     OtherItem, default="message")


class FunctionTool(_Model):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class McpTool(_Model):
    """OpenAI's remote MCP tool; served only from servers configured at launch (see edge.api.responses)."""

    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    server_url: str | None = None
    allowed_tools: list[str] | dict[str, Any] | None = None
    require_approval: str | dict[str, Any] | None = None


class OtherTool(_Model):
    """Hosted tools (web_search, file_search, ...): refused by the planner, by name."""

    type: str


Tool = _by_type({"function": FunctionTool, "mcp": McpTool}, OtherTool)


class NamedFunction(_Model):
    type: Literal["function"]
    name: str = Field(min_length=1)


class NamedMcp(_Model):
    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    name: str | None = None


class Reasoning(_Model):
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class FormatText(_Model):
    type: Literal["text"]


class FormatJsonObject(_Model):
    type: Literal["json_object"]


class FormatJsonSchema(_Model):
    type: Literal["json_schema"]
    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Model):
    format: Annotated[FormatText | FormatJsonObject | FormatJsonSchema, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Model):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | NamedMcp | None = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool = False
    store: bool | None = Field(None, description="accepted; nothing is ever stored (the response says store: false)")
    previous_response_id: str | None = Field(None, description="refused: this server is stateless")
    conversation: str | dict[str, Any] | None = Field(None, description="refused: this server is stateless")
    background: bool | None = Field(None, description="refused: only foreground responses")
    top_logprobs: int | None = Field(None, description="refused: no log probabilities")
    metadata: dict[str, Any] | None = None
