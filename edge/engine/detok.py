"""Token ids to text for streaming: incremental UTF-8, special tokens rendered, stop strings.

`Detokenizer.feed(token)` returns the text that can be shown now. Bytes of an incomplete UTF-8 character
wait for the next token; with stop strings, the last `len(longest stop) - 1` characters are held back until
it is certain they do not begin a stop string. Special tokens are rendered (`<think>`, `<tool_call>`...) so
the output parser sees them. When a stop string appears, `stopped` becomes true and the text before it is
the last piece.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable


class Detokenizer:
    def __init__(self, token_bytes: Callable[[int], bytes], stops: tuple[str, ...] = ()):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = stops
        self._holdback = max((len(s) for s in stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, token: int) -> str:
        """Text now safe to show after `token` (may be empty)."""
        self._pending += self._utf8.decode(self._token_bytes(token))
        hits = [self._pending.find(s) for s in self._stops if s in self._pending]
        if hits:
            out, self._pending = self._pending[:min(hits)], ""
            self.stopped = True
            return out
        if len(self._pending) > self._holdback:
            cut = len(self._pending) - self._holdback
            out, self._pending = self._pending[:cut], self._pending[cut:]
            return out
        return ""

    def flush(self) -> str:
        """Whatever is held back, at the end of generation."""
        out = "" if self.stopped else self._pending + self._utf8.decode(b"", final=True)
        self._pending = ""
        return out
