"""A thin owner of llama.cpp (through llama-cpp-python's low-level API) for the GLM-4 M-RoPE decoder.

It loads the GGUF, creates one context holding `parallel` sequences over one unified KV cache (every
sequence may use the whole context; together they share its cells), and decodes two kinds of batches at
positions and sequences the caller chooses: token batches (1-D positions; llama.cpp broadcasts them to the
t/h/w sections; several sequences may share one batch) and image embedding batches of one sequence with
section-major 4xN positions held in our own buffer, because `llama_batch_init` allocates only N. Inputs longer than `n_batch` are split here: an embedding batch over `n_batch` makes
llama.cpp abort the whole process. It knows nothing of chat formats or images; `close()` frees
everything deterministically (also on garbage collection).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Sequence

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import SchemaConverter  # noqa: F401  (JSON schema -> GBNF, for edge.chat.grammar)

from edge.engine.sampling import SamplingParams
from edge.errors import DecodeAborted, DecoderError, InputError, KVCacheFullError
from edge.options import Device, FlashAttn, KvType, RuntimeOptions

log = logging.getLogger(__name__)

KV_TYPES = {KvType.F32: llama_cpp.GGML_TYPE_F32, KvType.F16: llama_cpp.GGML_TYPE_F16,
            KvType.Q8_0: llama_cpp.GGML_TYPE_Q8_0}
FLASH_ATTN = {
    FlashAttn.AUTO: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    FlashAttn.ON: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    FlashAttn.OFF: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (Linux): llama.cpp's AMX buffers crash quantized GLM-4 decodes there
    (ggml-org/llama.cpp#20824, seen here on Sapphire Rapids), so they stay off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


def supports_gpu_offload() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_layers(device: Device | str, offload: bool | None = None) -> int:
    """llama.cpp offload for a device choice; a GPU choice on a CPU-only build is refused, not ignored.
    `offload`: whether the build can offload (None: ask this llama-cpp-python)."""
    device = Device.parse(device, "--device")
    offload = supports_gpu_offload() if offload is None else offload
    if device == Device.CPU:
        return 0
    if device == Device.AUTO:
        return 999 if offload else 0
    if not offload:
        raise DecoderError(
            f"device {device!r} requested but this llama-cpp-python was built without GPU offload; "
            f"reinstall it with `make serve BACKEND={device}` or use --device cpu"
        )
    return 999


class Decoder:
    def __init__(self, gguf_path: str, options: RuntimeOptions = RuntimeOptions()):
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

        threads = options.threads or os.cpu_count() or 1
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = options.ctx_size
        cparams.n_batch = options.batch_size
        cparams.n_ubatch = options.ubatch_size
        cparams.n_seq_max = options.parallel
        cparams.kv_unified = True
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
            raise DecoderError(f"llama.cpp could not create a context of {options.ctx_size} tokens (out of memory?)")
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = llama_cpp.llama_n_batch(self._ctx)
        self.n_seq = options.parallel
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

    def sampler(self, params: SamplingParams, history: Sequence[int] = ()) -> Sampler:
        """A sampler chain for `params` on this context; `history` (the sequence as the reference model's
        ids) primes the repetition penalty."""
        return Sampler(self, params, history)

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

    def decode_tokens(self, tokens: Sequence[int], start: int, logits_last: bool = True, seq: int = 0) -> None:
        """Decode `tokens` of sequence `seq` at positions start, start+1, ...; logits only for the last one if
        asked."""
        for off in range(0, len(tokens), self.n_batch):
            part = tokens[off : off + self.n_batch]
            last_part = off + self.n_batch >= len(tokens)
            self.decode_batch(part, range(start + off, start + off + len(part)), [seq] * len(part),
                              [logits_last and last_part and i == len(part) - 1 for i in range(len(part))])

    def decode_batch(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int],
                     logits: Sequence[bool]) -> None:
        """One llama_decode of up to n_batch tokens, each with its own position and sequence; the logits of
        the i-th token (where asked) are then `logits(i)`."""
        if len(tokens) > self.n_batch:
            raise DecoderError(f"a batch of {len(tokens)} tokens exceeds n_batch {self.n_batch}")
        batch = self._tok_batch
        for i, (tok, pos, seq, want) in enumerate(zip(tokens, positions, seqs, logits)):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if want else 0
        batch.n_tokens = len(tokens)
        self._decode(batch)

    def decode_embeddings(self, embeddings: np.ndarray, positions: np.ndarray, seq: int = 0) -> None:
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
                    batch.seq_id[i][0] = seq
                batch.n_tokens = n
                self._decode(batch)
        finally:
            batch.pos = ctypes.cast(self._emb_pos_orig, ctypes.POINTER(llama_cpp.llama_pos))

    def _decode(self, batch) -> None:
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc == 2:
            self._abort.clear()
            raise DecodeAborted("generation cancelled")
        if rc == 1:
            raise KVCacheFullError(f"the KV cache has no room for a batch of {batch.n_tokens} more tokens")
        if rc != 0:
            raise DecoderError(f"llama_decode failed with code {rc} for a batch of {batch.n_tokens}")

    def logits(self, i: int = -1) -> np.ndarray:
        """Logits of the i-th token of the last batch (default: its last one with logits), a copy."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, i)
        if not ptr:
            raise DecoderError("no logits available: decode a token chunk with logits_last=True first")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def truncate(self, position: int, seq: int = 0) -> None:
        """Forget every KV cell of sequence `seq` at `position` or later (0: all of its cells)."""
        if not llama_cpp.llama_memory_seq_rm(self._mem, seq, max(position, 0), -1):
            llama_cpp.llama_memory_seq_rm(self._mem, seq, 0, -1)
            raise DecoderError(f"could not truncate the KV cache of sequence {seq} at position {position}")

    def request_abort(self) -> None:
        """Make the running (or next) llama_decode return early (shutdown); thread-safe."""
        self._abort.set()

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


class Sampler:
    """A llama.cpp sampler chain for one generation; `sample()` picks from the last logits and accepts.

    Chain: grammar, repetition penalty (primed with the prompt: transformers' semantics), presence/frequency
    penalties (generated tokens only: OpenAI's), then greedy, or top-k, top-p, min-p, temperature and a
    seeded draw (transformers' warper order).
    """

    def __init__(self, decoder: Decoder, params: SamplingParams, history: Sequence[int] = ()):
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._ctx = decoder._ctx
        add = lambda s: llama_cpp.llama_sampler_chain_add(self._chain, s)  # noqa: E731
        # llama.cpp keeps the last `last_n` accepted ids; the whole context covers "the sequence so far".
        last_n = params.penalty_last_n if params.penalty_last_n is not None else decoder.n_ctx
        if params.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(decoder._vocab, params.grammar.encode(), b"root")
            if not grammar:
                self.close()
                raise InputError("the output grammar (from response_format or tool_choice) could not be compiled")
            add(grammar)
        if params.repetition_penalty != 1.0:
            # this llama.cpp build takes n_vocab first
            repeat = llama_cpp.llama_sampler_init_penalties(decoder.n_vocab, last_n, params.repetition_penalty, 0.0, 0.0)
            add(repeat)
            for token in history:  # accepted into this sampler alone, not the grammar
                llama_cpp.llama_sampler_accept(repeat, token)
        if params.presence_penalty or params.frequency_penalty:
            add(llama_cpp.llama_sampler_init_penalties(
                decoder.n_vocab, last_n, 1.0, params.frequency_penalty, params.presence_penalty))
        if params.greedy:
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

    def sample(self, i: int = -1) -> int:
        """Pick from the logits of the i-th token of the last batch and accept the pick."""
        return llama_cpp.llama_sampler_sample(self._chain, self._ctx, i)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self):
        self.close()


def quiet_llama_log(keep_levels: tuple[int, ...] = (3, 4)) -> object:
    """Route llama.cpp's log to stderr for the given levels only (default: GGML_LOG_LEVEL_WARN and _ERROR; ()
    silences it). Returns the ctypes callback: the caller keeps it alive (the C side holds only a pointer)."""

    def log_cb(level, text, _user):
        if level in keep_levels and text:
            sys.stderr.write(text.decode("utf-8", "replace"))

    callback = llama_cpp.llama_log_callback(log_cb)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return callback


_DEV_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def ggml_devices() -> list[dict]:
    """ggml's devices in llama-cpp-python's build (the libggml llama.cpp itself loaded): name, type
    (cpu/gpu/igpu/accel), backend, description, memory."""
    from llama_cpp import _ggml

    lib, c = _ggml.libggml, ctypes
    sigs = {
        "ggml_backend_dev_count": (c.c_size_t, []),
        "ggml_backend_dev_get": (c.c_void_p, [c.c_size_t]),
        "ggml_backend_dev_name": (c.c_char_p, [c.c_void_p]),
        "ggml_backend_dev_description": (c.c_char_p, [c.c_void_p]),
        "ggml_backend_dev_type": (c.c_int, [c.c_void_p]),
        "ggml_backend_dev_backend_reg": (c.c_void_p, [c.c_void_p]),
        "ggml_backend_reg_name": (c.c_char_p, [c.c_void_p]),
        "ggml_backend_dev_memory": (None, [c.c_void_p, c.POINTER(c.c_size_t), c.POINTER(c.c_size_t)]),
    }
    fns = {}
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
        fns[name] = fn
    out = []
    for i in range(fns["ggml_backend_dev_count"]()):
        dev = fns["ggml_backend_dev_get"](i)
        free, total = c.c_size_t(0), c.c_size_t(0)
        fns["ggml_backend_dev_memory"](dev, c.byref(free), c.byref(total))
        out.append({
            "name": fns["ggml_backend_dev_name"](dev).decode(),
            "type": _DEV_TYPES.get(fns["ggml_backend_dev_type"](dev), "other"),
            "backend": fns["ggml_backend_reg_name"](fns["ggml_backend_dev_backend_reg"](dev)).decode(),
            "description": fns["ggml_backend_dev_description"](dev).decode(),
            "memory_total_mib": total.value // 2**20,
            "memory_free_mib": free.value // 2**20,
        })
    return out


def system_info() -> dict:
    """llama-cpp-python's version, GPU offload support and llama.cpp's system line (for the doctor)."""
    info = llama_cpp.llama_print_system_info()
    return {
        "version": llama_cpp.__version__,
        "gpu_offload": supports_gpu_offload(),
        "system_info": (info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)).strip(),
    }
