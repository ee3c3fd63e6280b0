"""The memory plan: what a bundle will take in memory at a given context, before anything is loaded, and the
largest context (and KV-cache type) that fits.

    plan = plan_memory(bundle, ctx_size=32768, kv_type="f16")        # MemoryPlan: parts in bytes, total
    ctx, kv, plan = choose_context(bundle, "auto", "auto")           # largest fit, with a safety margin
    choose_context(bundle, 131072, "f16")                            # MemoryPlanError when it cannot fit
    print(format_plan_table(bundle))                                  # 8K / 32K / 128K per KV type (doctor)

Parts, all from the bundle's own files (nothing model-specific is written here):
- decoder weights: the tensor bytes of the decoder GGUF (llama.cpp maps them; they become resident as used);
- KV cache: per token n_layer x n_head_kv x (key_length + value_length) x the KV type's bytes per element
  (ggml row sizes: f32 4, f16 2, q8_0 34/32), dims read from the GGUF's own keys; llama.cpp pads the context
  to a multiple of 256 cells;
- decoder compute buffers: what llama.cpp's compute buffer holds at its peak (it reserves more, but only
  touched pages count): one micro-batch's FFN activations, one row of logits, and the attention mask of a
  full context; without flash attention also the n_ctx x n_ubatch x n_head score matrices (quadratic in the
  context: 8 GiB at 128K for this model, why flash attention is the default);
- vision encoder: the ONNX variant's file bytes plus an onnxruntime session's own, and the activations of the
  largest image allowed (`max_image_tokens`, default the preprocessor's max_pixels: 6144 tokens, about
  4.8 GB at real widths; onnxruntime's arena keeps its high-water mark);
- projector: its GGUF's bytes for the ggml projector, float32 copies of the weights for numpy;
- runtime: Python, numpy, onnxruntime and llama.cpp themselves (RUNTIME_BYTES, measured on Linux x86-64).
Weights mapped from the GGUF count once: where llama.cpp repacks CPU weights (AVX2/NEON builds), the mapped
pages it read them from stay visible in RSS until the kernel reclaims them, but they are not needed.
Against: free RAM (`available_memory()`: MemAvailable), or for a CUDA offload the GPU's free memory for the
decoder's weights, KV cache and compute buffers. `SAFETY_MARGIN` of the memory available is kept free.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.errors import MemoryPlanError

KV_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}  # ggml bytes per element of each KV-cache type
KV_PREFERENCE = ("f16", "q8_0")  # `--kv-type auto`: f16 unless q8_0 gives a longer context that fits
KV_PAD = 256  # llama.cpp rounds the KV cache up to this many cells
RUNTIME_BYTES = 100 << 20  # interpreter + numpy + onnxruntime + llama.cpp libraries, resident (measured)
ORT_SESSION_BYTES = 48 << 20  # an onnxruntime session beyond its weights (measured: fp32 and int8 encoders)
PROJECTOR_BYTES_PER_WEIGHT = {"F32": 4.0, "F16": 2.0, "Q8_0": 34 / 32}
SAFETY_MARGIN = 0.10  # of the memory available, kept free by `auto`
MIN_MARGIN_BYTES = 512 << 20
MIN_CONTEXT = 2048
CONTEXT_STEP = 1024
TABLE_CONTEXTS = (8192, 32768, 131072)
GIB = 2**30


@dataclass(frozen=True)
class DecoderDims:
    """What the plan needs from a decoder GGUF, read from its own keys and tensor table."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    weight_bytes: int

    def kv_bytes_per_token(self, kv_type: str) -> float:
        return self.n_layer * self.n_head_kv * (self.key_length + self.value_length) * KV_BYTES[kv_type]


def decoder_dims(gguf_path: str | os.PathLike) -> DecoderDims:
    """Dims of a llama.cpp decoder GGUF (any arch that follows gguf's `<arch>.` key names)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def value(key: str, default=None):
        f = reader.fields.get(key)
        if f is None:
            if default is None:
                raise MemoryPlanError(f"{gguf_path}: GGUF key {key} is missing; reconvert the bundle")
            return default
        return f.contents()

    arch = value("general.architecture")
    head = int(value(f"{arch}.attention.head_count"))
    embd = int(value(f"{arch}.embedding_length"))
    key_len = int(value(f"{arch}.attention.key_length", embd // head))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return DecoderDims(
        n_layer=int(value(f"{arch}.block_count")),
        n_embd=embd,
        n_head=head,
        n_head_kv=int(value(f"{arch}.attention.head_count_kv", head)),
        key_length=key_len,
        value_length=int(value(f"{arch}.attention.value_length", key_len)),
        n_ff=int(value(f"{arch}.feed_forward_length")),
        n_vocab=len(tokens.data) if tokens is not None else int(value(f"{arch}.vocab_size")),
        n_ctx_train=int(value(f"{arch}.context_length")),
        weight_bytes=sum(int(t.n_bytes) for t in reader.tensors),
    )


def compute_bytes(dims: DecoderDims, ctx_size: int, n_ubatch: int, flash_attn: bool) -> int:
    """What llama.cpp's CPU compute buffer holds at its peak: one micro-batch's FFN activations, one row of
    logits (the runtime asks for the last position's only), and the attention of a full context (see the
    module doc)."""
    ffn = n_ubatch * (3 * dims.n_ff + 4 * dims.n_embd) * 4
    kv = _padded(ctx_size)
    if flash_attn:
        attention = kv * n_ubatch * 2  # the f16 mask
    else:
        attention = 2 * kv * n_ubatch * dims.n_head * 4  # scores and their softmax, float32
    return ffn + dims.n_vocab * 4 + attention


def _padded(ctx_size: int) -> int:
    return -(-ctx_size // KV_PAD) * KV_PAD


def vision_activation_bytes(hidden: int, out_hidden: int, image_tokens: int, merge: int = 2) -> int:
    """onnxruntime's arena (kept after the largest image) plus the projector's activations for one image of
    `image_tokens` merged tokens: about 16 hidden-wide and 6 out_hidden-wide float32 rows per patch (fitted to
    measurements at real widths, 256 and 1369 tokens)."""
    patches = image_tokens * merge * merge
    return patches * (16 * hidden + 6 * out_hidden) * 4


@dataclass
class MemoryPlan:
    ctx_size: int
    kv_type: str
    flash_attn: bool
    offload: bool
    parts: dict = field(default_factory=dict)  # name -> bytes
    on_gpu: tuple = ()  # names of the parts that live in GPU memory when offloading

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def ram(self) -> int:
        return sum(v for k, v in self.parts.items() if k not in self.on_gpu)

    @property
    def vram(self) -> int:
        return sum(v for k, v in self.parts.items() if k in self.on_gpu)

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "ram": self.ram, "vram": self.vram}

    def describe(self) -> str:
        parts = ", ".join(f"{k.replace('_', ' ')} {v / GIB:.2f}" for k, v in self.parts.items())
        return f"{self.total / GIB:.2f} GiB ({parts})"


def _manifest(bundle) -> tuple[Path, dict]:
    path = Path(getattr(bundle, "path", bundle))
    manifest = getattr(bundle, "manifest", None) or json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    return path, manifest


def default_max_image_tokens(manifest: dict) -> int:
    """The most merged tokens one image can take: the preprocessor's max_pixels / (patch x merge)^2 / 2 frames."""
    pre = manifest.get("preprocessor") or {}
    size = pre.get("size") or {}
    max_pixels = size.get("longest_edge") or pre.get("max_pixels") or 28 * 28 * 2 * 6144
    factor = (pre.get("patch_size", 14) * pre.get("merge_size", 2)) ** 2
    return int(max_pixels // factor // pre.get("temporal_patch_size", 2))


def plan_memory(bundle, ctx_size: int, kv_type: str = "f16", vision_dtype: str | None = None,
                projector: str = "auto", n_ubatch: int = 512, flash_attn: bool = True, offload: bool = False,
                max_image_tokens: int | None = None, dims: DecoderDims | None = None) -> MemoryPlan:
    """The memory plan of `bundle` (a Bundle or its folder) at `ctx_size` tokens with a `kv_type` KV cache."""
    if kv_type not in KV_BYTES:
        raise MemoryPlanError(f"KV-cache type {kv_type!r} is not one of {', '.join(KV_BYTES)}")
    path, manifest = _manifest(bundle)
    dims = dims or decoder_dims(path / manifest["decoder"]["path"])
    variants = manifest["vision"]
    dtype = vision_dtype or next(iter(variants))
    if dtype not in variants:
        raise MemoryPlanError(f"{path}: no {dtype} vision encoder in this bundle; it has {', '.join(variants)}")
    model = manifest.get("model") or {}
    tokens = max_image_tokens if max_image_tokens is not None else default_max_image_tokens(manifest)
    projector_file = manifest["projector"]["bytes"]
    if projector == "numpy":  # float32 copies of the weights
        projector_file = int(projector_file * 4 / PROJECTOR_BYTES_PER_WEIGHT.get(manifest["projector"].get("quant"), 4.0))
    parts = {
        "decoder_weights": dims.weight_bytes,
        "kv_cache": int(_padded(ctx_size) * dims.kv_bytes_per_token(kv_type)),
        "decoder_compute": compute_bytes(dims, ctx_size, n_ubatch, flash_attn),
        "vision_weights": sum(f["bytes"] for f in variants[dtype]["files"]) + ORT_SESSION_BYTES,
        "vision_compute": vision_activation_bytes(model.get("vision_hidden_size", 0),
                                                  model.get("text_hidden_size", dims.n_embd), tokens,
                                                  model.get("spatial_merge_size", 2)),
        "projector": projector_file,
        "runtime": RUNTIME_BYTES,
    }
    return MemoryPlan(ctx_size, kv_type, flash_attn, offload, parts,
                      ("decoder_weights", "kv_cache", "decoder_compute") if offload else ())


def available_memory() -> int:
    """Bytes of RAM available to a new allocation without swapping (Linux MemAvailable; psutil elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)


def usable(available: int) -> int:
    """What `auto` lets a plan take of `available`: all but the safety margin."""
    return available - max(int(available * SAFETY_MARGIN), MIN_MARGIN_BYTES)


def _fits(plan: MemoryPlan, ram: int, vram: int | None) -> bool:
    if plan.offload:
        return plan.ram <= usable(ram) and vram is not None and plan.vram <= usable(vram)
    return plan.total <= usable(ram)


def largest_context(bundle, kv_type: str, ram: int, vram: int | None = None, **kwargs) -> int:
    """The largest context (a multiple of CONTEXT_STEP, at most the model's) whose plan fits; 0 if none does."""
    path, manifest = _manifest(bundle)
    dims = kwargs.pop("dims", None) or decoder_dims(path / manifest["decoder"]["path"])
    lo, hi = 0, dims.n_ctx_train // CONTEXT_STEP
    while lo < hi:  # every part grows with the context: bisect
        mid = (lo + hi + 1) // 2
        if _fits(plan_memory(bundle, mid * CONTEXT_STEP, kv_type, dims=dims, **kwargs), ram, vram):
            lo = mid
        else:
            hi = mid - 1
    ctx = lo * CONTEXT_STEP
    return ctx if ctx >= MIN_CONTEXT else 0


def choose_context(bundle, ctx_size: int | str = "auto", kv_type: str = "auto", ram: int | None = None,
                   vram: int | None = None, flash_attn: bool = True, **kwargs) -> tuple[int, str, MemoryPlan]:
    """(context, KV type, plan) for `--ctx-size N|auto` and `--kv-type TYPE|auto` against the memory available.

    auto context: the largest that fits with the safety margin. auto KV type: f16, unless q8_0 (needs flash
    attention) fits a longer context or the only one that fits. An explicit choice that cannot fit is refused
    with the plan's numbers and what would fit."""
    ram = available_memory() if ram is None else ram
    path, manifest = _manifest(bundle)
    dims = decoder_dims(path / manifest["decoder"]["path"])
    if kv_type not in ("auto", "f16", "f32") and not flash_attn:
        raise MemoryPlanError(f"a {kv_type} KV cache needs flash attention (llama.cpp quantizes V only with it)")
    kinds = [kv_type] if kv_type != "auto" else [k for k in KV_PREFERENCE if flash_attn or k == "f16"]
    kw = dict(kwargs, flash_attn=flash_attn, dims=dims)
    if ctx_size == "auto":
        best = max(kinds, key=lambda k: (largest_context(bundle, k, ram, vram, **kw), -kinds.index(k)))
        ctx = largest_context(bundle, best, ram, vram, **kw)
        if ctx:
            return ctx, best, plan_memory(bundle, ctx, best, **kw)
        raise MemoryPlanError(_refusal(bundle, MIN_CONTEXT, kinds[0], ram, vram, kw, "no context fits"))
    ctx = int(ctx_size)
    if ctx > dims.n_ctx_train:
        raise MemoryPlanError(f"--ctx-size {ctx} is over the model's context length {dims.n_ctx_train}")
    for kind in kinds:
        plan = plan_memory(bundle, ctx, kind, **kw)
        if _fits(plan, ram, vram):
            return ctx, kind, plan
    raise MemoryPlanError(_refusal(bundle, ctx, kinds[0], ram, vram, kw, f"--ctx-size {ctx} does not fit"))


def _refusal(bundle, ctx: int, kind: str, ram: int, vram: int | None, kw: dict, what: str) -> str:
    plan = plan_memory(bundle, ctx, kind, **kw)
    room = f"{usable(ram) / GIB:.2f} GiB of RAM usable ({ram / GIB:.2f} GiB available less the safety margin)"
    if plan.offload:
        room += f", {usable(vram or 0) / GIB:.2f} GiB of GPU memory usable"
    fits = []
    for k in KV_PREFERENCE:
        if k == "q8_0" and not kw.get("flash_attn", True):
            continue
        n = largest_context(bundle, k, ram, vram, **kw)
        if n:
            fits.append(f"--ctx-size {n} --kv-type {k}")
    hint = "what fits: " + " or ".join(fits) if fits else "nothing fits: free memory or use a smaller quant / vision variant"
    return f"{what} with a {kind} KV cache: the plan needs {plan.describe()}; {room}; {hint}"


def plan_table(bundle, contexts=TABLE_CONTEXTS, ram: int | None = None, vram: int | None = None,
               **kwargs) -> list[dict]:
    """Rows (context, KV type, each part, total, fits) for `glm-edge doctor`; kwargs as plan_memory's."""
    ram = available_memory() if ram is None else ram
    path, manifest = _manifest(bundle)
    dims = decoder_dims(path / manifest["decoder"]["path"])
    rows = []
    for ctx in contexts:
        for kind in KV_PREFERENCE:
            plan = plan_memory(bundle, min(ctx, dims.n_ctx_train), kind, dims=dims, **kwargs)
            rows.append({**plan.to_dict(), "fits": _fits(plan, ram, vram)})
    return rows


def format_plan_table(bundle, ram: int | None = None, **kwargs) -> str:
    """The plan table as text: one line per context and KV type, GiB per part."""
    ram = available_memory() if ram is None else ram
    rows = plan_table(bundle, ram=ram, **kwargs)
    names = list(rows[0]["parts"])
    head = ["context", "kv"] + [n.replace("_", " ") for n in names] + ["total", "fits"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [f"{r['ctx_size'] // 1024}K", r["kv_type"]] + [f"{r['parts'][n] / GIB:.2f}" for n in names]
        lines.append(" | ".join(cells + [f"{r['total'] / GIB:.2f}", "yes" if r["fits"] else "no"]))
    lines.append(f"(GiB; {ram / GIB:.1f} GiB available, {usable(ram) / GIB:.1f} usable after the safety margin)")
    return "\n".join(lines)

