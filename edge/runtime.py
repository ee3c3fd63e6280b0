"""`Runtime`: load a bundle and chat with it (the Python API under the CLI and the server).

    rt = Runtime.load("bundle/", device="auto")
    result = rt.chat([{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                   {"type": "text", "text": "What is this?"}]}])
    for event in rt.stream_chat(messages): ...

Images flow: prepare (HF-exact preprocessing) -> image cache -> ONNX ViT + projector -> decoder embeddings.
An image whose tokens are already in the KV prefix is neither encoded nor looked up again. One generation
runs at a time (a lock); the server queues requests in front of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge.bundle import Bundle, load_bundle
from edge.vision.cache import ImageEmbeddingCache
from edge.engine.llama import Decoder, DecoderOptions
from edge.errors import BundleError
from edge.engine.generate import Engine, ImageInfo, StopState, layout
from edge.vision.image import DEFAULT_MAX_BYTES, ImageConfig, PreparedImage, content_hash, prepare_image, read_source
from edge.chat.parse import StreamParser
from edge.vision.projector import Projector
from edge.vision.select import load_projector
from edge.chat.template import ImageRef, PromptBuilder
from edge.chat.results import ChatDelta, ChatDone, ChatEvent, Timings, Usage
from edge.engine.sampling import SamplingParams
from edge.vision.encoder import VisionEncoder, image_embeddings

log = logging.getLogger(__name__)


@dataclass
class RuntimeStats:
    """Counters since load (exported by the server's /metrics)."""

    requests: int = 0
    images_encoded: int = 0
    image_cache_hits: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    stage_seconds: dict = field(default_factory=lambda: {"preprocess": 0.0, "vision": 0.0, "prefill": 0.0, "decode": 0.0})


class Runtime:
    def __init__(self, bundle: Bundle, decoder: Decoder, vision: VisionEncoder, projector: Projector,
                 image_cache_bytes: int = 512 << 20, enable_thinking: bool = True):
        self.bundle = bundle
        self.decoder = decoder
        self.vision = vision
        self.projector = projector
        self.image_config = ImageConfig.from_preprocessor_config(bundle.manifest["preprocessor"])
        template = decoder.meta("tokenizer.chat_template")
        if not template:
            raise BundleError(f"{bundle.decoder_path}: the decoder GGUF has no chat template; reconvert the bundle")
        self.prompt = PromptBuilder(template, decoder.tokenize)
        self.engine = Engine(decoder, set(bundle.tokens["eog"]))
        self.image_cache = ImageEmbeddingCache(image_cache_bytes)
        self.defaults = SamplingParams.from_generation_config(bundle.manifest.get("generation") or {})
        self.enable_thinking = enable_thinking
        self.stats = RuntimeStats()
        self._lock = threading.Lock()
        # (source sha256, token budget) -> (ImageInfo, original size) of images seen before: a later turn
        # about the same image skips decoding and resizing it unless its embedding is needed again.
        self._image_meta: OrderedDict[tuple, tuple[ImageInfo, tuple[int, int]]] = OrderedDict()

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", vision_dtype: str | None = None, vision_provider: str | None = None,
             n_ctx: int = 8192, n_batch: int = 512, n_ubatch: int = 512, threads: int | None = None,
             kv_type: str = "f16", flash_attn: str = "auto", verify: str = "auto", projector: str = "auto",
             **kwargs) -> Runtime:
        """Load and verify a bundle; `device` picks llama.cpp offload and, unless given, the vision provider.

        `projector`: "auto"/"native" run it on ggml from the quantized GGUF (least memory; on GPUs the decoder's
        backend), "numpy" in float32 with BLAS (on x86 CPUs about 1.3-1.7x faster, 3.5-5.7x more memory).
        """
        bundle = load_bundle(path, verify=verify)
        dtype = vision_dtype or bundle.vision_variants[0]
        provider = vision_provider or {"cuda": "cuda", "metal": "coreml", "cpu": "cpu"}.get(device, "auto")
        decoder = Decoder(str(bundle.decoder_path), DecoderOptions(
            n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=threads, device=device,
            flash_attn=flash_attn, kv_type=kv_type,
        ))
        try:
            vision = VisionEncoder(bundle.vision_path(dtype), provider=provider, threads=threads,
                                   expected_io=bundle.vision_io(dtype))
            projector = load_projector(bundle.projector_path, prefer=projector, device=device, threads=threads)
            return cls(bundle, decoder, vision, projector, **kwargs)
        except BaseException:
            decoder.close()
            raise

    # --- images ---------------------------------------------------------------------------------

    def prepare(self, ref: ImageRef) -> PreparedImage:
        return prepare_image(ref.source, self.image_config, min_tokens=ref.min_tokens, max_tokens=ref.max_tokens)

    def _describe(self, ref: ImageRef, pending: dict) -> tuple[ImageInfo, tuple[int, int]]:
        """Layout facts of one image; full preprocessing only for an image not seen before."""
        data = read_source(ref.source, max_bytes=DEFAULT_MAX_BYTES)
        memo = (content_hash(data), ref.min_tokens, ref.max_tokens)
        meta = self._image_meta.get(memo)
        if meta is None:
            image = prepare_image(data, self.image_config, min_tokens=ref.min_tokens, max_tokens=ref.max_tokens)
            meta = (ImageInfo(image.cache_key, image.merged_rows, image.merged_cols), image.original_size)
            pending[image.cache_key] = image
            self._image_meta[memo] = meta
            while len(self._image_meta) > 1024:
                self._image_meta.popitem(last=False)
        else:
            self._image_meta.move_to_end(memo)
            pending.setdefault(meta[0].key, ImageRef(data, ref.min_tokens, ref.max_tokens))
        return meta

    def _embedder(self, pending: dict, timings: Timings, usage: Usage):
        def embed(key: str):
            cached = self.image_cache.get(key)
            if cached is not None:
                self.stats.image_cache_hits += 1
                usage.images_cached += 1
                return cached
            start = time.perf_counter()
            image = pending[key]
            if isinstance(image, ImageRef):  # seen before, evicted from the image cache: prepare again
                image = self.prepare(image)
                timings.preprocess += time.perf_counter() - start
                start = time.perf_counter()
            emb = image_embeddings(self.vision, self.projector, image.pixel_patches, image.grid_thw)
            timings.vision += time.perf_counter() - start
            self.stats.images_encoded += 1
            self.image_cache.put(key, emb)
            return emb

        return embed

    # --- chat -------------------------------------------------------------------------------------

    def stream_chat(self, messages: Sequence[dict], tools: list[dict] | None = None,
                    enable_thinking: bool | None = None, sampling: SamplingParams | None = None,
                    **overrides) -> Iterator[ChatEvent]:
        """Yield ChatDelta events and one final ChatDone. `overrides` are SamplingParams fields."""
        started = time.perf_counter()
        thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        params = (sampling or self.defaults).with_overrides(**overrides)
        timings, usage = Timings(), Usage()
        chunks, refs, _ = self.prompt.build(messages, tools, thinking)
        t = time.perf_counter()
        pending: dict = {}
        described = [self._describe(ref, pending) for ref in refs]
        timings.preprocess = time.perf_counter() - t
        infos = [info for info, _ in described]
        entries = layout(chunks, infos)
        parser = StreamParser(reasoning=thinking, tools=tools, image_sizes=[size for _, size in described] or None)
        stop = StopState()
        pieces: list[str] = []
        with self._lock:
            preprocess_before = timings.preprocess
            pre = self.engine.prefill(entries, self._embedder(pending, timings, usage))
            timings.prefill = pre.seconds - timings.vision - (timings.preprocess - preprocess_before)
            t = time.perf_counter()
            for piece in self.engine.stream(params, stop):
                if not pieces:
                    timings.first_token = time.perf_counter() - started
                pieces.append(piece)
                delta = parser.feed(piece)
                if delta.reasoning or delta.content or delta.tool_calls:
                    yield ChatDelta(delta.reasoning, delta.content, list(delta.tool_calls))
            timings.decode = time.perf_counter() - t
        tail = parser.finish()
        if tail.reasoning or tail.content or tail.tool_calls:
            yield ChatDelta(tail.reasoning, tail.content, list(tail.tool_calls))
        output = parser.result
        usage.prompt_tokens, usage.cached_tokens = pre.cells, pre.reused
        usage.image_tokens = sum(i.rows * i.cols for i in infos)
        usage.images = len(infos)
        usage.completion_tokens = len(stop.tokens)
        reason = "tool_calls" if output.tool_calls and stop.reason == "stop" else stop.reason
        self._account(usage, timings)
        yield ChatDone(reason, output, usage, timings, "".join(pieces), list(stop.tokens))

    def chat(self, messages: Sequence[dict], **kwargs) -> ChatDone:
        """Run to completion and return the final event."""
        done = None
        for event in self.stream_chat(messages, **kwargs):
            if isinstance(event, ChatDone):
                done = event
        return done

    def _account(self, usage: Usage, timings: Timings) -> None:
        s = self.stats
        s.requests += 1
        s.prompt_tokens += usage.prompt_tokens
        s.cached_prompt_tokens += usage.cached_tokens
        s.completion_tokens += usage.completion_tokens
        for stage in s.stage_seconds:
            s.stage_seconds[stage] += getattr(timings, stage)

    def abort(self) -> None:
        """Stop the running generation's current llama.cpp decode as soon as possible (thread-safe)."""
        self.decoder.request_abort()

    def clear_abort(self) -> None:
        """Drop an abort that arrived after the decode it was meant for had finished."""
        self.decoder.clear_abort()

    def close(self) -> None:
        self.decoder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
