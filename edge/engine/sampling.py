"""Sampling parameters and the llama.cpp sampler chain that applies them.

Defaults come from the checkpoint's `generation_config.json` (kept in the bundle manifest). Temperature 0
means greedy (argmax). Penalties see the generated tokens only. A GBNF grammar, when given, constrains
the output (used for `response_format`).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field, replace

import llama_cpp

from edge.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 0.6
    top_k: int = 2
    min_p: float = 0.0
    repetition_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    max_tokens: int = 1024
    stop: tuple[str, ...] = field(default_factory=tuple)
    grammar: str | None = None

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @classmethod
    def from_generation_config(cls, config: dict) -> SamplingParams:
        """Defaults as the checkpoint recommends; greedy if it says do_sample=false."""
        keys = {"temperature", "top_p", "top_k", "repetition_penalty", "min_p"}
        values = {k: config[k] for k in keys if config.get(k) is not None}
        if config.get("do_sample") is False:
            values["temperature"] = 0.0
        return cls(**values)

    def with_overrides(self, **overrides) -> SamplingParams:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


class Sampler:
    """A llama.cpp sampler chain bound to one decoder; `sample()` picks from the last logits and accepts."""

    def __init__(self, decoder, params: SamplingParams):
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda s: llama_cpp.llama_sampler_chain_add(self._chain, s)  # noqa: E731
        if params.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(decoder.vocab, params.grammar.encode(), b"root")
            if not grammar:
                self.close()
                raise InputError("the output grammar (from response_format) could not be compiled")
            add(grammar)
        if params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            add(llama_cpp.llama_sampler_init_penalties(  # this llama.cpp build takes n_vocab first
                decoder.n_vocab, params.penalty_last_n, params.repetition_penalty, params.frequency_penalty, params.presence_penalty
            ))
        if params.temperature == 0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
            add(llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(seed & 0xFFFFFFFF).value))
        self._ctx = decoder.ctx

    def sample(self) -> int:
        return llama_cpp.llama_sampler_sample(self._chain, self._ctx, -1)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self):
        self.close()
