"""`Runtime`: load a bundle and chat with it (the Python API under the CLI and the server).

    rt = Runtime.load("bundle/", device="auto")            # or Runtime.load(path, RuntimeOptions(...))
    result = rt.chat([{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                   {"type": "text", "text": "What is this?"}]}])
    for event in rt.stream_chat(messages): ...

The runtime sequences the stages of a request, each timing itself:
  1. plan the prompt: the checkpoint's template renders the messages into text chunks and media references;
     each medium is described (its chunk: key, rows x cols) without preprocessing an image seen before;
  2. the engine leases a sequence slot and plans its prefill (what its KV cache reuses, which media
     embeddings are missing);
  3. encode only those media (image cache, else HF-exact preprocessing -> ONNX ViT -> projector);
  4. the engine's loop prefills and generates, batched with the other running sequences (`--parallel`);
  5. stream generated ids through the detokenizer (stop strings) and the output parser.
Several threads may chat at once: up to `parallel` generations run together, more wait for a free slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.bundle import Bundle, load_bundle
from edge.chat.parse import StreamParser
from edge.chat.results import ChatDelta, ChatDone, ChatEvent, Timings, Usage
from edge.chat.template import ImageRef, PromptBuilder, VideoRef
from edge.engine.chunks import Chunk
from edge.engine.detok import Detokenizer
from edge.engine.generate import Engine, Finish
from edge.engine.llama import Decoder, ggml_devices, gpu_layers
from edge.engine.sampling import SamplingParams, sampling_defaults
from edge.errors import BundleError, ContextOverflowError, MemoryPlanError, VideoTokenBudgetError
from edge.memory_plan import choose_context
from edge.options import FlashAttn, KvType, ProjectorEngine, RuntimeOptions, default_parallel
from edge.vision.cache import ImageEmbeddingCache
from edge.vision.encoder import VisionEncoder, image_embeddings
from edge.vision.file_parts import expand_documents
from edge.vision.image import DEFAULT_MAX_BYTES, ImageConfig, PreparedImage, content_hash, prepare_image, read_source
from edge.vision.pdf_worker import PdfRenderer
from edge.vision.projector import ProjectorLike, load_projector
from edge.vision.video import VideoLimits
from edge.vision.video_preprocess import (
    BEGIN_IMAGE, END_IMAGE, FrameGroup, PreparedVideo, VideoConfig, prepare_video,
)
from edge.vision.video_sampling import SamplingOptions

log = logging.getLogger(__name__)

EngineFactory = Callable[[Decoder, set], Engine]


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


@dataclass
class Media:
    """One media chunk of a request (an image, or one frame group of a video): its chunk, the original size
    (for boxes), and what encoding it needs."""

    chunk: Chunk
    size: tuple[int, int]
    data: bytes
    ref: ImageRef | VideoRef
    prepared: PreparedImage | FrameGroup | None = None  # already preprocessed in this request (first sight)
    group: int = 0  # a video's frame group


@dataclass
class Prompt:
    """A planned prompt: the chunks in order and the media behind its media chunks (by key)."""

    chunks: list[Chunk]
    media: dict[str, Media]
    sizes: list[tuple[int, int]]  # original size of each image, in prompt order
    video_tokens: int = 0
    video_text_tokens: int = 0  # the image markers and timestamp texts between a video's frame groups
    videos: int = 0
    video_frames: int = 0
    video_sizes: list[tuple[int, int]] = field(default_factory=list)  # original frame size per video


class Runtime:
    def __init__(self, bundle: Bundle, decoder: Decoder, vision: VisionEncoder, projector: ProjectorLike,
                 options: RuntimeOptions = RuntimeOptions(), engine_factory: EngineFactory = Engine):
        self.bundle = bundle
        self.options = options
        self.decoder = decoder
        self.vision = vision
        self.projector = projector
        self.image_config = ImageConfig.from_preprocessor_config(bundle.manifest["preprocessor"])
        template = decoder.meta("tokenizer.chat_template")
        if not template:
            raise BundleError(f"{bundle.decoder_path}: the decoder GGUF has no chat template; reconvert the bundle")
        self.prompt = PromptBuilder(template, decoder.tokenize)
        self.engine = engine_factory(decoder, set(bundle.tokens["eog"]))
        self.image_cache = ImageEmbeddingCache(int(options.image_cache_mb * (1 << 20)))
        self.documents = PdfRenderer(self.image_config)  # PDFium in a worker process, started by the first PDF
        self.video_config = VideoConfig.from_video_preprocessor_config(bundle.manifest.get("video_preprocessor"))
        self.defaults, self.default_sources = sampling_defaults(bundle.manifest.get("generation") or {})
        self.enable_thinking = options.thinking
        self.stats = RuntimeStats()
        # Guards the memos and the embedding cache only: preprocessing and encoding run unlocked, so one
        # request's long video decode or image encode never holds up another's prompt.
        self._lock = threading.Lock()
        # (source sha256, token budget) -> (chunk, original size) of images seen before: a later turn about
        # the same image skips decoding and resizing it unless its embedding is needed again.
        self._image_meta: OrderedDict[tuple, tuple[Chunk, tuple[int, int]]] = OrderedDict()
        # The same for videos: (sha256, knobs) -> (group chunks with their timestamp texts, original frame size).
        self._video_meta: OrderedDict[tuple, tuple[list[tuple[Chunk, str]], tuple[int, int]]] = OrderedDict()

    @classmethod
    def load(cls, path: str | Path, options: RuntimeOptions | None = None, *,
             engine_factory: EngineFactory = Engine, **fields) -> Runtime:
        """Load and verify a bundle. `options` (or its fields as keywords) pick the device, context, KV type...;
        `engine_factory(decoder, stop_ids)` builds the engine (tests pass a scripted one)."""
        options = (options or RuntimeOptions()).with_(**fields)
        gpu = gpu_layers(options.device) > 0
        if not options.parallel:
            options = options.with_(parallel=default_parallel(gpu))
        bundle = load_bundle(path, verify=str(options.verify))
        dtype = options.vision_dtype or bundle.vision_variants[0]
        options = cls._fit_memory(bundle, options, dtype, gpu)
        decoder = Decoder(str(bundle.decoder_path), options)
        try:
            vision = VisionEncoder(bundle.vision_path(dtype), provider=options.vision_provider or options.device.vision_provider,
                                   threads=options.threads, expected_io=bundle.vision_io(dtype))
            projector = load_projector(bundle.projector_path, prefer=options.projector, device=str(options.device),
                                       threads=options.threads)
            return cls(bundle, decoder, vision, projector, options, engine_factory)
        except BaseException:
            decoder.close()
            raise

    @staticmethod
    def _fit_memory(bundle: Bundle, options: RuntimeOptions, dtype: str, gpu: bool) -> RuntimeOptions:
        """Resolve `--ctx-size auto` / `--kv-type auto` with the memory plan; a choice that cannot fit is refused
        before loading (MemoryPlanError with the numbers and what would fit) with `memory_check`, else a
        warning (the plan counts the largest image allowed: see --max-image-tokens)."""
        vram = None
        if gpu:
            free = [d["memory_free_mib"] for d in ggml_devices() if d["type"] in ("gpu", "igpu")]
            vram = max(free) << 20 if free else None
        try:
            ctx, kv, plan = choose_context(
                bundle, options.ctx_size or "auto", options.kv_type.value, vision_dtype=dtype,
                projector="numpy" if options.projector == ProjectorEngine.NUMPY else "auto",
                n_ubatch=options.ubatch_size, flash_attn=options.flash_attn != FlashAttn.OFF, offload=gpu, vram=vram,
                max_image_tokens=options.max_image_tokens)
        except MemoryPlanError as e:
            if options.memory_check or not options.ctx_size or options.kv_type == KvType.AUTO:
                raise
            log.warning("memory plan: %s (loading anyway; --ctx-size or --kv-type given explicitly would refuse)", e)
            return options
        log.info("memory plan: %s", plan.describe())
        return options.with_(ctx_size=ctx, kv_type=kv, batch_size=min(options.batch_size, ctx),
                             ubatch_size=min(options.ubatch_size, ctx))

    # --- 1. the prompt --------------------------------------------------------------------------

    def prepare(self, ref: ImageRef) -> PreparedImage:
        return prepare_image(ref.source, self.image_config, min_tokens=ref.min_tokens, max_tokens=ref.max_tokens)

    def _describe(self, ref: ImageRef) -> Media:
        """An image's chunk; full preprocessing only for an image not seen before."""
        cap = self.options.max_image_tokens
        if cap is not None and (ref.max_tokens is None or ref.max_tokens > cap):
            ref = ImageRef(ref.source, min(ref.min_tokens or 0, cap) or None, cap)
        data = read_source(ref.source, max_bytes=DEFAULT_MAX_BYTES)
        memo = (content_hash(data), ref.min_tokens, ref.max_tokens)
        with self._lock:
            meta = self._image_meta.get(memo)
            if meta is not None:
                self._image_meta.move_to_end(memo)
                return Media(meta[0], meta[1], data, ref)
        image = prepare_image(data, self.image_config, min_tokens=ref.min_tokens, max_tokens=ref.max_tokens)
        chunk = Chunk.media(image.cache_key, image.merged_rows, image.merged_cols, self.bundle.tokens["image"])
        with self._lock:
            self._image_meta[memo] = (chunk, image.original_size)
            while len(self._image_meta) > 1024:
                self._image_meta.popitem(last=False)
        return Media(chunk, image.original_size, data, ref, image)

    def prepare_video(self, data: bytes, ref: VideoRef) -> PreparedVideo:
        return prepare_video(data, self.video_config, options=SamplingOptions(fps=ref.fps, max_frames=ref.max_frames),
                             max_video_tokens=ref.max_tokens)

    def _describe_video(self, ref: VideoRef) -> list[Chunk | Media]:
        """A video as transformers' processor expands it: per frame group `<|begin_of_image|>`, the group's image
        tokens (laid out like an image), `<|end_of_image|>` and its timestamp text; decoded only when new."""
        data = read_source(ref.source, max_bytes=VideoLimits.max_bytes)
        memo = (content_hash(data), ref.fps, ref.max_frames, ref.max_tokens)
        with self._lock:
            meta = self._video_meta.get(memo)
        video = None
        if meta is None:
            video = self.prepare_video(data, ref)
            groups = [(Chunk.media(g.cache_key, g.merged_rows, g.merged_cols, self.bundle.tokens["image"]),
                       g.timestamp_text) for g in video.groups]
            meta = (groups, (video.metadata.width, video.metadata.height))
            with self._lock:
                self._video_meta[memo] = meta
                while len(self._video_meta) > 256:
                    self._video_meta.popitem(last=False)
        groups, size = meta
        out: list[Chunk | Media] = []
        for i, (chunk, stamp) in enumerate(groups):
            before = ("" if i == 0 else f"{END_IMAGE}{groups[i - 1][1]}") + BEGIN_IMAGE
            out.append(Chunk.text(self.prompt.tokenize(before)))
            out.append(Media(chunk, size, data, ref, video.groups[i] if video else None, i))
        out.append(Chunk.text(self.prompt.tokenize(f"{END_IMAGE}{groups[-1][1]}")))
        return out

    def build_prompt(self, messages: Sequence[dict], tools: list[dict] | None = None,
                     enable_thinking: bool = True) -> Prompt:
        """The prompt's chunks. PDF file parts become their page images; when a document does not fit the
        context, it is rendered again within what is left (DocumentBudgetError says what would fit); a video
        that does not fit is refused with how many frames would."""
        expanded = expand_documents(messages, self.documents)
        prompt = self._chunks(expanded.messages, tools, enable_thinking)
        cells = sum(c.n_tokens for c in prompt.chunks)
        if prompt.videos and cells >= self.decoder.n_ctx:
            video_cells = prompt.video_tokens + prompt.video_text_tokens
            per_group = -(-video_cells // max(prompt.video_frames // 2, 1))  # image tokens, markers and time
            room = self.decoder.n_ctx - 1 - (cells - video_cells)
            fit = max(room // per_group, 0) * 2
            raise VideoTokenBudgetError(
                f"the prompt needs {cells + 1} tokens ({prompt.video_tokens} of them video tokens of "
                f"{prompt.video_frames} frames) but the context allows {self.decoder.n_ctx}; about {fit} frames "
                f"would fit (ask for max_frames={fit}), or lower max_video_tokens or start the server with a larger "
                "--ctx-size", cells + 1, self.decoder.n_ctx, fit)
        if expanded.documents and cells >= self.decoder.n_ctx:
            if len(expanded.documents) > 1:
                raise ContextOverflowError(cells + 1, self.decoder.n_ctx, f"{len(expanded.documents)} documents")
            allowance = expanded.documents[0].n_tokens - (cells + 1 - self.decoder.n_ctx)
            expanded = expand_documents(messages, self.documents, allowance=max(allowance, 1))
            prompt = self._chunks(expanded.messages, tools, enable_thinking)
        return prompt

    def _chunks(self, messages: Sequence[dict], tools: list[dict] | None, enable_thinking: bool) -> Prompt:
        segments, _, _ = self.prompt.build(messages, tools, enable_thinking)
        prompt = Prompt([], {}, [])
        for segment in segments:
            if isinstance(segment, VideoRef):
                items = self._describe_video(segment)
                groups = [i for i in items if isinstance(i, Media)]
                prompt.video_sizes.append(groups[0].size)
                prompt.videos += 1
                prompt.video_frames += 2 * len(groups)
                prompt.video_tokens += sum(g.chunk.n_tokens for g in groups)
                prompt.video_text_tokens += sum(i.n_tokens for i in items if isinstance(i, Chunk))
            elif isinstance(segment, ImageRef):
                items = [self._describe(segment)]
                prompt.sizes.append(items[0].size)
            else:
                items = [segment]
            for item in items:
                if isinstance(item, Media):
                    prompt.media.setdefault(item.chunk.key, item)
                    item = item.chunk
                prompt.chunks.append(item)
        return prompt

    # --- 3. media embeddings ---------------------------------------------------------------------

    def embed(self, prompt: Prompt, keys: Sequence[str], timings: Timings | None = None,
              usage: Usage | None = None) -> dict[str, np.ndarray]:
        """Embeddings of the media `keys` of `prompt`: from the image cache, else preprocessed and encoded."""
        timings, usage = timings or Timings(), usage or Usage()
        out, videos = {}, {}
        for key in keys:
            with self._lock:
                cached = self.image_cache.get(key)
                if cached is not None:
                    self.stats.image_cache_hits += 1
            if cached is not None:
                usage.images_cached += 1
                out[key] = cached
                continue
            item = prompt.media[key]
            start = time.perf_counter()
            image = item.prepared
            if image is None and isinstance(item.ref, VideoRef):  # evicted: decode the clip again, once
                if item.data not in videos:
                    videos[item.data] = self.prepare_video(item.data, item.ref)
                image = videos[item.data].groups[item.group]
            elif image is None:
                image = self.prepare(ImageRef(item.data, item.ref.min_tokens, item.ref.max_tokens))
            timings.preprocess += time.perf_counter() - start
            start = time.perf_counter()
            out[key] = image_embeddings(self.vision, self.projector, image.pixel_patches, image.grid_thw)
            timings.vision += time.perf_counter() - start
            with self._lock:
                self.stats.images_encoded += 1
                self.image_cache.put(key, out[key])
        return out

    # --- chat -------------------------------------------------------------------------------------

    def stream_chat(self, messages: Sequence[dict], tools: list[dict] | None = None,
                    enable_thinking: bool | None = None, sampling: SamplingParams | None = None,
                    cancel: threading.Event | None = None, **overrides) -> Iterator[ChatEvent]:
        """Yield ChatDelta events and one final ChatDone. `overrides` are SamplingParams fields; setting
        `cancel` stops the generation at the engine's next step (finish reason "cancelled")."""
        started = time.perf_counter()
        thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        params = (sampling or self.defaults).with_overrides(**overrides)
        timings, usage = Timings(), Usage()
        t = time.perf_counter()
        prompt = self.build_prompt(messages, tools, thinking)
        timings.preprocess = time.perf_counter() - t
        # boxes refer to the images; with only videos, to the frames (timestamps: see README, Video)
        parser = StreamParser(reasoning=thinking, tools=tools, image_sizes=prompt.sizes or prompt.video_sizes or None)
        finish = Finish()
        pieces: list[str] = []
        lease = self.engine.acquire(prompt.chunks)
        with lease:
            embeddings = self.embed(prompt, lease.plan.missing_media, timings, usage)
            detok = Detokenizer(self.decoder.token_bytes, params.stop)
            tokens = lease.run(embeddings, params, finish, cancel)
            try:
                for token in tokens:
                    if not timings.first_token:
                        timings.first_token = time.perf_counter() - started
                        t = time.perf_counter()
                    piece = detok.feed(token)
                    if piece:
                        pieces.append(piece)
                        delta = parser.feed(piece)
                        if delta:
                            yield delta
                    if detok.stopped:
                        finish.reason = "stop"
                        break
            finally:
                tokens.close()
        timings.prefill = finish.prefill_seconds
        timings.decode = time.perf_counter() - t if timings.first_token else 0.0
        rest = detok.flush()
        pieces.append(rest)
        tail = parser.feed(rest) if rest else ChatDelta()
        end = parser.finish()
        for delta in (tail, end):
            if delta:
                yield delta
        output = parser.result
        for issue in output.errors:
            log.warning("model output not used as %s: %s (%r)", issue.kind, issue.message, issue.raw[:200])
        plan = lease.plan
        media_chunks = [c for c in prompt.chunks if c.is_media]
        usage.prompt_tokens, usage.cached_tokens = plan.cells, plan.reused
        usage.image_tokens = sum(c.n_tokens for c in media_chunks) - prompt.video_tokens
        usage.images = len(prompt.sizes)
        usage.video_tokens, usage.videos, usage.video_frames = prompt.video_tokens, prompt.videos, prompt.video_frames
        usage.completion_tokens = len(finish.tokens)
        reason = "tool_calls" if output.tool_calls and finish.reason == "stop" else finish.reason
        self._account(usage, timings)
        yield ChatDone(reason, output, usage, timings, "".join(pieces), list(finish.tokens))

    def chat(self, messages: Sequence[dict], **kwargs) -> ChatDone:
        """Run to completion and return the final event."""
        done = None
        for event in self.stream_chat(messages, **kwargs):
            if isinstance(event, ChatDone):
                done = event
        return done

    def _account(self, usage: Usage, timings: Timings) -> None:
        with self._lock:
            self._add(usage, timings)

    def _add(self, usage: Usage, timings: Timings) -> None:
        s = self.stats
        s.requests += 1
        s.prompt_tokens += usage.prompt_tokens
        s.cached_prompt_tokens += usage.cached_tokens
        s.completion_tokens += usage.completion_tokens
        for stage in s.stage_seconds:
            s.stage_seconds[stage] += getattr(timings, stage)

    @property
    def parallel(self) -> int:
        """How many generations run together (the engine's sequence slots)."""
        return self.options.parallel

    def forget_prefix(self) -> None:
        """The next request decodes its whole prompt (cold runs in tests and benchmarks)."""
        self.engine.forget()

    def close(self) -> None:
        self.engine.close()
        self.documents.close()
        self.decoder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
