"""The server's state behind the routes: settings, the runtime (once loaded), the scheduler and metrics.

`ServerSettings` holds the HTTP-side settings and one `RuntimeOptions` (no re-listing of runtime options).
`RuntimeLike` is what the server needs from a runtime; tests pass their own runtime factory to `create_app`.
With `mcp_config` (--mcp-config) the Service starts the MCP host at load, before the model (a server that
does not start fails the load like a bad bundle), and closes it at shutdown (no child process outlives it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fastapi import Depends, Request

from edge import __version__
from edge.api.metrics import Metrics
from edge.api.scheduler import Job, Scheduler
from edge.errors import GlmEdgeError, InputError, ModelLoadFailedError, ModelLoadingError
from edge.media import MediaPolicy
from edge.options import RuntimeOptions

log = logging.getLogger(__name__)


class RuntimeLike(Protocol):
    """What the server uses of `edge.runtime.Runtime`."""

    bundle: Any  # .manifest
    stats: Any  # edge.runtime.RuntimeStats
    image_cache: Any  # .bytes
    defaults: Any  # edge.engine.sampling.SamplingParams
    default_sources: dict[str, str]

    engine: Any  # .busy_slots, .stats (steps, step_tokens, generated)
    decoder: Any  # .token_bytes (the dialects count reasoning tokens and find the matched stop string)
    parallel: int  # generations that run together

    def stream_chat(self, messages: Sequence[dict], tools: list[dict] | None = None,
                    enable_thinking: bool | None = None, cancel: threading.Event | None = None,
                    **overrides) -> Iterator[Any]: ...

    def close(self) -> None: ...


def default_threads() -> int:
    """CPU threads for llama.cpp/onnxruntime under the server: all cores but one. The HTTP event loop needs a
    core too; ggml's threads spin at barriers, and when one is descheduled a decode can slow down a
    hundredfold (measured on 2 cores: ~4 tokens/s instead of ~2000 with the tiny model)."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class ServerSettings:
    bundle: Path | None = None
    runtime: RuntimeOptions = field(default_factory=lambda: RuntimeOptions(threads=default_threads()))
    model_name: str = "glm-4.6v-flash"
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    media_dir: Path | None = None
    allow_remote_media: bool = False
    remote_timeout: float = 10.0
    max_images: int = 16
    max_image_bytes: int = 20 << 20
    max_document_bytes: int = 64 << 20
    max_video_bytes: int = 256 << 20
    max_body_bytes: int = 96 << 20
    max_queue: int = 16
    serve_page: bool = True
    mcp_config: Path | None = None  # --mcp-config: the MCP servers requests may use (edge/api/mcp.py)

    @property
    def media_policy(self) -> MediaPolicy:
        return MediaPolicy(media_dir=self.media_dir, allow_remote=self.allow_remote_media, max_images=self.max_images,
                           max_image_bytes=self.max_image_bytes, max_document_bytes=self.max_document_bytes,
                           max_video_bytes=self.max_video_bytes,
                           remote_timeout=self.remote_timeout)


RuntimeFactory = Callable[[ServerSettings], RuntimeLike]


def load_runtime(settings: ServerSettings) -> RuntimeLike:
    """The default runtime factory: `Runtime.load` with the settings' runtime options."""
    from edge.runtime import Runtime

    if settings.bundle is None:
        raise InputError("no bundle path given")
    return Runtime.load(settings.bundle, settings.runtime)


class Service:
    """Per-app state: settings, runtime (once loaded), scheduler, metrics."""

    def __init__(self, settings: ServerSettings, runtime_factory: RuntimeFactory):
        self.settings = settings
        self.runtime_factory = runtime_factory
        self.metrics = Metrics()
        self.media = settings.media_policy
        self.status = "loading"
        self.load_error: str | None = None
        self.runtime: RuntimeLike | None = None
        self.scheduler: Scheduler | None = None
        self.http_client = None
        self.mcp_host = None  # edge.chat.mcp_host.McpHost, started at load when settings.mcp_config is set
        self.loaded = threading.Event()
        self.created = int(time.time())
        self.fingerprint = f"glm-edge-{__version__}"

    def load(self) -> None:
        started = time.perf_counter()
        try:
            if self.settings.mcp_config is not None:
                from edge.mcp_setup import start_mcp_host

                self.mcp_host = start_mcp_host(self.settings.mcp_config)
            runtime = self.runtime_factory(self.settings)
        except Exception as e:  # reported by /health and every request; the CLI exits on it
            log.error("model failed to load: %s", e, exc_info=not isinstance(e, GlmEdgeError))
            self.load_error = str(e)
            self.status = "failed"
            self.loaded.set()
            return
        self.runtime = runtime
        digest = (runtime.bundle.manifest.get("decoder") or {}).get("sha256", "")[:12]
        if digest:
            self.fingerprint = f"glm-edge-{__version__}-{digest}"
        self.scheduler = Scheduler(runtime.parallel, self.settings.max_queue, on_finish=self._finished)
        self.status = "ready"
        self.loaded.set()
        log.info("model ready in %.1f s", time.perf_counter() - started)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.runtime is not None:
            self.runtime.close()
        self.runtime = None
        if self.mcp_host is not None:
            self.mcp_host.close()
            self.mcp_host = None

    def _finished(self, job: Job) -> None:
        if job.started is not None and job.finished is not None:
            self.metrics.observe("total", job.finished - job.created)

    @property
    def model_ids(self) -> list[str]:
        ids = [self.settings.model_name]
        if self.settings.bundle is not None and Path(self.settings.bundle).name not in ids:
            ids.append(Path(self.settings.bundle).name)
        return ids

    def gauges(self) -> dict[str, float]:
        sched = self.scheduler
        rt = self.runtime
        return {
            "queue_depth": sched.depth if sched else 0,
            "generation_running": sched.running if sched else 0,
            "model_loaded": 1 if self.status == "ready" else 0,
            "slots_total": rt.parallel if rt is not None else 0,
            "slots_busy": rt.engine.busy_slots if rt is not None else 0,
        }

    def runtime_counters(self) -> dict[str, float]:
        rt = self.runtime
        if rt is None:
            return {}
        return {
            "runtime_images_encoded_total": rt.stats.images_encoded,
            "runtime_image_cache_hits_total": rt.stats.image_cache_hits,
            "runtime_kv_cached_prompt_tokens_total": rt.stats.cached_prompt_tokens,
            "runtime_image_cache_bytes": rt.image_cache.bytes,
            "engine_steps_total": rt.engine.stats.steps,
            "engine_step_tokens_total": rt.engine.stats.step_tokens,
            "engine_generated_tokens_total": rt.engine.stats.generated,
        }


def get_service(request: Request) -> Service:
    return request.app.state.service


def ready_service(service: Service = Depends(get_service)) -> Service:
    if service.status == "loading":
        raise ModelLoadingError("the model is still loading; retry shortly (GET /health says when it is ready)")
    if service.status == "failed":
        raise ModelLoadFailedError(f"the model failed to load: {service.load_error}")
    return service
