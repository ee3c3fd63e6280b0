"""llama.cpp's own batched decode (the llama-batched-bench / llama-batched pattern) through llama-cpp-python's
low-level API: the peer of glm-edge's parallel sequences.

`BatchedPeer(gguf, n_seq=N, ...)` owns one model and one context with `n_seq_max = N` over a unified KV cache
(as our Decoder). `run(prompts, n_new)` clears the cache, prefills the N prompts (packed into batches of up to
n_batch tokens, logits on each prompt's last token), samples each sequence's first token, then decodes
n_new - 1 steps, each ONE llama_batch holding one token per sequence (sequence i at its own position, seq_id
i), each sequence sampling greedily with its own sampler chain. End-of-generation ids are ignored (as
batched-bench does): every sequence decodes exactly n_new tokens. Times prefill and decode apart; the
decode aggregate is N * (n_new - 1) / decode seconds.

Used by the `parallel` benchmark scenario; never imported by edge/.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import llama_cpp

from benchmarks.mtmd_peer import model_params, peer_context, quiet_llama


class BatchedPeer:
    def __init__(self, gguf: str | os.PathLike, *, n_seq: int, n_ctx: int = 4096, n_batch: int = 512,
                 n_ubatch: int = 512, threads: int = 2, flash_attn: str = "on", kv_type: str = "f16",
                 extra_buffers: bool | None = None):
        quiet_llama()
        self._model = self._ctx = self._batch = None
        self._samplers: list = []
        mparams = model_params(extra_buffers)
        self._model = llama_cpp.llama_model_load_from_file(os.fsencode(str(gguf)), mparams)
        if not self._model:
            raise RuntimeError(f"{gguf}: llama.cpp could not load it")
        self._ctx = peer_context(self._model, n_ctx, n_batch, n_ubatch, threads, flash_attn, kv_type, n_seq)
        if not self._ctx:
            self.close()
            raise RuntimeError("llama.cpp could not create a context")
        self.n_seq, self.n_batch = n_seq, llama_cpp.llama_n_batch(self._ctx)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        for _ in range(n_seq):
            chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            self._samplers.append(chain)

    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) items."""
        b = self._batch
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = llama_cpp.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {len(items)}")

    def run(self, prompts: Sequence[Sequence[int]], n_new: int) -> dict:
        """Prefill `prompts` (one per sequence, at most n_seq), then decode n_new tokens each; timings and ids."""
        if len(prompts) > self.n_seq:
            raise ValueError(f"{len(prompts)} prompts for {self.n_seq} sequences")
        llama_cpp.llama_memory_clear(self._mem, True)
        for chain in self._samplers:
            llama_cpp.llama_sampler_reset(chain)
        items = [(tok, pos, s, pos == len(p) - 1) for s, p in enumerate(prompts) for pos, tok in enumerate(p)]
        ids: list[list[int]] = [[] for _ in prompts]
        t0 = time.perf_counter()
        for off in range(0, len(items), self.n_batch):
            part = items[off:off + self.n_batch]
            self._decode(part)
            for i, (_, _, s, want) in enumerate(part):
                if want:
                    ids[s].append(llama_cpp.llama_sampler_sample(self._samplers[s], self._ctx, i))
        t1 = time.perf_counter()
        for _ in range(n_new - 1):
            self._decode([(ids[s][-1], len(p) + len(ids[s]) - 1, s, True) for s, p in enumerate(prompts)])
            for s in range(len(prompts)):
                ids[s].append(llama_cpp.llama_sampler_sample(self._samplers[s], self._ctx, s))
        t2 = time.perf_counter()
        steps = n_new - 1
        return {"prefill_tokens": len(items), "prefill_s": t1 - t0, "decode_steps": steps, "decode_s": t2 - t1,
                "decode_tokens": steps * len(prompts), "aggregate_tps": steps * len(prompts) / (t2 - t1),
                "ids": ids}

    def close(self) -> None:
        for chain in self._samplers:
            llama_cpp.llama_sampler_free(chain)
        self._samplers = []
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        self.close()
