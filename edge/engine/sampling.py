"""Sampling parameters, with defaults exactly as transformers' `generate` would use them for the checkpoint.

Defaults: the checkpoint's `generation_config.json` (kept in the bundle manifest) where it has a value,
otherwise transformers' own `GenerationConfig` defaults (`TRANSFORMERS_DEFAULTS`; nothing model-specific is
written here). `sampling_defaults` also says where each value came from. Greedy (argmax) whenever sampling is
off (`do_sample` false, transformers' default) or the temperature is 0; a request that sets a temperature
above 0 turns sampling on, as OpenAI clients expect.

Penalties:
- `repetition_penalty` has transformers' meaning: every id of the sequence so far, prompt included (media
  positions count as their placeholder id, as in transformers' `input_ids`), has its logit divided by the
  penalty when positive and multiplied when negative, once per distinct id.
- `presence_penalty` / `frequency_penalty` have OpenAI's meaning: subtracted once / once per occurrence,
  over the generated tokens only.
- `penalty_last_n`: None (default) looks at the whole sequence; N restricts both kinds to the last N ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edge.errors import InputError

# transformers.GenerationConfig defaults for the keys sampling uses (transformers 5.x).
TRANSFORMERS_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "min_p": 0.0,
                         "repetition_penalty": 1.0}
CHECKPOINT = "generation_config.json"
TRANSFORMERS = "transformers default"


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = TRANSFORMERS_DEFAULTS["do_sample"]
    temperature: float = TRANSFORMERS_DEFAULTS["temperature"]
    top_p: float = TRANSFORMERS_DEFAULTS["top_p"]
    top_k: int = TRANSFORMERS_DEFAULTS["top_k"]
    min_p: float = TRANSFORMERS_DEFAULTS["min_p"]
    repetition_penalty: float = TRANSFORMERS_DEFAULTS["repetition_penalty"]
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int | None = None
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
            (self.penalty_last_n is None or self.penalty_last_n >= 0, "penalty_last_n must be >= 0"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def with_overrides(self, **overrides) -> SamplingParams:
        """A copy with request values; a temperature above 0 turns sampling on, 0 turns it off."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if "temperature" in values and "do_sample" not in values:
            values["do_sample"] = values["temperature"] > 0
        return replace(self, **values)


def sampling_defaults(config: dict) -> tuple[SamplingParams, dict[str, str]]:
    """The checkpoint's defaults and, per key, where each came from (CHECKPOINT or TRANSFORMERS)."""
    values, sources = {}, {}
    for key, default in TRANSFORMERS_DEFAULTS.items():
        if config.get(key) is not None:
            values[key], sources[key] = config[key], CHECKPOINT
        else:
            values[key], sources[key] = default, TRANSFORMERS
    return SamplingParams(**values), sources
