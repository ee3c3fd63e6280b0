"""The one exception tree of glm-edge.

Every error says what was seen and what was expected. The server maps these classes to HTTP
statuses (see `http_status`); the CLI prints `str(error)` on one line and exits non-zero.
"""


class GlmEdgeError(Exception):
    """Base of all errors raised on purpose by glm-edge."""

    http_status = 500
    code = "internal_error"


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


# --- runtime -----------------------------------------------------------------------------------


class DecoderError(GlmEdgeError):
    """llama.cpp refused or failed an operation."""

    code = "decoder_error"


class VisionError(GlmEdgeError):
    """The vision encoder could not load or run."""

    code = "vision_error"


def http_status(error: BaseException) -> int:
    """HTTP status for an error; unknown exceptions are server faults."""
    return error.http_status if isinstance(error, GlmEdgeError) else 500


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
