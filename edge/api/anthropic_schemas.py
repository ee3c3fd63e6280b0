"""Pydantic models of the Anthropic Messages API request (`POST /v1/messages`) as this server accepts it.

Unknown fields are ignored (`metadata`, `service_tier`, `cache_control`, ...). Blocks: `text`, `image`
(source `base64` or `url`), `tool_use`, `tool_result` (content a string or text and image blocks),
`thinking` (in assistant turns; the signature is accepted and not checked). Tools are custom tools with an
`input_schema`; Anthropic's server tools (a `type` other than "custom") are refused by validation.
`thinking` is `{"type": "enabled", "budget_tokens": N}`, `{"type": "adaptive"}` or `{"type": "disabled"}`;
`output_config.format` `{"type": "json_schema", "schema": ...}` asks for structured output. Numbers are finite.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.api.schemas import MAX_INT


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Base64Source(_Model):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class UrlSource(_Model):
    type: Literal["url"]
    url: str = Field(min_length=1, description="http(s) with --allow-remote-media, or a path under --media-dir")


class TextBlock(_Model):
    type: Literal["text"]
    text: str


class ImageBlock(_Model):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class ToolUseBlock(_Model):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(_Model):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None


class ThinkingBlock(_Model):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


UserBlock = Annotated[TextBlock | ImageBlock | ToolResultBlock, Field(discriminator="type")]
AssistantBlock = Annotated[TextBlock | ToolUseBlock | ThinkingBlock, Field(discriminator="type")]


class UserMessage(_Model):
    role: Literal["user"]
    content: str | list[UserBlock]


class AssistantMessage(_Model):
    role: Literal["assistant"]
    content: str | list[AssistantBlock]


class Tool(_Model):
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, min_length=1)
    disable_parallel_tool_use: bool | None = None


class ThinkingEnabled(_Model):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1, le=MAX_INT, description="accepted; max_tokens bounds thinking and text together")


class ThinkingAdaptive(_Model):
    """Claude decides how much to think; this model thinks whenever thinking is on (`display` is not honoured)."""

    type: Literal["adaptive"]


class ThinkingDisabled(_Model):
    type: Literal["disabled"]


class JsonOutputFormat(_Model):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Model):
    format: JsonOutputFormat | None = None
    effort: str | None = Field(None, description="accepted; not used")


class MessagesRequest(_Model):
    model: str
    max_tokens: int = Field(ge=1, le=MAX_INT)
    messages: list[Annotated[UserMessage | AssistantMessage, Field(discriminator="role")]] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")] | None = None
    output_config: OutputConfig | None = None
    metadata: dict[str, Any] | None = None


# --- errors (documentation; the server writes this shape as plain dicts) ----------------------------


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
