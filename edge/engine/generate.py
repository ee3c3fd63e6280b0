"""The engine: N sequences in one llama.cpp context, decoded together by one loop thread (continuous batching).

It sees token ids, embeddings, positions and sequences only, and takes no callbacks. The caller sequences it:

    lease = engine.acquire(chunks)             # a slot (sequence) and its plan: KV reuse, missing media
    ids = lease.run(embeddings, params, finish, cancel)   # {key: [rows*cols, n_embd]} for plan.missing_media
    for token in ids: ...                      # blocks for each id; `finish.reason` says why it ended

Slots. Each of the decoder's `n_seq` sequences is a slot that keeps its KV prefix between requests; `acquire`
takes the free slot whose cached prefix (text ids and media keys) matches the new prompt longest, as
llama-server does, and blocks while every slot is busy. The KV cache is unified: any slot may use the whole
context, and together they share its cells; when they are full, idle slots' cached prefixes are dropped first.

The loop, every step: one llama_decode batch holds the next token of every generating sequence, and adds prompt
tokens of sequences being admitted, in arrival order: up to `prefill_chunk` of them while any sequence generates
(so running streams keep flowing while a long prompt prefills in chunks), up to n_batch when none does. A media
chunk cannot share a batch with tokens: at most one media piece of up to n_ubatch rows (`prefill_chunk` while
others generate) is decoded per step, before the token batch. Each
sequence samples with its own chain (grammar, penalties, seed). A sequence ends on an end-of-generation id,
max tokens or the end of the context; the consumer may stop earlier (a stop string: `ids.close()`, the KV is
kept) or cancel (`cancel` set: the sequence leaves at the next step and its KV cells are freed).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.engine.chunks import Chunk, image_positions, starts
from edge.engine.kv import KVPrefix, Reuse
from edge.engine.llama import Decoder, Sampler
from edge.engine.sampling import SamplingParams
from edge.errors import ContextOverflowError, DecodeAborted, DecoderError, KVCacheFullError
from edge.options import default_prefill_chunk

log = logging.getLogger(__name__)
_END = object()


@dataclass(frozen=True)
class PrefillPlan:
    chunks: tuple[Chunk, ...]
    reuse: Reuse
    cells: int  # prompt tokens incl. media tokens
    reused: int  # of which the slot's KV cache already holds
    missing_media: tuple[str, ...] = ()  # keys of media chunks that must be decoded (embeddings needed)


@dataclass
class Finish:
    """How a sequence ended: reason ("stop" | "length" | "cancelled"), the ids it yielded, prefill seconds."""

    reason: str = ""
    tokens: list[int] = field(default_factory=list)
    prefill_seconds: float = 0.0


@dataclass
class EngineStats:
    steps: int = 0
    step_tokens: int = 0  # tokens decoded by all steps (generated + prompt), for tokens per step
    generated: int = 0


@dataclass
class _Slot:
    index: int
    kv: KVPrefix = field(default_factory=KVPrefix)
    busy: bool = False
    used: float = 0.0
    stale: bool = False  # its cells must be cleared (by the loop: only the loop thread touches the cache)


class _Seq:
    """A sequence in the loop: what is left to prefill, then the token that waits to be decoded."""

    def __init__(self, slot: _Slot, plan: PrefillPlan, embeddings: Mapping[str, np.ndarray],
                 sampler: Sampler | None, params: SamplingParams | None, finish: Finish,
                 cancel: threading.Event | None):
        self.slot, self.plan, self.embeddings = slot, plan, embeddings
        self.sampler, self.params, self.finish, self.cancel = sampler, params, finish, cancel
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.todo = [(pos, c) for i, (pos, c) in enumerate(starts(plan.chunks)) if i >= plan.reuse.full]
        self.offset = plan.reuse.partial  # tokens (or media rows) of todo[0] already in the cache
        self.next_token: int | None = None
        self.admitted = False  # the slot's cache has been cut to the reused prefix
        self.replace_head = plan.reuse.partial > 0  # the first chunk completes the kept head of a text chunk
        self.closed = False  # the consumer stopped reading: finish without freeing the KV
        self.started = time.perf_counter()
        self.logits: np.ndarray | None = None

    @property
    def prefilling(self) -> bool:
        return bool(self.todo)

    def chunk_done(self) -> None:
        """The head chunk is now wholly in the cache."""
        _, chunk = self.todo.pop(0)
        if self.replace_head:
            self.slot.kv.replace_last(chunk)
            self.replace_head = False
        else:
            self.slot.kv.append(chunk)
        self.offset = 0


class Lease:
    """A slot held for one request; `run` prefills and generates on the engine's loop."""

    def __init__(self, engine: Engine, slot: _Slot, plan: PrefillPlan):
        self.engine, self.slot, self.plan = engine, slot, plan
        self._running = False

    def run(self, embeddings: Mapping[str, np.ndarray], params: SamplingParams, finish: Finish,
            cancel: threading.Event | None = None) -> Iterator[int]:
        """Generated ids as the loop samples them (blocking). Closing the iterator stops the sequence."""
        seq = self._start(embeddings, params, finish, cancel)
        return self._ids(seq)

    def prompt_logits(self, embeddings: Mapping[str, np.ndarray]) -> np.ndarray:
        """Prefill only, and return the logits of the last prompt token (a copy)."""
        seq = self._start(embeddings, None, Finish(), None)
        for _ in self._ids(seq):
            pass
        return seq.logits

    def release(self) -> None:
        """Give the slot back if `run` never started (otherwise the loop gives it back when the sequence ends)."""
        if not self._running:
            self.engine._free(self.slot)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _start(self, embeddings, params, finish, cancel) -> _Seq:
        if self._running:
            raise DecoderError("a lease runs once")
        absent = [k for k in self.plan.missing_media if k not in embeddings]
        if absent:
            raise DecoderError(f"prefill needs the embeddings of {len(absent)} media chunk(s) it was not given")
        sampler = None
        if params is not None:
            history = [t for c in self.plan.chunks for t in c.reference_ids()] if params.repetition_penalty != 1.0 else []
            sampler = self.engine.decoder.sampler(params, history)
        seq = _Seq(self.slot, self.plan, embeddings, sampler, params, finish, cancel)
        self._running = True
        self.engine._admit(seq)
        return seq

    def _ids(self, seq: _Seq) -> Iterator[int]:
        try:
            while True:
                try:
                    item = seq.out.get(timeout=0.1)
                except queue.Empty:
                    if seq.cancel is not None and seq.cancel.is_set():
                        self.engine._wake()
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            seq.closed = True
            self.engine._wake()


class Engine:
    def __init__(self, decoder: Decoder, stop_ids: set[int]):
        self.decoder = decoder
        self.stop_ids = set(stop_ids)
        self.slots = [_Slot(i) for i in range(decoder.n_seq)]
        opts = decoder.options
        self.prefill_chunk = opts.prefill_chunk or default_prefill_chunk(decoder.offloaded, opts.batch_size)
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._seqs: list[_Seq] = []  # admitted, in arrival order
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="glm-edge-engine", daemon=True)
        self._thread.start()

    # --- slots ------------------------------------------------------------------------------------

    @property
    def busy_slots(self) -> int:
        return sum(s.busy for s in self.slots)

    def acquire(self, chunks: Sequence[Chunk], reuse: bool = True, timeout: float | None = None) -> Lease:
        """A free slot for `chunks` (the longest reusable prefix wins) and the plan of its prefill."""
        chunks = tuple(chunks)
        cells = sum(c.n_tokens for c in chunks)
        if cells >= self.decoder.n_ctx:
            raise ContextOverflowError(cells + 1, self.decoder.n_ctx, "the prompt (with its image tokens)")
        if not chunks or chunks[-1].is_media:
            raise DecoderError("a prompt must end with text (its last token's logits start generation)")
        with self._cond:
            if not self._cond.wait_for(lambda: self._closing or any(not s.busy for s in self.slots), timeout):
                raise DecoderError(f"no free sequence slot within {timeout} s")
            if self._closing:
                raise DecodeAborted("the engine is closing")
            free = [s for s in self.slots if not s.busy]
            matches = {s.index: s.kv.match(chunks) if reuse else Reuse(0, 0) for s in free}
            reused = {i: sum(c.n_tokens for c in chunks[:m.full]) + m.partial for i, m in matches.items()}
            slot = max(free, key=lambda s: (reused[s.index], -s.used))
            slot.busy = True
        kept = matches[slot.index]
        missing = tuple(dict.fromkeys(c.key for c in chunks[kept.full:] if c.is_media))
        return Lease(self, slot, PrefillPlan(chunks, kept, cells, reused[slot.index], missing))

    def forget(self) -> None:
        """Drop every idle slot's cached prefix: the next prompts decode everything."""
        with self._cond:
            for slot in self.slots:
                if not slot.busy:
                    slot.kv.reset()
                    slot.stale = True

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.decoder.request_abort()
        self._thread.join(30)

    def _free(self, slot: _Slot) -> None:
        with self._cond:
            slot.busy = False
            slot.used = time.perf_counter()
            self._cond.notify_all()

    def _drop_cache(self, slot: _Slot) -> None:
        """Loop thread only."""
        slot.kv.reset()
        slot.stale = False
        self.decoder.truncate(0, slot.index)

    def _admit(self, seq: _Seq) -> None:
        with self._cond:
            self._seqs.append(seq)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or self._seqs or any(s.stale for s in self.slots))
                if self._closing:
                    for seq in list(self._seqs):
                        self._end(seq, DecodeAborted("the engine is closing"))
                    return
                seqs = list(self._seqs)
                stale = [s for s in self.slots if s.stale]
            for slot in stale:
                self._drop_cache(slot)
            for seq in seqs:
                if seq.cancel is not None and seq.cancel.is_set():
                    seq.finish.reason = "cancelled"
                    self._end(seq, _END, drop_cache=True)
                elif seq.closed:
                    self._end(seq, _END)
                elif not seq.admitted:
                    self.decoder.truncate(seq.slot.kv.cut(seq.plan.reuse), seq.slot.index)
                    seq.admitted = True
            with self._cond:
                seqs = [s for s in seqs if s in self._seqs]
            if seqs:
                try:
                    self._step(seqs)
                except DecodeAborted:
                    continue  # closing: the next pass ends every sequence

    def _step(self, seqs: list[_Seq]) -> None:
        """One step: a media piece for at most one admitted sequence, then one token batch of every generating
        sequence's next token plus prompt tokens of admitted sequences (see the module's docstring)."""
        dec = self.decoder
        generating = [s for s in seqs if not s.prefilling]
        batch: list[tuple[int, int, _Seq, bool]] = [(s.next_token, s.slot.kv.next_position, s, True) for s in generating]
        pieces: list[tuple[_Seq, int, bool]] = []  # (sequence, tokens taken from its head chunk, chunk complete)
        # Admission budget: a chunk beside running streams, so their next token is not held up by a whole batch.
        budget = min(self.prefill_chunk, dec.options.ubatch_size) if generating else dec.options.ubatch_size
        media = next((s for s in seqs if s.prefilling and s.todo[0][1].is_media), None)
        if media is not None:
            self._guard([media], lambda: self._media_piece(media, budget))
        limit = min(len(batch) + self.prefill_chunk, dec.n_batch) if generating else dec.n_batch
        for seq in seqs:
            room = limit - len(batch)
            if room <= 0 or not seq.prefilling or seq.todo[0][1].is_media or seq is media:
                continue
            pos, chunk = seq.todo[0]
            take = min(room, len(chunk.tokens) - seq.offset)
            complete = seq.offset + take == len(chunk.tokens)
            last = complete and len(seq.todo) == 1
            for k in range(take):
                at = seq.offset + k
                batch.append((chunk.tokens[at], pos + at, seq, last and k == take - 1))
            pieces.append((seq, take, complete))
        if not batch:
            return
        tokens, positions, owners, logits = zip(*batch)
        if not self._guard(list(dict.fromkeys(owners)),
                           lambda: dec.decode_batch(tokens, positions, [s.slot.index for s in owners], logits)):
            return
        self.stats.steps += 1
        self.stats.step_tokens += len(batch)
        for seq in generating:
            seq.slot.kv.append_token(seq.next_token)
        for seq, take, complete in pieces:
            seq.offset += take
            if complete:
                seq.chunk_done()
        for i, (_, _, seq, want) in enumerate(batch):
            if want:
                self._sample(seq, i)

    def _media_piece(self, seq: _Seq, rows: int) -> None:
        """Up to `rows` rows of the sequence's head media chunk, at their M-RoPE positions."""
        pos, chunk = seq.todo[0]
        n = min(rows, chunk.n_tokens - seq.offset)
        emb = seq.embeddings[chunk.key]
        positions = image_positions(pos, chunk.rows, chunk.cols)[:, seq.offset:seq.offset + n]
        self.decoder.decode_embeddings(emb[seq.offset:seq.offset + n], positions, seq.slot.index)
        self.stats.step_tokens += n
        seq.offset += n
        if seq.offset == chunk.n_tokens:
            seq.chunk_done()

    def _guard(self, seqs: list[_Seq], decode) -> bool:
        """Run one decode; when the cache is full, drop idle slots' prefixes and retry once; a failure ends
        the sequences involved with the error (their cells freed). True when the decode ran."""
        try:
            try:
                decode()
                return True
            except KVCacheFullError:
                with self._cond:
                    idle = [s for s in self.slots if not s.busy]
                if not idle:
                    raise
                for slot in idle:
                    self._drop_cache(slot)
                decode()
                return True
        except KVCacheFullError as e:
            log.warning("KV cache full (%d sequences in this batch): %s", len(seqs), e)
            error: DecoderError = KVCacheFullError(f"{e} ({len(self._seqs)} sequences share it); retry, or start the "
                                                   "server with a larger --ctx-size or a smaller --parallel")
        except DecodeAborted:
            raise
        except DecoderError as e:
            error = e
        for seq in seqs:
            self._end(seq, error, drop_cache=True)
        return False

    def _sample(self, seq: _Seq, i: int) -> None:
        if seq.sampler is None:  # prompt_logits: the prompt is in, nothing to generate
            seq.logits = self.decoder.logits(i)
            seq.finish.prefill_seconds = time.perf_counter() - seq.started
            self._end(seq, _END)
            return
        finish = seq.finish
        if not finish.tokens and not finish.prefill_seconds:
            finish.prefill_seconds = time.perf_counter() - seq.started
        if seq.slot.kv.n_cells + 1 > self.decoder.n_ctx:
            finish.reason = "length"
            self._end(seq, _END)
            return
        token = seq.sampler.sample(i)
        if token in self.stop_ids or self.decoder.is_eog(token):
            finish.reason = "stop"
            self._end(seq, _END)
            return
        finish.tokens.append(token)
        self.stats.generated += 1
        seq.out.put(token)
        if len(finish.tokens) >= seq.params.max_tokens:
            finish.reason = "length"  # the last token needs no decode: nothing samples after it
            self._end(seq, _END)
            return
        seq.next_token = token

    def _end(self, seq: _Seq, last, drop_cache: bool = False) -> None:
        """Take a sequence out of the loop, deliver `last` (the end marker or an error) and free its slot."""
        with self._cond:
            if seq not in self._seqs:
                return
            self._seqs.remove(seq)
        if drop_cache or isinstance(last, BaseException):
            self._drop_cache(seq.slot)  # half-decoded state is unknown: never reuse it
        if seq.sampler is not None:
            seq.sampler.close()
        seq.out.put(last)
        self._free(seq.slot)
