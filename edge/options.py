"""Typed runtime options: one name per option, from the CLI flag to the code.

Every closed set of choices is an enum here; the CLI builds its `choices` from these enums and
`RuntimeOptions` carries them to `Runtime.load` (the server's settings hold one, too). A CLI flag `--x-y`
is the field `x_y` everywhere: `--ctx-size` is `ctx_size`, `--batch-size` is `batch_size`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum

from edge.errors import OptionError


class Choice(str, Enum):
    """A string-valued choice whose constructor error lists what is allowed."""

    @classmethod
    def parse(cls, value: str | Choice, option: str) -> Choice:
        try:
            return cls(value)
        except ValueError:
            raise OptionError(f"{option} is {value!r}; allowed: {', '.join(cls.values())}") from None

    @classmethod
    def values(cls) -> list[str]:
        return [c.value for c in cls]

    def __str__(self) -> str:
        return self.value


class Device(Choice):
    """Where the decoder, projector and vision encoder run (auto: GPU offload when this build has it)."""

    AUTO = "auto"
    CPU = "cpu"
    METAL = "metal"
    CUDA = "cuda"

    @property
    def vision_provider(self) -> str:
        """The onnxruntime execution-provider family that goes with this device."""
        return {"cuda": "cuda", "metal": "coreml", "cpu": "cpu"}.get(self.value, "auto")


class KvType(Choice):
    """auto: the memory plan picks f16, or q8_0 when that lets a longer context fit (Runtime.load resolves it)."""

    AUTO = "auto"
    F16 = "f16"
    F32 = "f32"
    Q8_0 = "q8_0"


class FlashAttn(Choice):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class ProjectorEngine(Choice):
    """auto/native: ggml from the quantized GGUF (least memory); numpy: float32 BLAS (faster on x86 CPUs)."""

    AUTO = "auto"
    NATIVE = "native"
    NUMPY = "numpy"


class Verify(Choice):
    """Bundle hash check at load: auto (sha256 when a file changed since the last check), full, size."""

    AUTO = "auto"
    FULL = "full"
    SIZE = "size"


@dataclass(frozen=True)
class RuntimeOptions:
    """Everything `Runtime.load` needs besides the bundle path."""

    device: Device = Device.AUTO
    ctx_size: int = 8192  # 0 (`--ctx-size auto`): the largest context the memory plan fits
    batch_size: int = 512
    ubatch_size: int = 512
    threads: int | None = None  # None: all cores
    kv_type: KvType = KvType.F16
    flash_attn: FlashAttn = FlashAttn.AUTO
    vision_dtype: str | None = None  # None: the bundle's first variant
    vision_provider: str | None = None  # None: from the device
    projector: ProjectorEngine = ProjectorEngine.AUTO
    verify: Verify = Verify.AUTO
    parallel: int = 0  # sequences decoded together (--parallel); 0: default_parallel() for the device
    prefill_chunk: int = 0  # prompt tokens per step beside running streams; 0: default_prefill_chunk()
    thinking: bool = True  # reasoning on unless a request says otherwise
    image_cache_mb: float = 512.0
    mmap: bool = True
    extra_buffers: bool | None = None  # llama.cpp's repacked/AMX weight buffers; None: on unless the CPU has AMX
    memory_check: bool = False  # refuse, before loading, a context the plan says cannot fit (False: warn)
    max_image_tokens: int | None = None  # cap on every image's tokens (None: the preprocessor's max, as HF)

    def __post_init__(self):
        for name, kind in (("device", Device), ("kv_type", KvType), ("flash_attn", FlashAttn),
                           ("projector", ProjectorEngine), ("verify", Verify)):
            object.__setattr__(self, name, kind.parse(getattr(self, name), f"--{name.replace('_', '-')}"))
        if self.ctx_size < 0:
            raise OptionError(f"--ctx-size is {self.ctx_size}; give a number of tokens or auto")
        if not 0 < self.ubatch_size <= self.batch_size or (self.ctx_size and self.batch_size > self.ctx_size):
            raise OptionError(f"need 0 < --ubatch-size ({self.ubatch_size}) <= --batch-size ({self.batch_size}) "
                             f"<= --ctx-size ({self.ctx_size})")
        if self.parallel < 0:
            raise OptionError(f"--parallel is {self.parallel}; it must be at least 1 (0: the device's default)")
        if not 0 <= self.prefill_chunk <= self.batch_size:
            raise OptionError(f"--prefill-chunk is {self.prefill_chunk}; it must be between 1 and --batch-size "
                              f"({self.batch_size}) (0: the device's default)")
        if self.max_image_tokens is not None and self.max_image_tokens < 4:
            raise OptionError(f"--max-image-tokens is {self.max_image_tokens}; it must be at least 4")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads is {self.threads}; it must be at least 1")

    def with_(self, **changes) -> RuntimeOptions:
        """A copy with the given fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def default_parallel(gpu: bool) -> int:
    """Sequences decoded together when --parallel is not given: 4 with GPU offload (as llama-server's auto), 2 on
    a CPU (decode reads the weights once per step for every sequence, so a second stream costs little, while
    more streams on a few cores lengthen each stream's time per token)."""
    return 4 if gpu else 2


def default_prefill_chunk(gpu: bool, batch_size: int) -> int:
    """Prompt tokens admitted per step while other sequences generate, when --prefill-chunk is not given. On a
    CPU prefill is compute-bound, so a step's time grows with its tokens: 128 halves the running streams' wait
    per token against 512 while a long prompt is admitted on 2 cores (measured in the README).
    With GPU offload a full batch costs little more than one decode step, so the whole batch is used."""
    return batch_size if gpu else min(128, batch_size)
