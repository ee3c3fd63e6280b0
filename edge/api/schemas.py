"""Pydantic models of the OpenAI-compatible API (requests validated here; responses documented here).

Requests ignore fields they do not know (as OpenAI's own server does for forward compatibility); fields we
know but cannot honour (`n > 1`, `logprobs`) are refused by the request planner with a clear 400.
Content parts: `text`, `image_url` ({url, detail: low|high|auto, and the extensions max_tokens /
min_tokens: the image's token budget}), `image` ({image: data URL or path}, the model family's own
spelling) and `file` (a PDF, rendered to page images). Numbers are finite (NaN/Infinity refused).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_INT = 2**31 - 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


# --- request ---------------------------------------------------------------------------------------


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageUrl(_Model):
    url: str = Field(min_length=1)
    detail: Literal["low", "high", "auto"] = "auto"
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT, description="extension: most LLM tokens for this image")
    min_tokens: int | None = Field(None, ge=1, le=MAX_INT, description="extension: fewest LLM tokens for this image")


class ImageUrlPart(_Model):
    type: Literal["image_url"]
    image_url: ImageUrl


class ImagePart(_Model):
    """The model family's spelling: {"type": "image", "image": "<data URL or path>"}."""

    type: Literal["image"]
    image: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    min_tokens: int | None = Field(None, ge=1, le=MAX_INT)


class VideoUrl(_Model):
    url: str = Field(min_length=1, description="data:video/...;base64, a path under --media-dir, or http(s) if allowed")
    fps: float | None = Field(None, gt=0, le=60, description="extension: sampled frames per second of video")
    max_frames: int | None = Field(None, ge=2, le=MAX_INT, description="extension: most sampled frames")
    max_video_tokens: int | None = Field(None, ge=2, le=MAX_INT, description="extension: video token budget")


class VideoUrlPart(_Model):
    type: Literal["video_url"]
    video_url: VideoUrl


class VideoPart(_Model):
    """{"type": "video", "video": "<data URL or path>", fps?, max_frames?, max_video_tokens?}."""

    type: Literal["video"]
    video: str = Field(min_length=1)
    fps: float | None = Field(None, gt=0, le=60)
    max_frames: int | None = Field(None, ge=2, le=MAX_INT)
    max_video_tokens: int | None = Field(None, ge=2, le=MAX_INT)


class FileSpec(_Model):
    """OpenAI's file part body; a PDF in `file_data` (a data: URL, or a path under --media-dir), rendered to page
    images. Extensions: the page selection and the per-page token budget."""

    file_data: str | None = Field(None, min_length=1, description="data:application/pdf;base64,... or an allowed path")
    file_id: str | None = Field(None, description="not supported: this server keeps no uploaded files")
    filename: str | None = None
    pages: str | None = Field(None, max_length=200, description='extension: pages to read, e.g. "1-3,5" or "7-"')
    first_page: int | None = Field(None, ge=1, le=MAX_INT, description="extension: first page to read")
    last_page: int | None = Field(None, ge=1, le=MAX_INT, description="extension: last page to read")
    page_tokens: int | None = Field(None, ge=1, le=MAX_INT, description="extension: per-page budget in LLM tokens")
    min_page_tokens: int | None = Field(None, ge=1, le=MAX_INT,
                                        description="extension: allow the per-page budget down to this to fit")


class FilePart(_Model):
    type: Literal["file"]
    file: FileSpec


ContentPart = Annotated[TextPart | ImageUrlPart | ImagePart | VideoUrlPart | VideoPart | FilePart,
                        Field(discriminator="type")]


class FunctionCall(_Model):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"


class AssistantToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = Field(None, description="extension: an earlier assistant turn's reasoning")


class FunctionDef(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDef


class McpAllowedTools(_Model):
    tool_names: list[str] | None = None


class McpToolEntry(_Model):
    """Extension: the tools of an MCP server configured at launch (--mcp-config), in the shape of the Responses
    API's MCP tool; the server runs the calls (edge/api/mcp.py)."""

    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    allowed_tools: list[str] | McpAllowedTools | None = None
    require_approval: str | dict[str, Any] | None = Field(None, description='only "never" (the default here)')
    server_url: str | None = Field(None, description="refused: only servers configured at launch")
    connector_id: str | None = Field(None, description="refused: only servers configured at launch")


class NamedFunction(_Model):
    name: str = Field(min_length=1)


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class NamedMcpChoice(_Model):
    """Extension (the Responses API's form): call a tool of this MCP server (`name`: that tool)."""

    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    name: str | None = None


class JsonSchemaSpec(_Model):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class ThinkingOption(_Model):
    """Z.ai's convention: {"type": "enabled" | "disabled"}."""

    type: Literal["enabled", "disabled"]


class ChatCompletionRequest(_Model):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="extension")
    min_p: float | None = Field(None, ge=0, le=1, description="extension")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="extension")
    seed: int | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_INT)
    n: int | None = Field(None, ge=1, le=128)
    tools: list[Annotated[Tool | McpToolEntry, Field(discriminator="type")]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | NamedMcpChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description='extension (vLLM/SGLang): {"enable_thinking": false} turns reasoning off')
    thinking: ThinkingOption | None = Field(None, description="extension (Z.ai): thinking on/off")
    logprobs: bool | None = None
    top_logprobs: int | None = None


# --- responses (documentation; the server writes these shapes as plain dicts) -----------------------


class FunctionOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut


class BoxOut(BaseModel):
    """A grounding box found in the answer: 0..1000 as the model wrote it, and pixels on the original image."""

    label: str
    box_1000: list[float]
    box_px: list[float] | None
    image_index: int | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    boxes: list[BoxOut] | None = Field(None, description="extension: grounding boxes")
    mcp_steps: list[dict[str, Any]] | None = Field(
        None, description="extension: the MCP tool calls and results the server ran (mcp_call / mcp_call_output)")


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int
    image_tokens: int = Field(description="extension: prompt tokens that are image embeddings")


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TimingsOut(BaseModel):
    queue_ms: float
    preprocess_ms: float
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    first_token_ms: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: UsageOut
    timings: TimingsOut = Field(description="extension: per-stage timings")


class SamplingDefault(BaseModel):
    value: float | int | bool | None
    source: str  # "generation_config.json" or "transformers default"


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    sampling_defaults: dict[str, SamplingDefault] | None = None  # extension: effective defaults and their source


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody
