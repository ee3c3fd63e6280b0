"""The engine: prefill a chunked prompt with KV-prefix reuse, then sample tokens until a stop.

It sees token ids, embeddings and positions only. `Engine.prefill` lays the prompt out at M-RoPE positions
(text: one each; an image: its rows x cols tokens at one start, advancing max(rows, cols)), keeps the longest
prefix the KV cache already holds and decodes the rest. `Engine.stream` yields text pieces of sampled tokens
(UTF-8 safe, special tokens rendered so the parser sees `<think>`, `<tool_call>`...), stopping on the
end-of-generation ids (`<|endoftext|>`, `<|user|>`, `<|observation|>`), stop strings, max tokens or the end
of the context.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edge.engine.kv import Entry, KVPrefix
from edge.engine.llama import Decoder
from edge.errors import ContextOverflowError
from edge.engine.chunks import image_positions
from edge.engine.sampling import Sampler, SamplingParams


@dataclass(frozen=True)
class ImageInfo:
    key: str
    rows: int
    cols: int


def layout(chunks: list, images: list[ImageInfo]) -> list[Entry]:
    """Entries with their positions, from position 0, for chunks of `edge.chat.template` (TextChunk / ImageSlot)."""
    entries, pos = [], 0
    for chunk in chunks:
        if hasattr(chunk, "tokens"):
            entry = Entry(pos, tuple(chunk.tokens))
        else:
            info = images[chunk.index]
            entry = Entry(pos, image_key=info.key, rows=info.rows, cols=info.cols)
        entries.append(entry)
        pos = entry.end
    return entries


@dataclass
class PrefillStats:
    cells: int  # prompt tokens incl. image tokens
    reused: int  # of which came from the KV cache
    seconds: float


@dataclass
class StopState:
    reason: str = ""
    tokens: list[int] = field(default_factory=list)  # generated ids, stop token excluded


class Engine:
    def __init__(self, decoder: Decoder, stop_ids: set[int]):
        self.decoder = decoder
        self.stop_ids = set(stop_ids)
        self.kv = KVPrefix()

    def prefill(self, entries: list[Entry], embed: Callable[[str], np.ndarray], reuse: bool = True) -> PrefillStats:
        """Make the KV cache hold exactly `entries`; logits of the last prompt token are then ready."""
        cells = sum(e.n_cells for e in entries)
        if cells >= self.decoder.n_ctx:
            raise ContextOverflowError(cells + 1, self.decoder.n_ctx, "the prompt (with its image tokens)")
        start = time.perf_counter()
        full, partial = self.kv.match(entries) if reuse else (0, 0)
        reused = sum(e.n_cells for e in entries[:full]) + partial
        self.decoder.truncate(self.kv.cut(full, partial))
        try:
            for i, entry in enumerate(entries[full:], start=full):
                last = i == len(entries) - 1
                if entry.image_key is not None:
                    emb = embed(entry.image_key)
                    self.decoder.decode_embeddings(emb, image_positions(entry.start, entry.rows, entry.cols))
                else:
                    skip = partial if i == full else 0
                    self.decoder.decode_tokens(entry.tokens[skip:], entry.start + skip, logits_last=last)
                if i == full and partial:
                    self.kv.entries[-1] = entry  # the kept head of this entry, now complete
                else:
                    self.kv.entries.append(entry)
        except BaseException:
            # Whatever was half-decoded is unknown state: forget it all rather than reuse it wrongly.
            self.kv.reset()
            self.decoder.truncate(0)
            raise
        return PrefillStats(cells, reused, time.perf_counter() - start)

    def stream(self, params: SamplingParams, state: StopState) -> Iterator[str]:
        """Yield generated text pieces; on return, `state` says why it stopped and how many tokens."""
        sampler = Sampler(self.decoder, params)
        decoder_utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        holdback = max((len(s) for s in params.stop), default=1) - 1
        pending = ""
        generated = state.tokens
        try:
            while True:
                if self.kv.n_cells + 1 > self.decoder.n_ctx:
                    state.reason = "length"
                    break
                token = sampler.sample()
                if token in self.stop_ids or self.decoder.is_eog(token):
                    state.reason = "stop"
                    break
                generated.append(token)
                pending += decoder_utf8.decode(self.decoder.token_bytes(token))
                hit = _find_stop(pending, params.stop)
                if hit is not None:
                    pending = pending[:hit]
                    state.reason = "stop"
                    break
                if len(pending) > holdback:
                    cut = len(pending) - holdback
                    yield pending[:cut]
                    pending = pending[cut:]
                if len(generated) >= params.max_tokens:
                    state.reason = "length"  # the last token needs no decode: nothing samples after it
                    break
                self._decode_generated(token)
        finally:
            sampler.close()
        pending += decoder_utf8.decode(b"", final=True)
        if pending:
            yield pending

    def _decode_generated(self, token: int) -> None:
        pos = self.kv.next_position
        self.decoder.decode_tokens([token], pos, logits_last=True)
        last = self.kv.entries[-1] if self.kv.entries else None
        if last is not None and last.image_key is None and last.end == pos:
            self.kv.entries[-1] = Entry(last.start, last.tokens + (token,))
        else:
            self.kv.entries.append(Entry(pos, (token,)))


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None
