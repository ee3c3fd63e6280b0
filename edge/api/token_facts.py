"""Facts about generated tokens that the parsed output does not keep, for the dialects' response objects.

`detokenizer(runtime)` reads generated ids back as text (special tokens rendered) with the loaded decoder's
vocabulary; `matched_stop(done, stops, detok)` says which request stop string ended a generation
(Anthropic's `stop_sequence`), `reasoning_tokens(done, detok)` how many generated tokens were reasoning
(Responses' `reasoning_tokens`, Anthropic's `thinking_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from edge.chat.results import ChatDone

Detok = Callable[[Sequence[int]], str]


def detokenizer(runtime: Any) -> Detok:
    """ids -> their text (special tokens rendered), from the runtime's decoder vocabulary."""
    decoder = runtime.decoder
    return lambda ids: b"".join(decoder.token_bytes(t) for t in ids).decode("utf-8", "replace")


def reasoning_tokens(done: ChatDone, detok: Detok, close: str = "</think>") -> int:
    """Generated tokens up to and including the one that closes the reasoning (all of them if it never closed)."""
    if not done.output.reasoning:
        return 0
    for i, token in enumerate(done.token_ids):
        if detok([token]) == close:
            return i + 1
    return len(done.token_ids)


def matched_stop(done: ChatDone, stops: Sequence[str], detok: Detok) -> str | None:
    """The request stop string that ended the generation, or None (end-of-generation token, length, ...).

    The runtime keeps the tokens that completed a stop string but cuts the string from the text, so the
    generated ids read past `done.text` exactly by a stop string when one matched."""
    if done.finish_reason not in ("stop", "tool_calls") or not stops:
        return None
    rest = detok(done.token_ids)[len(done.text):]
    return next((s for s in stops if rest.startswith(s)), None)
