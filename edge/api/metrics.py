"""Prometheus text exposition (format 0.0.4) for the server, without a client library.

`Metrics` holds counters and histograms for one app instance (no module-level state), updated from the
event loop and the generation worker under one lock. `render(...)` also writes gauges sampled at scrape
time (queue depth, running, loaded) and the runtime's own counters (images encoded, image-cache hits,
prompt tokens reused from the KV cache).
"""

from __future__ import annotations

import threading
from collections import defaultdict

PREFIX = "glm_edge"
# Seconds; wide enough for a 9B model on a CPU and a tiny one on loopback.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
STAGES = ("queue", "preprocess", "vision", "prefill", "decode", "first_token", "total")


def _labels(pairs: tuple) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
                    for k, v in pairs)
    return "{" + body + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._hist: dict[tuple, list[float]] = {}  # (stage,) -> bucket counts + [sum, count]
        self._help = {
            "http_requests_total": "HTTP requests by route and status code",
            "chat_completions_total": "chat completions by outcome (ok, error, cancelled, rejected) and mode",
            "prompt_tokens_total": "prompt tokens processed (text + image)",
            "image_tokens_total": "prompt tokens that were image embeddings",
            "cached_tokens_total": "prompt tokens reused from the KV cache",
            "completion_tokens_total": "generated tokens",
            "images_total": "images received",
        }

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] += value

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            h = self._hist.setdefault(stage, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def counter(self, name: str, **labels) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self, gauges: dict[str, float], runtime_counters: dict[str, float]) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(set(self._counters) | set(self._help)):
                full = f"{PREFIX}_{name}"
                lines += [f"# HELP {full} {self._help.get(name, name)}", f"# TYPE {full} counter"]
                for key, value in sorted(self._counters.get(name, {}).items()):
                    lines.append(f"{full}{_labels(key)} {value:g}")
            full = f"{PREFIX}_stage_seconds"
            lines += [f"# HELP {full} seconds per request stage (queue wait, preprocess, vision, prefill, decode, "
                      "first token, total)", f"# TYPE {full} histogram"]
            for stage in STAGES:
                h = self._hist.get(stage, [0.0] * (len(BUCKETS) + 2))
                for bound, n in zip(BUCKETS, h):
                    lines.append(f'{full}_bucket{{stage="{stage}",le="{bound:g}"}} {n:g}')
                lines.append(f'{full}_bucket{{stage="{stage}",le="+Inf"}} {h[-1]:g}')
                lines.append(f'{full}_sum{{stage="{stage}"}} {h[-2]:.6f}')
                lines.append(f'{full}_count{{stage="{stage}"}} {h[-1]:g}')
        for name, value in gauges.items():
            full = f"{PREFIX}_{name}"
            lines += [f"# TYPE {full} gauge", f"{full} {value:g}"]
        for name, value in runtime_counters.items():
            full = f"{PREFIX}_{name}"
            lines += [f"# TYPE {full} counter", f"{full} {value:g}"]
        return "\n".join(lines) + "\n"
