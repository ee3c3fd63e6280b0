"""A thin owner of llama.cpp (through llama-cpp-python's low-level API) for the GLM-4 M-RoPE decoder.

It loads the GGUF, creates one context (one sequence), and decodes two kinds of chunks at positions the
caller chooses: token chunks (1-D positions; llama.cpp broadcasts them to the t/h/w sections) and image
embedding chunks with section-major 4xN positions held in our own buffer, because `llama_batch_init`
allocates only N. Inputs longer than `n_batch` are split here: an embedding batch over `n_batch` makes
llama.cpp abort the whole process. It knows nothing of chat formats or images; `close()` frees
everything deterministically (also on garbage collection).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np

from edge.errors import DecoderError, GlmEdgeError

log = logging.getLogger(__name__)

KV_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}
FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
DEVICES = ("auto", "cpu", "metal", "cuda")


class DecodeAborted(GlmEdgeError):
    """A decode was aborted on request (client gone, server shutting down)."""

    http_status = 499
    code = "cancelled"


@dataclass(frozen=True)
class DecoderOptions:
    n_ctx: int = 8192
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int | None = None
    device: str = "auto"
    flash_attn: str = "auto"
    kv_type: str = "f16"
    mmap: bool = True
    extra_buffers: bool | None = None  # llama.cpp's repacked/AMX weight buffers; None: on unless the CPU has AMX

    def __post_init__(self):
        if self.device not in DEVICES:
            raise DecoderError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.kv_type not in KV_TYPES:
            raise DecoderError(f"KV-cache type {self.kv_type!r} is not one of {', '.join(KV_TYPES)}")
        if self.flash_attn not in FLASH_ATTN:
            raise DecoderError(f"flash attention {self.flash_attn!r} is not one of {', '.join(FLASH_ATTN)}")
        if not 0 < self.n_ubatch <= self.n_batch <= self.n_ctx:
            raise DecoderError(f"need 0 < n_ubatch ({self.n_ubatch}) <= n_batch ({self.n_batch}) <= n_ctx ({self.n_ctx})")


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (Linux): llama.cpp's AMX buffers crash quantized GLM-4 decodes there
    (ggml-org/llama.cpp#20824, seen here on Sapphire Rapids), so they stay off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


def gpu_layers(device: str) -> int:
    """llama.cpp offload for a device choice; a GPU choice on a CPU-only build is refused, not ignored."""
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    if device == "cpu":
        return 0
    if device == "auto":
        return 999 if offload else 0
    if not offload:
        raise DecoderError(
            f"device {device!r} requested but this llama-cpp-python was built without GPU offload; "
            f"reinstall it with `make serve BACKEND={device}` or use --device cpu"
        )
    return 999


class Decoder:
    def __init__(self, gguf_path: str, options: DecoderOptions = DecoderOptions()):
        self.options = options
        self._model = None
        self._ctx = None
        self._batches: list = []
        self._abort = threading.Event()
        # Keep the ctypes callback alive as long as the context that calls it.
        self._abort_cb = llama_cpp.ggml_abort_callback(lambda _data: self._abort.is_set())

        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = gpu_layers(options.device)
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if options.mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
        extra = options.extra_buffers if options.extra_buffers is not None else not cpu_has_amx()
        mparams.use_extra_bufts = extra
        self.extra_buffers = extra
        self._model = llama_cpp.llama_model_load_from_file(os.fsencode(gguf_path), mparams)
        if not self._model:
            raise DecoderError(f"{gguf_path}: llama.cpp could not load this GGUF (see the log above)")
        self.offloaded = mparams.n_gpu_layers > 0
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)

        threads = options.n_threads or os.cpu_count() or 1
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = options.n_ctx
        cparams.n_batch = options.n_batch
        cparams.n_ubatch = options.n_ubatch
        cparams.n_seq_max = 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.type_k = KV_TYPES[options.kv_type]
        cparams.type_v = KV_TYPES[options.kv_type]
        cparams.flash_attn_type = FLASH_ATTN[options.flash_attn]
        cparams.abort_callback = self._abort_cb
        cparams.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise DecoderError(f"llama.cpp could not create a context of {options.n_ctx} tokens (out of memory?)")
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)
        self._mem = llama_cpp.llama_get_memory(self._ctx)

        self._tok_batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._emb_batch = llama_cpp.llama_batch_init(self.n_batch, self.n_embd, 1)
        self._batches = [self._tok_batch, self._emb_batch]
        # Section-major positions for embedding batches: t block, row block, col block, zero block.
        self._pos4 = (llama_cpp.llama_pos * (4 * self.n_batch))()
        self._emb_pos_orig = ctypes.cast(self._emb_batch.pos, ctypes.c_void_p).value
        for batch in self._batches:
            for i in range(self.n_batch):
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0

    @property
    def ctx(self):
        """The llama_context handle (for samplers)."""
        return self._ctx

    @property
    def vocab(self):
        """The llama_vocab handle (for grammar samplers)."""
        return self._vocab

    # --- vocabulary -------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            raise DecoderError(f"tokenizer needs {-n} slots for {len(data)} bytes")
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 20)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8") if n >= 0 else None

    # --- decoding ---------------------------------------------------------------------------------

    def decode_tokens(self, tokens: Sequence[int], start: int, logits_last: bool = True) -> None:
        """Decode `tokens` at positions start, start+1, ...; logits only for the last one if asked."""
        batch = self._tok_batch
        for off in range(0, len(tokens), self.n_batch):
            part = tokens[off : off + self.n_batch]
            last_part = off + self.n_batch >= len(tokens)
            for i, tok in enumerate(part):
                batch.token[i] = tok
                batch.pos[i] = start + off + i
                batch.logits[i] = 1 if (logits_last and last_part and i == len(part) - 1) else 0
            batch.n_tokens = len(part)
            self._decode(batch)

    def decode_embeddings(self, embeddings: np.ndarray, positions: np.ndarray) -> None:
        """Decode rows of `embeddings` [n, n_embd] at M-RoPE `positions` [4, n] (int32), no logits."""
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.n_embd:
            raise DecoderError(f"image embeddings have shape {emb.shape}, the decoder needs [n, {self.n_embd}]")
        if positions.shape != (4, emb.shape[0]):
            raise DecoderError(f"positions have shape {positions.shape}, expected (4, {emb.shape[0]})")
        batch = self._emb_batch
        batch.pos = ctypes.cast(self._pos4, ctypes.POINTER(llama_cpp.llama_pos))
        try:
            for off in range(0, emb.shape[0], self.n_batch):
                n = min(self.n_batch, emb.shape[0] - off)
                ctypes.memmove(batch.embd, emb[off : off + n].ctypes.data, n * self.n_embd * 4)
                pos = np.ascontiguousarray(positions[:, off : off + n], dtype=np.int32)
                ctypes.memmove(self._pos4, pos.ctypes.data, pos.nbytes)
                for i in range(n):
                    batch.logits[i] = 0
                batch.n_tokens = n
                self._decode(batch)
        finally:
            batch.pos = ctypes.cast(self._emb_pos_orig, ctypes.POINTER(llama_cpp.llama_pos))

    def _decode(self, batch) -> None:
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc == 2:
            self._abort.clear()
            raise DecodeAborted("generation cancelled")
        if rc != 0:
            raise DecoderError(f"llama_decode failed with code {rc} for a batch of {batch.n_tokens}")

    def logits(self) -> np.ndarray:
        """Logits of the last token decoded with logits requested (a copy)."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        if not ptr:
            raise DecoderError("no logits available: decode a token chunk with logits_last=True first")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def truncate(self, position: int) -> None:
        """Forget every KV cell at `position` or later (0 forgets all)."""
        if position <= 0:
            llama_cpp.llama_memory_clear(self._mem, True)
        elif not llama_cpp.llama_memory_seq_rm(self._mem, 0, position, -1):
            llama_cpp.llama_memory_clear(self._mem, True)
            raise DecoderError(f"could not truncate the KV cache at position {position}")

    def request_abort(self) -> None:
        """Make the running (or next) llama_decode return early; thread-safe."""
        self._abort.set()

    def clear_abort(self) -> None:
        """Forget an abort request that came too late to stop a decode (before the next job starts)."""
        self._abort.clear()

    def close(self) -> None:
        if self._batches:
            self._emb_batch.pos = ctypes.cast(self._emb_pos_orig, ctypes.POINTER(llama_cpp.llama_pos))
            for batch in self._batches:
                llama_cpp.llama_batch_free(batch)
            self._batches = []
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
