"""The one prompt-chunk type and the M-RoPE layout of GLM-4.6V prompts (shared/docs/glm46v-flash.md, sec. 6).

A prompt is a list of `Chunk`s, each either text (token ids) or media (an image, a video frame group or a
document page: `rows` x `cols` merged tokens whose embeddings come from outside, identified by `key`).
`n_tokens` is how many KV cells a chunk fills, `n_pos` how far it advances the position counter. Text tokens
take one position each (llama.cpp broadcasts it to the t/h/w sections). A media chunk of rows x cols
starting at P puts the token at (r, c) at t=P, h=P+r, w=P+c, section-major with a fourth all-zero section;
what follows continues at P + max(rows, cols) (as llama.cpp's mtmd `n_pos`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    tokens: tuple[int, ...] = ()  # text: the token ids
    key: str | None = None  # media: the embedding's cache key (content hash + preprocessing)
    rows: int = 0
    cols: int = 0
    placeholder: int = -1  # media: the id the reference model sees at each of its positions (for penalties)

    @classmethod
    def text(cls, tokens: Sequence[int]) -> Chunk:
        return cls(tokens=tuple(tokens))

    @classmethod
    def media(cls, key: str, rows: int, cols: int, placeholder: int = -1) -> Chunk:
        return cls(key=key, rows=rows, cols=cols, placeholder=placeholder)

    @property
    def is_media(self) -> bool:
        return self.key is not None

    @property
    def n_tokens(self) -> int:
        """KV cells this chunk fills."""
        return self.rows * self.cols if self.is_media else len(self.tokens)

    @property
    def n_pos(self) -> int:
        """How far this chunk advances the position counter."""
        return image_span(self.rows, self.cols) if self.is_media else len(self.tokens)

    def head(self, n: int) -> Chunk:
        """The first `n` tokens of a text chunk."""
        return Chunk.text(self.tokens[:n])

    def reference_ids(self) -> tuple[int, ...]:
        """The ids a reference implementation's `input_ids` hold for this chunk (media: its placeholder)."""
        return (self.placeholder,) * self.n_tokens if self.is_media else self.tokens


def starts(chunks: Sequence[Chunk], at: int = 0) -> Iterator[tuple[int, Chunk]]:
    """(first position, chunk) for chunks laid out one after another from position `at`."""
    pos = at
    for chunk in chunks:
        yield pos, chunk
        pos += chunk.n_pos


def image_positions(start: int, rows: int, cols: int) -> np.ndarray:
    """int32 [4, rows*cols]: t, h, w and zero sections for an image in raster order of its merged grid."""
    r, c = np.divmod(np.arange(rows * cols, dtype=np.int32), np.int32(cols))
    pos = np.zeros((4, rows * cols), dtype=np.int32)
    pos[0] = start
    pos[1] = start + r
    pos[2] = start + c
    return pos


def image_span(rows: int, cols: int) -> int:
    """How far an image advances the position counter: max(rows, cols), not its token count."""
    return max(rows, cols)
