"""Bounded loopback load test of `glm-edge serve --parallel N` (issue 13).

    python -m benchmarks.load_parallel                      # tiny demo bundle, 64 clients, 120 s, --parallel 4
    python -m benchmarks.load_parallel --bundle DIR --clients 64 --seconds 120 --parallel 4 --out load.json

Starts a real server (`python -m edge.cli serve`, a child process on 127.0.0.1, F32 KV, flash attention off,
greedy: exact), takes each request's solo greedy reference from it one at a time, warms it up with `warmup`
seconds of the same load, then runs `clients` concurrent streaming clients for `seconds`: each sends requests
back to back (text, one image, two images; temperature 0), and with probability `disconnect` drops the connection after
a random number (0-6) of SSE chunks (0: as soon as the response starts, often while still queued), asking for
many tokens so that only cancellation frees the slot. Checks, each a failure when broken:

- no hang: every request ends within `request_timeout`; afterwards the queue and the slots drain (/health);
- every finished answer equals its solo greedy reference (the streamed content, concatenated);
- no request fails (no 5xx, no 429: --max-queue is at least the client count);
- the server's RSS after the run is within `rss_tolerance` (5%) of its RSS at the start of the run (measured
  after the warm-up, which allocates what stays: thread pools, connection buffers, the image cache).

Prints and writes a JSON report (requests, disconnects, p50/p95 latency and time to first chunk, engine tokens
per step, RSS) and exits 1 when a check fails. `tests/test_parallel_load.py` runs a short version.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL = "glm-4.6v-flash"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(bundle: Path, parallel: int, clients: int, threads: int = 1, ctx_size: int = 4096,
           log_path: Path | None = None, ready_timeout: float = 120.0):
    """`glm-edge serve` as a child process (exact settings); yields (base URL, Popen). Stopped with SIGINT."""
    port = _free_port()
    cmd = [sys.executable, "-m", "edge.cli", "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port),
           "--parallel", str(parallel), "--device", "cpu", "--kv-type", "f32", "--flash-attn", "off",
           "--threads", str(threads), "--ctx-size", str(ctx_size), "--max-queue", str(max(clients, 16)),
           "--log-level", "warning", "--quiet"]
    log = open(log_path or os.devnull, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base} not ready after {ready_timeout} s")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


def request_bodies(max_tokens: int = 16) -> list[dict]:
    """Greedy requests: text, one image, two images (small images made in code)."""
    from benchmarks.prepare import image_png

    urls = ["data:image/png;base64," + base64.b64encode(image_png(w, h, seed=30 + i)).decode()
            for i, (w, h) in enumerate([(84, 56), (56, 112), (112, 84)])]
    base = {"model": MODEL, "temperature": 0, "max_tokens": max_tokens, "chat_template_kwargs": {"enable_thinking": False}}
    out = []
    for i, text in enumerate(["Tell me a story.", "What is two plus two?", "Name a colour.", "Describe the scene."]):
        out.append({**base, "messages": [{"role": "user", "content": text}]})
        parts = [{"type": "image_url", "image_url": {"url": urls[(i + j) % len(urls)]}} for j in range(1 + i % 2)]
        out.append({**base, "messages": [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]})
    return out


def references(base: str, bodies: list[dict]) -> list[str]:
    """Each body's answer alone (non-streamed, one at a time)."""
    out = []
    for body in bodies:
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
        r.raise_for_status()
        out.append(r.json()["choices"][0]["message"]["content"])
    return out


async def _stream(client: httpx.AsyncClient, body: dict, drop_after: int | None) -> dict:
    """One streamed request; `drop_after` chunks then close the connection (None: read to [DONE])."""
    start = time.perf_counter()
    text, first, chunks = [], None, 0
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "error": (await r.aread()).decode("utf-8", "replace")[:300]}
        if drop_after == 0:
            return {"status": 200, "dropped": True, "chunks": 0}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return {"status": 200, "text": "".join(text), "seconds": time.perf_counter() - start,
                        "first_chunk_s": first, "chunks": chunks}
            chunks += 1
            if first is None:
                first = time.perf_counter() - start
            for choice in json.loads(line[6:])["choices"]:
                text.append(choice["delta"].get("content") or "")
            if drop_after is not None and chunks >= drop_after:
                return {"status": 200, "dropped": True, "chunks": chunks}
    return {"status": 200, "error": "the stream ended without [DONE]"}


async def run_load(base: str, bodies: list[dict], expected: list[str], clients: int, seconds: float,
                   disconnect: float, seed: int = 0, request_timeout: float = 120.0) -> dict:
    """`clients` concurrent clients sending requests back to back for `seconds`; counts and failures."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    res = {"finished": 0, "dropped": 0, "mismatches": [], "errors": [], "timeouts": 0, "latency_s": [],
           "first_chunk_s": []}
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, timeout=request_timeout, limits=limits) as client:
        async def one_client(cid: int):
            local = random.Random(rng.random())
            while time.monotonic() < deadline:
                idx = local.randrange(len(bodies))
                body, drop = bodies[idx], None
                if local.random() < disconnect:
                    drop = local.randint(0, 6)
                    body = {**body, "max_tokens": 1500}  # only cancellation frees this slot early
                try:
                    r = await asyncio.wait_for(_stream(client, body, drop), request_timeout)
                except asyncio.TimeoutError:
                    res["timeouts"] += 1
                    continue
                except httpx.HTTPError as e:
                    res["errors"].append(f"{type(e).__name__}: {e}")
                    continue
                if "error" in r:
                    res["errors"].append(f"{r['status']}: {r['error']}")
                elif r.get("dropped"):
                    res["dropped"] += 1
                else:
                    res["finished"] += 1
                    res["latency_s"].append(r["seconds"])
                    if r["first_chunk_s"] is not None:
                        res["first_chunk_s"].append(r["first_chunk_s"])
                    if r["text"] != expected[idx]:
                        res["mismatches"].append({"client": cid, "body": idx, "got": r["text"], "want": expected[idx]})

        await asyncio.gather(*(one_client(c) for c in range(clients)))
    return res


def metrics(base: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith("glm_edge_") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name[len("glm_edge_"):]] = float(value)
    return out


def drained(base: str, timeout: float = 30.0) -> dict:
    """Wait until nothing waits or runs; the last /health queue seen."""
    deadline = time.monotonic() + timeout
    while True:
        queue = httpx.get(base + "/health", timeout=10).json()["queue"]
        if (queue.get("waiting", 0) == 0 and queue.get("running", 0) == 0) or time.monotonic() > deadline:
            return queue
        time.sleep(0.2)


def _rss(pid: int, settle: float = 2.0) -> int:
    import psutil

    time.sleep(settle)
    return psutil.Process(pid).memory_info().rss


def _p(values, q) -> float | None:
    return round(statistics.quantiles(values, n=100)[q - 1], 3) if len(values) >= 2 else None


def load_test(bundle: Path, clients: int = 64, seconds: float = 120.0, parallel: int = 4, disconnect: float = 0.25,
              seed: int = 0, threads: int = 1, rss_tolerance: float = 0.05, max_tokens: int = 16, warmup: float = 10.0,
              log_path: Path | None = None) -> dict:
    """The whole test; returns the report with `checks` (name -> passed) and `ok`."""
    bodies = request_bodies(max_tokens)
    with server(bundle, parallel, clients, threads=threads, log_path=log_path) as (base, proc):
        rss_ready = _rss(proc.pid, 0)
        expected = references(base, bodies)
        # warm-up: the same load, shortly (it is checked too, but RSS counts from its end)
        warm = asyncio.run(run_load(base, bodies, expected, clients, warmup, disconnect, seed + 1))
        drained(base)
        rss_start = _rss(proc.pid)
        m0 = metrics(base)
        started = time.perf_counter()
        res = asyncio.run(run_load(base, bodies, expected, clients, seconds, disconnect, seed + 2))
        wall = time.perf_counter() - started
        queue = drained(base)
        after = references(base, bodies[:2])
        rss_end = _rss(proc.pid)
        m1 = metrics(base)
    steps = m1.get("engine_steps_total", 0) - m0.get("engine_steps_total", 0)
    step_tokens = m1.get("engine_step_tokens_total", 0) - m0.get("engine_step_tokens_total", 0)
    generated = m1.get("engine_generated_tokens_total", 0) - m0.get("engine_generated_tokens_total", 0)
    checks = {
        "no hang (every request ended in time; queue and slots drained)":
            res["timeouts"] == 0 and queue.get("waiting", 0) == 0 and queue.get("running", 0) == 0,
        "every finished answer equals its solo greedy reference": not res["mismatches"] and not warm["mismatches"],
        "no request failed": not res["errors"] and not warm["errors"],
        "exact after the run": after == expected[:2],
        f"RSS within {rss_tolerance:.0%} of the start": abs(rss_end - rss_start) <= rss_tolerance * rss_start,
        "requests finished and disconnected": res["finished"] > 0 and (res["dropped"] > 0 or disconnect == 0),
    }
    report = {
        "clients": clients, "seconds": seconds, "parallel": parallel, "disconnect_probability": disconnect,
        "threads": threads, "wall_s": round(wall, 1), "finished": res["finished"], "disconnected": res["dropped"],
        "timeouts": res["timeouts"], "errors": res["errors"][:5], "n_errors": len(res["errors"]),
        "mismatches": (res["mismatches"] + warm["mismatches"])[:3],
        "finished_per_s": round(res["finished"] / wall, 2),
        "latency_p50_s": _p(res["latency_s"], 50), "latency_p95_s": _p(res["latency_s"], 95),
        "first_chunk_p50_s": _p(res["first_chunk_s"], 50), "first_chunk_p95_s": _p(res["first_chunk_s"], 95),
        "engine_steps": steps, "tokens_per_step": round(step_tokens / steps, 2) if steps else None,
        "generated_tokens": generated, "generated_per_s": round(generated / wall, 1),
        "rss_ready_mb": round(rss_ready / 2**20, 1), "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1), "rss_change": round((rss_end - rss_start) / rss_start, 4),
        "checks": checks, "ok": all(checks.values()),
    }
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load_parallel", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None, help="a bundle (default: the tiny demo bundle, built once)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--disconnect", type=float, default=0.25, help="probability that a request disconnects early")
    p.add_argument("--threads", type=int, default=1, help="server decode threads (default 1: the HTTP loop needs a core)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before RSS is taken")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    p.add_argument("--server-log", type=Path, default=None)
    args = p.parse_args(argv)
    bundle = args.bundle
    if bundle is None:
        sys.path.insert(0, str(REPO))
        from edge.demo import demo_bundle

        bundle = demo_bundle(progress=False)
    report = load_test(bundle, args.clients, args.seconds, args.parallel, args.disconnect, args.seed, args.threads,
                       max_tokens=args.max_tokens, warmup=args.warmup, log_path=args.server_log)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
