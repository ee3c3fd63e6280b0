"""The `parallel` scenario (issue 13): several streams on one Runtime loaded with `parallel=N`.

Three parts, each a list of rows tagged `part`:

- `scaling`: aggregate decode tokens/s with N = 1, 2, 4, 8 concurrent streams (threads calling `stream_chat`
  on one Runtime loaded with parallel=N; distinct short prompts, greedy, `decode_tokens` each) against
  llama.cpp's own batched decode of the same GGUF (benchmarks/batched_peer.py: one llama_batch per step with
  one token per sequence, same threads, n_ctx, unified KV, KV type, flash attention), alternating within every
  repetition. Ours is measured in the steady window where all N streams generate: every generated id is
  timestamped when its consuming thread receives it (the real engine, observed by `StampedEngine`), and the
  window runs from the last stream's first id to the first stream's last id; ids inside / window length.
  Also the process's resident memory after loading each N, all of it (RSS) and allocations only (RssAnon).
- `ttft`: time to first token of `ttft_clients` clients sending one distinct image each at the same moment,
  parallel=N (one batch) vs parallel=1 (one at a time, today's FIFO), alternating within every repetition.
- `admission`: inter-token latency of `admission_running` streams while a new long text prompt is admitted
  (prefilled in chunks of at most `--prefill-chunk` tokens beside their decode steps), per chunk size in
  `admission_chunks` at the settings' n_batch; gaps before the submit vs during its prefill, and the new
  request's first-token time against the same prompt alone (which prefills in full batches whatever the chunk).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from benchmarks.scenarios import (
    GREEDY,
    QUESTION,
    _reset,
    _rotate,
    _rss_mb,
    _user_image,
    long_text,
    measure,
)
from edge.engine.generate import Engine


class StampedEngine(Engine):
    """The real engine; each lease's ids are timestamped as the consuming thread (the one that called
    `stream_chat`, which acquires and reads in its own thread) receives them. `local.stamps` is that thread's
    list for its latest request."""

    def __init__(self, decoder, stop_ids):
        super().__init__(decoder, stop_ids)
        self.local = threading.local()

    def acquire(self, chunks, reuse=True, timeout=None):
        lease = super().acquire(chunks, reuse, timeout)
        stamps = self.local.stamps = []
        run = lease.run

        def stamped_run(*args, **kwargs):
            ids = run(*args, **kwargs)

            def gen():
                try:
                    for token in ids:
                        stamps.append(time.perf_counter())
                        yield token
                finally:
                    ids.close()
            return gen()

        lease.run = stamped_run
        return lease


def _load(cfg: dict, parallel: int, **changes):
    from edge.runtime import Runtime

    s = cfg["settings"]
    opts = dict(device="cpu", vision_dtype=cfg.get("vision_dtype", "int8"), ctx_size=s["n_ctx"], batch_size=s["n_batch"],
                ubatch_size=s["n_ubatch"], threads=cfg["threads"], kv_type=s["kv_type"], flash_attn=s["flash_attn"],
                parallel=parallel)
    opts.update(changes)
    return Runtime.load(cfg["bundles"][cfg["quant"]], engine_factory=StampedEngine, **opts)


def _concurrently(fns: list) -> list:
    """Run each fn() in its own thread, released together; their results in order (an exception re-raised)."""
    barrier = threading.Barrier(len(fns))
    out: list = [None] * len(fns)

    def one(i):
        barrier.wait()
        try:
            out[i] = fns[i]()
        except BaseException as e:  # handed to the caller
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out


def steady_rate(stamps: list[list[float]]) -> tuple[float, int, float]:
    """(ids per second, ids counted, window seconds) over the window where every stream generates: from the
    last stream's first id to the first stream's last id."""
    start = max(s[0] for s in stamps)
    end = min(s[-1] for s in stamps)
    count = sum(1 for s in stamps for t in s if start < t <= end)
    return (count / (end - start) if end > start else float("nan")), count, end - start


def _anon_mb() -> float:
    """Anonymous resident memory (RssAnon): allocations only, not the mmapped GGUF pages that RSS also counts."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# --- scaling ------------------------------------------------------------------------------------


def _scaling(cfg: dict) -> list[dict]:
    from benchmarks.batched_peer import BatchedPeer

    s, n_new = cfg["settings"], cfg["decode_tokens"]
    runs, discarded = [], []
    for n in cfg["streams"]:
        rss0, anon0 = _rss_mb(), _anon_mb()
        rt = _load(cfg, n)
        rss_load, anon_load = _rss_mb(), _anon_mb()
        peer = BatchedPeer(cfg["decoders"][cfg["quant"]], n_seq=n, n_ctx=s["n_ctx"], n_batch=s["n_batch"],
                           n_ubatch=s["n_ubatch"], threads=cfg["threads"], flash_attn=s["flash_attn"],
                           kv_type=s["kv_type"], extra_buffers=rt.decoder.extra_buffers)
        peer_mb = _anon_mb() - anon_load  # llama.cpp's context for N sequences (KV, output, compute buffers)
        messages = [[{"role": "user", "content": long_text(cfg["stream_words"], seed=100 + i) + "\nContinue."}]
                    for i in range(n)]
        prompts = [[t for c in rt.prompt.build(m, None, False)[0] for t in c.tokens] for m in messages]
        state: dict = {}

        def ours():
            _reset(rt)

            def stream(m):
                def fn():
                    done = rt.chat(m, max_tokens=n_new, **GREEDY)
                    return done, rt.engine.local.stamps
                return fn
            results = _concurrently([stream(m) for m in messages])
            rate, count, window = steady_rate([st for _, st in results])
            state["ours_ids"] = [d.token_ids for d, _ in results]
            return {"aggregate_tps": rate, "window_tokens": count, "window_s": window,
                    "tokens": sum(len(d.token_ids) for d, _ in results),
                    "finish": sorted({d.finish_reason for d, _ in results}),
                    "first_token_s": [d.timings.first_token for d, _ in results]}

        def theirs():
            r = peer.run(prompts, n_new)
            state["peer_ids"] = r.pop("ids")
            return r

        for rep in range(-cfg["warmup"], cfg["reps"]):
            for side, fn in _rotate([("ours", ours), ("llama.cpp", theirs)], rep):
                k = len(discarded)
                r = measure(cfg, fn, rep, discarded)
                for d in discarded[k:] + ([r] if r else []):
                    d.update(part="scaling", side=side, streams=n, rep=rep)
                if r is not None:
                    runs.append(r)
        # the same ids on both sides (F16 KV: a flipped near-tie is possible; recorded, not required)
        same = sum(a == b for a, b in zip(state.get("ours_ids", []), state.get("peer_ids", [])))
        runs.append({"part": "scaling_memory", "streams": n, "rss_before_mb": rss0, "rss_after_load_mb": rss_load,
                     "rss_after_runs_mb": _rss_mb(), "anon_before_mb": anon0, "anon_after_load_mb": anon_load,
                     "anon_after_runs_mb": _anon_mb(), "peer_context_mb": peer_mb, "ids_equal_peer": same, "prompt_tokens": [len(p) for p in prompts]})
        peer.close()
        rt.close()
    return runs + discarded


# --- time to first token, clients with an image each ---------------------------------------------


def _ttft(cfg: dict) -> list[dict]:
    from benchmarks.prepare import image_png

    w, h = cfg["ttft_image"]
    clients = cfg["ttft_clients"]
    images = [image_png(w, h, seed=50 + k) for k in range(clients)]
    runtimes = {p: _load(cfg, p) for p in (clients, 1)}
    runs, discarded = [], []

    def batch(p):
        rt = runtimes[p]

        def fn():
            _reset(rt)

            def client(img):
                def one():
                    start = time.perf_counter()
                    done = rt.chat([_user_image(img, QUESTION)], max_tokens=cfg["answer_tokens"], **GREEDY)
                    return done, time.perf_counter() - start
                return one
            results = _concurrently([client(img) for img in images])
            return {"first_token_s": [d.timings.first_token for d, _ in results],
                    "total_s": [t for _, t in results], "vision_s": [d.timings.vision for d, _ in results],
                    "image_tokens": results[0][0].usage.image_tokens}
        return fn

    for rep in range(-cfg["warmup"], cfg["reps"]):
        for p in _rotate([clients, 1], rep):
            k = len(discarded)
            r = measure(cfg, batch(p), rep, discarded)
            for d in discarded[k:] + ([r] if r else []):
                d.update(part="ttft", parallel=p, clients=clients, rep=rep, image=f"{w}x{h}")
            if r is not None:
                runs.append(r)
    for rt in runtimes.values():
        rt.close()
    return runs + discarded


# --- inter-token latency while a long prompt is admitted -----------------------------------------


def _wait(cond, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("a stream did not progress")
        time.sleep(0.01)


def _admission(cfg: dict) -> list[dict]:
    s = cfg["settings"]
    n_run, lead = cfg["admission_running"], cfg["admission_lead_tokens"]
    long_msgs = [{"role": "user", "content": long_text(cfg["admission_words"], seed=7) + "\nSummarize the text above."}]
    running_msgs = [[{"role": "user", "content": long_text(cfg["stream_words"], seed=200 + i) + "\nContinue."}]
                    for i in range(n_run)]
    runs, discarded = [], []
    for chunk in cfg["admission_chunks"]:
        rt = _load(cfg, n_run + 1, prefill_chunk=min(chunk, s["n_batch"]))

        def solo():
            _reset(rt)
            done = rt.chat(long_msgs, max_tokens=2, **GREEDY)
            return {"first_token_s": done.timings.first_token, "prompt_tokens": done.usage.prompt_tokens}

        def loaded():
            _reset(rt)
            stamps: dict[int, list[float]] = {}
            cancels = [threading.Event() for _ in range(n_run)]

            def runner(i):
                for _ in rt.stream_chat(running_msgs[i], cancel=cancels[i], max_tokens=100000, **GREEDY):
                    stamps.setdefault(i, rt.engine.local.stamps)

            threads = [threading.Thread(target=runner, args=(i,)) for i in range(n_run)]
            for t in threads:
                t.start()
            _wait(lambda: len(stamps) == n_run and all(len(v) >= 2 * lead for v in stamps.values()))
            submit = time.perf_counter()
            done = rt.chat(long_msgs, max_tokens=2, **GREEDY)
            first = submit + done.timings.first_token
            _wait(lambda: all(len([t for t in v if t > first]) >= lead for v in stamps.values()))
            for c in cancels:
                c.set()
            for t in threads:
                t.join()
            gaps = {"before": [], "during": [], "after": []}
            for v in stamps.values():
                for j in range(lead, len(v)):  # past the first ids (their prefills shared steps)
                    a, b = v[j - 1], v[j]
                    if b <= submit:
                        gaps["before"].append(b - a)
                    elif b <= first:
                        gaps["during"].append(b - a)
                    elif b > first:
                        gaps["after"].append(b - a)
            out = {"first_token_s": done.timings.first_token, "prompt_tokens": done.usage.prompt_tokens}
            for k, g in gaps.items():
                out[f"gap_{k}_p50_s"], out[f"gap_{k}_p95_s"] = _percentile(g, 50), _percentile(g, 95)
                out[f"gap_{k}_max_s"], out[f"gap_{k}_n"] = (max(g) if g else float("nan")), len(g)
            return out

        for rep in range(-cfg["warmup"], cfg["reps"]):
            for variant, fn in _rotate([("solo", solo), ("with running streams", loaded)], rep):
                k = len(discarded)
                r = measure(cfg, fn, rep, discarded)
                for d in discarded[k:] + ([r] if r else []):
                    d.update(part="admission", variant=variant, prefill_chunk=rt.engine.prefill_chunk,
                             n_batch=s["n_batch"], running=n_run, rep=rep)
                if r is not None:
                    runs.append(r)
        rt.close()
    return runs + discarded


def run_parallel(cfg: dict) -> list[dict]:
    from benchmarks.mtmd_peer import quiet_llama

    quiet_llama()
    parts = {"scaling": _scaling, "ttft": _ttft, "admission": _admission}
    return [row for name in cfg["parts"] for row in parts[name](cfg)]
