"""What the KV cache holds, so the second turn of a conversation decodes only what is new.

`KVPrefix`: what the decoder's KV cache holds, as a list of chunk entries with their M-RoPE positions.
A new prompt reuses the longest common prefix of chunks (text chunks compare by tokens and may match
partially; image chunks compare by cache key and match whole), so only the rest is decoded. Positions
are never shifted: a reused prefix keeps its positions and the new suffix continues after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from edge.engine.chunks import image_span


@dataclass(frozen=True)
class Entry:
    """One decoded chunk: text tokens (`tokens`) or an image (`image_key`, `rows`, `cols`)."""

    start: int  # first position
    tokens: tuple[int, ...] = ()
    image_key: str | None = None
    rows: int = 0
    cols: int = 0

    @property
    def end(self) -> int:
        """The position after this chunk."""
        return self.start + (image_span(self.rows, self.cols) if self.image_key else len(self.tokens))

    @property
    def n_cells(self) -> int:
        return self.rows * self.cols if self.image_key else len(self.tokens)


@dataclass
class KVPrefix:
    entries: list[Entry] = field(default_factory=list)

    @property
    def next_position(self) -> int:
        return self.entries[-1].end if self.entries else 0

    @property
    def n_cells(self) -> int:
        return sum(e.n_cells for e in self.entries)

    def match(self, wanted: list[Entry], keep_last_token: bool = True) -> tuple[int, int]:
        """(entries fully reused, tokens reused of the next text entry) for the new prompt `wanted`.

        `wanted` must be laid out from position 0 like the cache. With `keep_last_token`, at least the final
        prompt token is left to decode, since its logits are needed.
        """
        full = 0
        while full < min(len(self.entries), len(wanted)) and self.entries[full] == wanted[full]:
            full += 1
        partial = 0
        if full < len(wanted) and full < len(self.entries):
            have, want = self.entries[full], wanted[full]
            if have.image_key is None and want.image_key is None and have.start == want.start:
                while partial < min(len(have.tokens), len(want.tokens)) and have.tokens[partial] == want.tokens[partial]:
                    partial += 1
        if keep_last_token and full == len(wanted):
            full -= 1
            partial = max(len(wanted[full].tokens) - 1, 0)
        elif keep_last_token and full == len(wanted) - 1 and partial == len(wanted[full].tokens):
            partial -= 1
        return full, partial

    def cut(self, full: int, partial: int) -> int:
        """Keep `full` entries plus `partial` tokens of the next; return the position where the cut starts."""
        kept = self.entries[:full]
        if partial:
            nxt = self.entries[full]
            kept.append(Entry(nxt.start, nxt.tokens[:partial]))
        self.entries = kept
        return self.next_position

    def reset(self) -> None:
        self.entries = []
