"""llama.cpp's own vision path (mtmd + an mmproj GGUF) driven through llama-cpp-python's ctypes bindings.

`MtmdPeer` owns one llama model, one llama context and one mtmd context. It evaluates a prompt holding
media markers the way llama.cpp's tools do (mtmd_tokenize, then per chunk: text -> llama_decode,
image -> mtmd_encode_chunk + mtmd_helper_decode_image_chunk), timing each stage separately:

    preprocess  image decode (stb_image, from the same encoded bytes we get) + mtmd_tokenize (resize, normalise)
    vision      mtmd_encode_chunk (ViT + projector in ggml)
    prefill     llama_decode of text chunks and of the image embeddings (M-RoPE positions by mtmd)
    first_token greedy argmax of the last logits (request start -> first token)

It never reuses KV across calls (mtmd re-evaluates the whole prompt; see the multi-turn scenario).
Used by the benchmarks and by tests/test_mmproj.py; never imported by edge/.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp as M

from edge.engine.llama import FLASH_ATTN, KV_TYPES, cpu_has_amx, quiet_llama_log
from edge.options import FlashAttn, KvType

_LOG_CB = None


def quiet_llama() -> None:
    """Silence llama.cpp's and mtmd's logging (kept alive for the process)."""
    global _LOG_CB
    if _LOG_CB is None:
        _LOG_CB = quiet_llama_log(keep_levels=())
        for name in ("mtmd_log_set", "mtmd_helper_log_set"):
            fn = getattr(M, name, None)
            if fn is not None:
                try:
                    fn(_LOG_CB, ctypes.c_void_p(0))
                except (ctypes.ArgumentError, TypeError):
                    pass


def default_extra_buffers() -> bool:
    """llama.cpp's repacked/AMX weight buffers: what our Decoder picks (off on AMX CPUs, where llama.cpp's AMX
    matmul segfaults on quantized GLM-4 weights), so that both sides run the same kernels."""
    return not cpu_has_amx()


def model_params(extra_buffers: bool | None = None):
    """llama_model_params as both peers use them: CPU only, mmap, extra buffers as our Decoder."""
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP  # as llama-cpp-python's Llama and our Decoder
    mparams.use_extra_bufts = default_extra_buffers() if extra_buffers is None else extra_buffers
    return mparams




@dataclass
class PeerTimings:
    preprocess: float = 0.0
    vision: float = 0.0
    prefill: float = 0.0
    first_token: float = 0.0
    n_tokens: int = 0  # prompt positions incl. image tokens
    image_tokens: int = 0
    token: int = -1


def peer_context(model, n_ctx: int, n_batch: int, n_ubatch: int, threads: int, flash_attn: str, kv_type: str,
                 n_seq: int = 1):
    """A llama.cpp context with the runtime's settings (unified KV for several sequences); NULL on failure."""
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_batch, n_ubatch
    cparams.n_seq_max = n_seq
    cparams.kv_unified = True
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.flash_attn_type = FLASH_ATTN[FlashAttn(flash_attn)]
    cparams.type_k = cparams.type_v = KV_TYPES[KvType(kv_type)]
    cparams.no_perf = True
    return llama_cpp.llama_init_from_model(model, cparams)


class MtmdPeer:
    def __init__(self, decoder_gguf: str | os.PathLike, mmproj: str | os.PathLike, *, n_ctx: int = 4096,
                 n_batch: int = 512, n_ubatch: int = 512, threads: int = 2, flash_attn: str = "on",
                 kv_type: str = "f16", warmup: bool = False, extra_buffers: bool | None = None):
        quiet_llama()
        self._model = self._ctx = self._mctx = None
        mparams = model_params(extra_buffers)
        self.extra_buffers = bool(mparams.use_extra_bufts)
        self._model = llama_cpp.llama_model_load_from_file(os.fsencode(str(decoder_gguf)), mparams)
        if not self._model:
            raise RuntimeError(f"{decoder_gguf}: llama.cpp could not load it")
        self._ctx = peer_context(self._model, n_ctx, n_batch, n_ubatch, threads, flash_attn, kv_type)
        if not self._ctx:
            self.close()
            raise RuntimeError("llama.cpp could not create a context")
        self.n_batch = n_batch
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model))
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        mp = M.mtmd_context_params_default()
        mp.use_gpu = False
        mp.n_threads = threads
        mp.print_timings = False
        mp.warmup = warmup
        mp.flash_attn_type = FLASH_ATTN[FlashAttn(flash_attn)]
        self._mctx = M.mtmd_init_from_file(os.fsencode(str(mmproj)), self._model, mp)
        if not self._mctx:
            self.close()
            raise RuntimeError(f"{mmproj}: mtmd could not load this mmproj with {decoder_gguf}")
        self.marker = M.mtmd_default_marker().decode()

    # --- pieces -------------------------------------------------------------------------------------

    def bitmap(self, encoded: bytes):
        buf = (ctypes.c_ubyte * len(encoded)).from_buffer_copy(encoded)
        bmp = M.mtmd_helper_bitmap_init_from_buf(self._mctx, buf, len(encoded), False)
        if not bmp:
            raise RuntimeError("mtmd could not decode the image bytes")
        return bmp

    def tokenize(self, prompt: str, bitmaps: list) -> int:
        """mtmd input chunks of `prompt` (media markers -> bitmaps, special tokens parsed); caller frees."""
        chunks = M.mtmd_input_chunks_init()
        data = prompt.encode()
        text = M.mtmd_input_text(data, len(data), False, True)
        arr = (M.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
        rc = M.mtmd_tokenize(self._mctx, chunks, ctypes.byref(text), arr, len(bitmaps))
        if rc != 0:
            M.mtmd_input_chunks_free(chunks)
            raise RuntimeError(f"mtmd_tokenize failed ({rc})")
        return chunks

    def encode_image_chunk(self, chunk) -> np.ndarray:
        """Run mtmd's ViT + projector on an image chunk; a copy of its [n_tokens, n_embd] embeddings."""
        rc = M.mtmd_encode_chunk(self._mctx, chunk)
        if rc != 0:
            raise RuntimeError(f"mtmd_encode_chunk failed ({rc})")
        n = M.mtmd_input_chunk_get_n_tokens(chunk)
        ptr = M.mtmd_get_output_embd(self._mctx)
        return np.ctypeslib.as_array(ptr, shape=(n * self.n_embd,)).reshape(n, self.n_embd).copy()

    def image_grid(self, chunk) -> tuple[int, int]:
        """(rows, cols) of merged image tokens of an image chunk."""
        tok = M.mtmd_input_chunk_get_tokens_image(chunk)
        return M.mtmd_image_tokens_get_ny(tok), M.mtmd_image_tokens_get_nx(tok)

    def image_embeddings(self, encoded: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """mtmd's embeddings of one image (no decoder involved) and its merged (rows, cols)."""
        bmp = self.bitmap(encoded)
        chunks = self.tokenize(self.marker, [bmp])
        try:
            for i in range(M.mtmd_input_chunks_size(chunks)):
                chunk = M.mtmd_input_chunks_get(chunks, i)
                if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    return self.encode_image_chunk(chunk), self.image_grid(chunk)
            raise RuntimeError("no image chunk produced")
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bmp)

    # --- a whole request ------------------------------------------------------------------------

    def first_token(self, prompt: str, images: list[bytes]) -> PeerTimings:
        """Clear the KV cache, evaluate `prompt` (one marker per image) and pick the greedy first token."""
        t = PeerTimings()
        start = time.perf_counter()
        llama_cpp.llama_memory_clear(self._mem, True)
        bitmaps = [self.bitmap(b) for b in images]
        chunks = self.tokenize(prompt, bitmaps)
        t.preprocess = time.perf_counter() - start
        try:
            n_past = 0
            new_past = llama_cpp.llama_pos(0)
            n = M.mtmd_input_chunks_size(chunks)
            for i in range(n):
                chunk = M.mtmd_input_chunks_get(chunks, i)
                last = i == n - 1
                if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    s = time.perf_counter()
                    rc = M.mtmd_helper_eval_chunk_single(self._mctx, self._ctx, chunk, n_past, 0, self.n_batch,
                                                         last, ctypes.byref(new_past))
                    t.prefill += time.perf_counter() - s
                else:
                    s = time.perf_counter()
                    if M.mtmd_encode_chunk(self._mctx, chunk) != 0:
                        raise RuntimeError("mtmd_encode_chunk failed")
                    embd = M.mtmd_get_output_embd(self._mctx)
                    t.vision += time.perf_counter() - s
                    t.image_tokens += M.mtmd_input_chunk_get_n_tokens(chunk)
                    s = time.perf_counter()
                    rc = M.mtmd_helper_decode_image_chunk(self._mctx, self._ctx, chunk, embd, n_past, 0, self.n_batch,
                                                          ctypes.byref(new_past), M.mtmd_helper_post_decode_callback(0),
                                                          None)
                    t.prefill += time.perf_counter() - s
                if rc != 0:
                    raise RuntimeError(f"mtmd evaluation failed ({rc}) at chunk {i}")
                t.n_tokens += M.mtmd_input_chunk_get_n_tokens(chunk)
                n_past = new_past.value
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
            t.token = int(np.argmax(logits))
            t.first_token = time.perf_counter() - start
        finally:
            M.mtmd_input_chunks_free(chunks)
            for b in bitmaps:
                M.mtmd_bitmap_free(b)
        return t

    def close(self) -> None:
        if self._mctx:
            M.mtmd_free(self._mctx)
            self._mctx = None
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
