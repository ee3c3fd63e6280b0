"""The one exception tree of glm-edge: every error raised on purpose is a `GlmEdgeError` defined here.

Every error says what was seen and what was expected. Each class carries its HTTP status and error code;
`param` names the offending request field and `headers` adds response headers (Retry-After). The server
maps them to each API dialect's error shape; the CLI prints `str(error)` on one line and exits non-zero.
"""


class GlmEdgeError(Exception):
    """Base of all errors raised on purpose by glm-edge."""

    http_status = 500
    code = "internal_error"
    param: str | None = None
    headers: dict | None = None


# --- checkpoints, conversion, bundles -------------------------------------------------------


class CheckpointError(GlmEdgeError):
    """The HF checkpoint folder is missing, corrupt or not a GLM-4.6V/4.1V dense layout."""

    code = "invalid_checkpoint"


class ConversionError(GlmEdgeError):
    """Conversion could not finish (unknown quant type, no disk space, ...)."""

    code = "conversion_failed"


class BundleError(GlmEdgeError):
    """A bundle file is missing, corrupted, or does not match its manifest."""

    code = "invalid_bundle"


# --- request input ---------------------------------------------------------------------------


class InputError(GlmEdgeError):
    """Bad input from a caller: maps to HTTP 400."""

    http_status = 400
    code = "invalid_request_error"


class ImageError(InputError):
    """An image could not be used."""

    code = "invalid_image"


class NotAnImageError(ImageError):
    """The bytes are not an image in any format Pillow can read."""


class TruncatedImageError(ImageError):
    """The image file ends before its data does."""


class UnsupportedImageFormatError(ImageError):
    """An image format or mode we cannot decode."""


class ImageTooLargeError(ImageError):
    """Decoded pixel count or byte size over the allowed limit (decompression bombs included)."""

    http_status = 413


class AspectRatioError(ImageError):
    """Longer side over 200x the shorter side: the model's processor refuses these."""


class EmptyImageError(ImageError):
    """Zero width or height."""


class TooManyImagesError(InputError):
    code = "too_many_images"


class MediaFetchError(ImageError):
    """A remote image could not be fetched (status, size, timeout)."""

    code = "media_fetch_failed"


class MediaAccessError(InputError):
    """A media reference points somewhere the server is not allowed to read."""

    http_status = 403
    code = "media_access_denied"


class ContextOverflowError(InputError):
    """The prompt (plus requested output) does not fit the context window."""

    code = "context_length_exceeded"

    def __init__(self, needed: int, allowed: int, what: str = "prompt"):
        self.needed = needed
        self.allowed = allowed
        super().__init__(
            f"{what} needs {needed} tokens but the context allows {allowed}; "
            "shorten the input, lower max_tokens, use fewer/smaller images or start the server with a larger --ctx-size"
        )


class TemplateError(InputError):
    """The messages cannot be rendered by the checkpoint's chat template."""

    code = "invalid_messages"


class OptionError(InputError):
    """A runtime option (CLI flag, server setting, `RuntimeOptions` field) outside its allowed values."""

    code = "invalid_option"


class RequestError(InputError):
    """A request the API refuses; `param` names the offending field (OpenAI's error.param)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request_error",
                 status: int = 400):
        super().__init__(message)
        self.param = param
        self.code = code
        self.http_status = status


class GrammarError(InputError):
    """A JSON schema or tool definition cannot be turned into an output grammar."""

    code = "invalid_schema"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelNotFoundError(InputError):
    http_status = 404
    code = "model_not_found"
    param = "model"


# --- server state --------------------------------------------------------------------------------


class ModelLoadingError(GlmEdgeError):
    """The model is still loading."""

    http_status = 503
    code = "model_loading"
    headers = {"Retry-After": "2"}


class ModelLoadFailedError(GlmEdgeError):
    http_status = 503
    code = "model_load_failed"


class QueueFullError(GlmEdgeError):
    """More requests wait than --max-queue allows."""

    http_status = 429
    code = "queue_full"


class ShuttingDownError(GlmEdgeError):
    http_status = 503
    code = "shutting_down"


# --- runtime -----------------------------------------------------------------------------------


class DecodeAborted(GlmEdgeError):
    """A decode was aborted because the engine is closing (server shutting down)."""

    http_status = 499
    code = "cancelled"


class NativeUnavailableError(GlmEdgeError):
    """The native projector cannot be used here: library not built, ABI mismatch, or no such ggml device."""

    code = "native_unavailable"


class DecoderError(GlmEdgeError):
    """llama.cpp refused or failed an operation."""

    code = "decoder_error"


class KVCacheFullError(DecoderError):
    """The running sequences together fill the KV cache (one context shared by --parallel sequences)."""

    http_status = 503
    code = "kv_cache_full"
    headers = {"Retry-After": "1"}


class VisionError(GlmEdgeError):
    """The vision encoder could not load or run."""

    code = "vision_error"


def http_status(error: BaseException) -> int:
    """HTTP status for an error; unknown exceptions are server faults."""
    return error.http_status if isinstance(error, GlmEdgeError) else 500


# --- documents (PDF input, issue 16) -----------------------------------------------------------


class DocumentError(InputError):
    """A document (PDF) could not be used."""

    code = "invalid_document"


class NotAPdfError(DocumentError):
    """The bytes are not a PDF (no %PDF- header in the first 1024 bytes)."""


class PdfTooLargeError(DocumentError):
    """The encoded PDF is over the byte limit."""

    http_status = 413


class EncryptedPdfError(DocumentError):
    """The PDF needs a password to open, or uses a security handler PDFium does not support."""


class CorruptPdfError(DocumentError):
    """PDFium cannot parse the PDF (broken cross-reference table, objects or page tree)."""


class EmptyPdfError(DocumentError):
    """The PDF has no pages."""


class TooManyPagesError(DocumentError):
    """More pages selected than allowed; refused from the page count before anything is rendered."""

    http_status = 413


class PageRangeError(DocumentError):
    """A page range that is malformed or outside the document."""


class PageSizeError(DocumentError):
    """A page whose dimensions are absurd: not finite, too small, too large or too elongated."""


class PdfRenderError(DocumentError):
    """PDFium failed, crashed or timed out while rendering (in the isolated worker): the file is unusable."""

    http_status = 422


class DocumentBudgetError(DocumentError):
    """The selected pages need more image tokens than the document allowance; says what would fit."""

    code = "context_length_exceeded"

    def __init__(self, pages: int, page_tokens: int, needed: int, allowance: int, pages_that_fit: int,
                 page_tokens_that_fit: int | None, min_page_tokens: int | None = None):
        self.pages, self.page_tokens, self.needed, self.allowance = pages, page_tokens, needed, allowance
        self.pages_that_fit, self.page_tokens_that_fit = pages_that_fit, page_tokens_that_fit
        self.min_page_tokens = min_page_tokens
        lower = (f"all {pages} pages fit at {page_tokens_that_fit} tokens per page" if page_tokens_that_fit
                 else f"no per-page budget lets all {pages} pages fit")
        floor = f" (lowest allowed per-page budget: {min_page_tokens})" if min_page_tokens else ""
        super().__init__(
            f"{pages} pages at {page_tokens} tokens per page need {needed} image tokens but the document allowance "
            f"is {allowance}; the first {pages_that_fit} pages fit at {page_tokens} tokens per page, {lower}{floor}; "
            "select fewer pages, lower the per-page budget (or allow it to be lowered) or use a larger context")

    def __reduce__(self):  # rebuilt from its numbers when it crosses the worker pipe
        return (type(self), (self.pages, self.page_tokens, self.needed, self.allowance, self.pages_that_fit,
                             self.page_tokens_that_fit, self.min_page_tokens))
# --- MCP tools (issue 14: edge/chat/mcp_config.py, mcp_host.py, handles.py, agent.py) -------------


class McpConfigError(InputError):
    """An --mcp-config file is unreadable or not of the `{"mcpServers": {...}}` shape."""

    code = "invalid_mcp_config"


class UnknownMcpServerError(InputError):
    """A request names an MCP server (server_label) that was not configured at launch."""

    code = "unknown_mcp_server"


class McpServerError(GlmEdgeError):
    """An MCP server could not be started, or died and could not be restarted."""

    http_status = 502
    code = "mcp_server_error"


class ToolInputError(InputError):
    """A tool call the host refuses before calling: an unknown image handle, an unknown tool, an image too big."""

    code = "invalid_tool_call"


class ToolResultError(InputError):
    """A tool returned content the host cannot use: malformed, an image over the size limit, a non-image."""

    code = "invalid_tool_result"


class ToolImageTooLargeError(ToolResultError):
    """An image a tool returned is over the host's size limit."""

    http_status = 413


# --- video input (issue 12) --------------------------------------------------------------------


class VideoError(InputError):
    """A video could not be used."""

    code = "invalid_video"


class NotAVideoError(VideoError):
    """The bytes are not a container FFmpeg can open, or hold no video stream."""


class TruncatedVideoError(VideoError):
    """The container is cut short or corrupt: its header or the sampled frames' packets do not decode."""


class NoVideoFpsError(VideoError):
    """The video stream declares no frame rate; GLM's frame sampler needs one."""


class NoVideoFramesError(VideoError):
    """The video stream has no decodable frame, or sampling keeps none."""


class VideoTooLargeError(VideoError):
    """Encoded size or decoded frame size (refused from the header) over the allowed limit."""

    http_status = 413


class VideoTokenBudgetError(VideoError):
    """The sampled frames need more LLM tokens than the video budget allows; says how many frames would fit."""

    code = "context_length_exceeded"

    def __init__(self, message: str, needed: int, allowed: int, frames_that_fit: int):
        self.needed, self.allowed, self.frames_that_fit = needed, allowed, frames_that_fit
        super().__init__(message)

    def __reduce__(self):  # rebuilt from its numbers if it crosses a process boundary
        return (type(self), (str(self), self.needed, self.allowed, self.frames_that_fit))


# --- Hub model ids, memory plan (issue 15) --------------------------------------------------------


class HubModelNotFoundError(InputError):
    """A Hub model id or revision that does not exist (or is private/gated without a token)."""

    http_status = 404
    code = "model_not_found"


class HubDownloadError(BundleError):
    """A Hub checkpoint could not be downloaded: offline and not cached, no connection, or a corrupted file."""

    http_status = 502
    code = "download_failed"


class MemoryPlanError(InputError):
    """An explicit context size / KV type whose memory plan does not fit the memory available."""

    http_status = 400
    code = "insufficient_memory"
