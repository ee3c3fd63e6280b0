"""What one sequence's KV cache holds, so the next prompt decodes only what is new.

`KVPrefix` mirrors the cache as a list of `Chunk`s laid out from position 0. A new prompt reuses the longest
common prefix of chunks: text chunks compare by tokens and may match partially, media chunks compare by key
and match whole. Positions are never shifted: a reused prefix keeps its positions and the new suffix
continues after it (llama.cpp cannot shift M-RoPE positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from edge.engine.chunks import Chunk


@dataclass(frozen=True)
class Reuse:
    """How much of a wanted prompt the cache already holds: `full` whole chunks, then `partial` tokens of the
    next (text) chunk."""

    full: int
    partial: int


@dataclass
class KVPrefix:
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def next_position(self) -> int:
        return sum(c.n_pos for c in self.chunks)

    @property
    def n_cells(self) -> int:
        return sum(c.n_tokens for c in self.chunks)

    def match(self, wanted: Sequence[Chunk], keep_last_token: bool = True) -> Reuse:
        """The reusable prefix of `wanted`. With `keep_last_token`, at least the final prompt token is left to
        decode, since its logits are needed."""
        have = self.chunks
        full = 0
        while full < min(len(have), len(wanted)) and have[full] == wanted[full]:
            full += 1
        partial = 0
        if full < len(wanted) and full < len(have) and not have[full].is_media and not wanted[full].is_media:
            a, b = have[full].tokens, wanted[full].tokens
            while partial < min(len(a), len(b)) and a[partial] == b[partial]:
                partial += 1
        if keep_last_token and full == len(wanted):
            full -= 1
            partial = max(len(wanted[full].tokens) - 1, 0)
        elif keep_last_token and full == len(wanted) - 1 and partial == len(wanted[full].tokens):
            partial -= 1
        return Reuse(full, partial)

    def cut(self, reuse: Reuse) -> int:
        """Keep the reused prefix only; return the position where the cut starts."""
        kept = self.chunks[:reuse.full]
        if reuse.partial:
            kept.append(self.chunks[reuse.full].head(reuse.partial))
        self.chunks = kept
        return self.next_position

    def append(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)

    def append_token(self, token: int) -> None:
        """A generated token: it extends the last text chunk (so the next turn can match it)."""
        if self.chunks and not self.chunks[-1].is_media:
            self.chunks[-1] = Chunk.text(self.chunks[-1].tokens + (token,))
        else:
            self.chunks.append(Chunk.text((token,)))

    def replace_last(self, chunk: Chunk) -> None:
        self.chunks[-1] = chunk

    def reference_ids(self) -> list[int]:
        """The whole sequence as a reference model's `input_ids` (media as placeholder ids)."""
        return [t for c in self.chunks for t in c.reference_ids()]

    def reset(self) -> None:
        self.chunks = []
