"""The engine: prefill a chunked prompt with KV-prefix reuse, then yield sampled token ids until a stop.

It sees token ids, embeddings and positions only, and takes no callbacks. The caller sequences it:

    plan = engine.plan(chunks)                 # what the cache reuses; which media embeddings are needed
    stats = engine.prefill(plan, embeddings)   # {key: [rows*cols, n_embd]} for plan.missing_media
    for token in engine.generate(params, finish): ...   # ids; `finish.reason` says why it ended

`generate` stops on the end-of-generation ids (`<|endoftext|>`, `<|user|>`, `<|observation|>` as the
bundle lists them), max tokens or the end of the context; text-level stops (stop strings) are the caller's:
it closes the generator, and the last token, whose decode nobody needs, is never decoded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.engine.chunks import Chunk, image_positions, starts
from edge.engine.kv import KVPrefix, Reuse
from edge.engine.llama import Decoder
from edge.engine.sampling import SamplingParams
from edge.errors import ContextOverflowError, DecoderError


@dataclass(frozen=True)
class PrefillPlan:
    chunks: tuple[Chunk, ...]
    reuse: Reuse
    cells: int  # prompt tokens incl. media tokens
    reused: int  # of which the KV cache already holds
    missing_media: tuple[str, ...] = ()  # keys of media chunks that must be decoded (embeddings needed)


@dataclass
class PrefillStats:
    cells: int
    reused: int
    seconds: float


@dataclass
class Finish:
    """Why `Engine.generate` ended ("stop" | "length") and how many ids it yielded."""

    reason: str = ""
    tokens: list[int] = field(default_factory=list)


class Engine:
    def __init__(self, decoder: Decoder, stop_ids: set[int]):
        self.decoder = decoder
        self.stop_ids = set(stop_ids)
        self.kv = KVPrefix()

    def forget(self) -> None:
        """Drop every cached cell: the next prefill decodes everything."""
        self.kv.reset()
        self.decoder.truncate(0)

    def plan(self, chunks: Sequence[Chunk], reuse: bool = True) -> PrefillPlan:
        """What prefilling `chunks` will reuse and decode; refuses a prompt that cannot fit."""
        chunks = tuple(chunks)
        cells = sum(c.n_tokens for c in chunks)
        if cells >= self.decoder.n_ctx:
            raise ContextOverflowError(cells + 1, self.decoder.n_ctx, "the prompt (with its image tokens)")
        kept = self.kv.match(chunks) if reuse else Reuse(0, 0)
        reused = sum(c.n_tokens for c in chunks[:kept.full]) + kept.partial
        missing = tuple(dict.fromkeys(c.key for c in chunks[kept.full:] if c.is_media))
        return PrefillPlan(chunks, kept, cells, reused, missing)

    def prefill(self, plan: PrefillPlan, embeddings: Mapping[str, np.ndarray]) -> PrefillStats:
        """Make the KV cache hold exactly `plan.chunks`; logits of the last prompt token are then ready."""
        absent = [k for k in plan.missing_media if k not in embeddings]
        if absent:
            raise DecoderError(f"prefill needs the embeddings of {len(absent)} media chunk(s) it was not given")
        start = time.perf_counter()
        full, partial = plan.reuse.full, plan.reuse.partial
        self.decoder.truncate(self.kv.cut(plan.reuse))
        last = len(plan.chunks) - 1
        try:
            for i, (pos, chunk) in enumerate(starts(plan.chunks)):
                if i < full:
                    continue
                if chunk.is_media:
                    self.decoder.decode_embeddings(embeddings[chunk.key], image_positions(pos, chunk.rows, chunk.cols))
                else:
                    skip = partial if i == full else 0
                    self.decoder.decode_tokens(chunk.tokens[skip:], pos + skip, logits_last=i == last)
                if i == full and partial:
                    self.kv.replace_last(chunk)  # the kept head of this chunk, now complete
                else:
                    self.kv.append(chunk)
        except BaseException:
            # Whatever was half-decoded is unknown state: forget it all rather than reuse it wrongly.
            self.kv.reset()
            self.decoder.truncate(0)
            raise
        return PrefillStats(plan.cells, plan.reused, time.perf_counter() - start)

    def generate(self, params: SamplingParams, finish: Finish) -> Iterator[int]:
        """Yield sampled ids after a prefill; `finish` says why it stopped. Penalties see the whole sequence
        as the reference model's `input_ids` (prompt included, media as their placeholder ids)."""
        history = self.kv.reference_ids() if params.repetition_penalty != 1.0 else []
        sampler = self.decoder.sampler(params, history)
        try:
            while True:
                if self.kv.n_cells + 1 > self.decoder.n_ctx:
                    finish.reason = "length"
                    return
                token = sampler.sample()
                if token in self.stop_ids or self.decoder.is_eog(token):
                    finish.reason = "stop"
                    return
                finish.tokens.append(token)
                yield token
                if len(finish.tokens) >= params.max_tokens:
                    finish.reason = "length"  # the last token needs no decode: nothing samples after it
                    return
                self.decoder.decode_tokens([token], self.kv.next_position, logits_last=True)
                self.kv.append_token(token)
        finally:
            sampler.close()
