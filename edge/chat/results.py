"""What a generation returns: streamed events and the final result (shared by the runtime, CLI and server).

A stream is a sequence of `ChatDelta` events (the parser's reasoning/content/tool-call fragments, in order)
followed by exactly one `ChatDone` carrying the finish reason, the whole parsed output, token counts
and per-stage timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.chat.parse import ChatDelta, ParsedOutput


@dataclass
class Usage:
    prompt_tokens: int = 0  # text + image tokens of the prompt
    image_tokens: int = 0  # of prompt_tokens, those that are image embeddings (videos apart)
    cached_tokens: int = 0  # of prompt_tokens, reused from the KV cache of an earlier request
    completion_tokens: int = 0
    images: int = 0
    images_cached: int = 0  # images whose embeddings came from the image cache (no encode)
    video_tokens: int = 0  # of prompt_tokens, those that are video frame-group embeddings
    videos: int = 0
    video_frames: int = 0  # sampled frames (two per frame group)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    """Seconds per stage of one request."""

    preprocess: float = 0.0  # image decode + resize + patchify
    vision: float = 0.0  # ViT + projector
    prefill: float = 0.0  # prompt decode in llama.cpp
    decode: float = 0.0  # generated tokens
    first_token: float = 0.0  # request start -> first generated token

    def decode_tokens_per_second(self, tokens: int) -> float:
        return tokens / self.decode if self.decode > 0 else 0.0

    def prefill_tokens_per_second(self, tokens: int) -> float:
        return tokens / self.prefill if self.prefill > 0 else 0.0


@dataclass
class ChatDone:
    finish_reason: str  # "stop" | "length" | "tool_calls" | "cancelled"
    output: ParsedOutput
    usage: Usage
    timings: Timings
    text: str = ""  # raw generated text (special tokens rendered), before parsing
    token_ids: list[int] = field(default_factory=list)  # generated ids, the stop token excluded


ChatEvent = ChatDelta | ChatDone
