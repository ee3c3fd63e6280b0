"""Fuzz the video input path (PyAV/FFmpeg demux + decode, sampling, resize) with mutated clips.

    python -m benchmarks.video_fuzz [--cases 400] [--seed 0] [--timeout 30] [--out DIR]

Small seed clips (several containers and codecs, B-frames included) are mutated (bit flips, byte overwrites,
size-field stomps, truncation, zeroed or spliced runs, header and trailer edits) and each mutant goes through
`edge.vision.video_preprocess.prepare_video` in a worker process. The parent watches the worker: a worker that
dies (signal or exit) is a crash, no answer within --timeout is a hang, an exception that is not an
`edge.errors` class is a bug. Each outcome is counted; crashing/hanging inputs are saved to --out. Exit status 1
when any crash, hang or bug occurred. This is the evidence for decoding in-process or in a worker
(edge/vision/video.py documents the decision).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

SEEDS = (  # (container, codec, width, height, fps, seconds)
    ("mp4", "libx264", 64, 48, 8, 1.5),
    ("matroska", "libx264", 50, 38, 10, 1.0),
    ("webm", "libvpx-vp9", 64, 36, 8, 1.0),
    ("avi", "mpeg4", 48, 48, 8, 1.5),
    ("matroska", "mjpeg", 40, 30, 6, 1.0),
    ("mov", "mpeg4", 56, 42, 12, 1.0),
)
MUTATIONS = ("bitflip", "bytes", "word", "truncate", "zero_run", "splice", "head", "tail")
WORKER_MEMORY = 3 << 30


def seed_clips() -> list[tuple[str, bytes]]:
    from benchmarks.video_clips import clip_bytes

    return [(f"{c}/{k}", clip_bytes(w, h, fps, s, container=c, codec=k, gop=6, seed=i))
            for i, (c, k, w, h, fps, s) in enumerate(SEEDS)]


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    n = len(b)
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 17))):
            i = int(rng.integers(n))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "bytes":
        for _ in range(int(rng.integers(1, 33))):
            b[int(rng.integers(n))] = int(rng.integers(256))
    elif kind == "word":  # box/element sizes, counts, dimensions
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(max(n - 4, 1)))
            value = rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000, int(rng.integers(2**32))])
            b[i:i + 4] = struct.pack(">I", int(value))
    elif kind == "truncate":
        del b[int(rng.integers(1, n)):]
    elif kind == "zero_run":
        i, k = int(rng.integers(n)), int(rng.integers(16, 4097))
        b[i:i + k] = bytes(len(b[i:i + k]))
    elif kind == "splice":
        i, j, k = int(rng.integers(n)), int(rng.integers(n)), int(rng.integers(8, 2049))
        b[j:j] = b[i:i + k]
    elif kind in ("head", "tail"):  # container headers: mp4 writes moov at the end, mkv/avi at the start
        span = min(n, 2048)
        for _ in range(int(rng.integers(1, 9))):
            off = int(rng.integers(span))
            b[off if kind == "head" else n - 1 - off] = int(rng.integers(256))
    return bytes(b)


def worker() -> None:
    """Read length-prefixed clips from stdin; answer one JSON line each."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    from edge.errors import GlmEdgeError
    from edge.vision.video import VideoLimits
    from edge.vision.video_preprocess import prepare_video

    limits = VideoLimits(max_frames=20_000)
    stdin = sys.stdin.buffer
    while header := stdin.read(4):
        data = stdin.read(struct.unpack(">I", header)[0])
        try:
            v = prepare_video(data, limits=limits)
            out = {"outcome": "ok", "frames": v.n_frames}
        except GlmEdgeError as e:
            out = {"outcome": "rejected", "error": type(e).__name__, "status": e.http_status}
        except MemoryError:
            out = {"outcome": "memory", "error": "MemoryError"}
        except Exception as e:  # noqa: BLE001 - the point: anything else is a bug to report
            out = {"outcome": "bug", "error": f"{type(e).__name__}: {e}"[:300]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Worker:
    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.video_fuzz", "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def run(self, data: bytes, timeout: float) -> dict:
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else None
        if line:
            return json.loads(line)
        if line is None:  # no answer in time
            self.proc.kill()
            self.proc.wait()
            return {"outcome": "hang"}
        code = self.proc.wait()
        return {"outcome": "crash", "returncode": code}

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def run(cases: int, seed: int, timeout: float, out: Path | None) -> dict:
    rng = np.random.default_rng(seed)
    seeds = seed_clips()
    outcomes, errors, by_kind, findings = Counter(), Counter(), Counter(), []
    started, slowest = time.perf_counter(), 0.0
    w = Worker()
    try:
        for name, data in seeds:  # the unmutated clips must decode
            r = w.run(data, timeout)
            outcomes[f"seed_{r['outcome']}"] += 1
            if r["outcome"] != "ok":
                findings.append({"case": f"seed {name}", **r})
        for case in range(cases):
            name, data = seeds[case % len(seeds)]
            kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
            mutant = mutate(data, kind, rng)
            t0 = time.perf_counter()
            r = w.run(mutant, timeout)
            slowest = max(slowest, time.perf_counter() - t0)
            outcomes[r["outcome"]] += 1
            by_kind[f"{kind}:{r['outcome']}"] += 1
            if r.get("error") and r["outcome"] == "rejected":
                errors[r["error"]] += 1
            if r["outcome"] in ("crash", "hang", "bug", "memory"):
                entry = {"case": case, "seed_clip": name, "mutation": kind, **r}
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    path = out / f"case{case:04d}-{kind}.bin"
                    path.write_bytes(mutant)
                    entry["saved"] = str(path)
                findings.append(entry)
                if r["outcome"] in ("crash", "hang"):
                    w = Worker()
    finally:
        w.close()
    return {"cases": cases, "seed": seed, "seconds": round(time.perf_counter() - started, 1),
            "slowest_case_seconds": round(slowest, 3),
            "outcomes": dict(outcomes), "rejections": dict(errors), "by_mutation": dict(sorted(by_kind.items())),
            "findings": findings}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.video_fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    p.add_argument("--out", type=Path, help="folder for results.json and saved crashing inputs")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker()
        return 0
    report = run(args.cases, args.seed, args.timeout, args.out)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(text + "\n")
    print(text)
    bad = sum(report["outcomes"].get(k, 0) for k in ("crash", "hang", "bug", "memory"))
    return 1 if bad or any(k.startswith("seed_") and k != "seed_ok" for k in report["outcomes"]) else 0


if __name__ == "__main__":
    sys.exit(main())
