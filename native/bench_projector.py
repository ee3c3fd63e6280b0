"""Projector time and peak memory: the native ggml projector (Q8_0, F16, F32) against the numpy reference.

    python native/bench_projector.py --work /tmp/wide_native --rows 1024 4096 [--threads N] [--json out.json]

Uses the `wide` reference checkpoint (real GLM-4.6V projector widths: hidden 1536, out 4096, SwiGLU 13696;
written once under --work with text_layers=1, vision_depth=1, and exported to projector-<QUANT>.gguf).
Every (implementation, rows) pair runs in a fresh Python process, so peak RSS is its own: reported as the
peak minus the process's RSS after imports, before the projector loads (weights + work buffers). Time is the
minimum over --repeat calls after one warm-up call on the same input. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = (("numpy", "F32"), ("ggml", "Q8_0"), ("ggml", "F16"), ("ggml", "F32"))

_CHILD = r"""
import json, resource, sys, time
import numpy as np
import llama_cpp  # imported by both, so the baseline is the same
from edge.vision.numpy_projector import Projector
from edge.vision.native import NativeProjector
impl, path, rows, repeat, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

def peak_mib():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024

x = np.random.default_rng(0).standard_normal((rows, 1536)).astype(np.float32)
base = rss_mib() if sys.platform.startswith("linux") else peak_mib()
t = time.perf_counter()
p = Projector(path) if impl == "numpy" else NativeProjector(path, device="cpu", threads=threads or None)
load = time.perf_counter() - t
p(x)
times = []
for _ in range(repeat):
    t = time.perf_counter()
    y = p(x)
    times.append(time.perf_counter() - t)
extra = {"backend": p.backend, "weight_buffers": p.weight_buffers, "weight_mib": p.weight_bytes / 2**20} if impl == "ggml" else {}
print(json.dumps({"load_s": load, "run_s": min(times), "runs_s": times, "peak_minus_base_mib": peak_mib() - base,
                  "base_mib": base, "out_shape": list(y.shape), **extra}))
"""


def ensure_files(work: Path) -> dict[str, Path]:
    out = work / "proj"
    files = {q: out / f"projector-{q}.gguf" for q in ("F32", "F16", "Q8_0")}
    if all(f.is_file() for f in files.values()):
        return files
    from convert.checkpoint import Checkpoint
    from convert.projector_gguf import export_projector
    from convert.reference import write_reference

    ckpt_dir = work / "ckpt"
    if not (ckpt_dir / "config.json").is_file():
        write_reference(ckpt_dir, size="wide", text_layers=1, vision_depth=1)
    ckpt = Checkpoint(ckpt_dir)
    return {q: export_projector(ckpt, out, q) for q in files}


def run_case(impl: str, path: Path, rows: int, repeat: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:  # the same thread count for numpy's BLAS and for ggml
        env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", _CHILD, impl, str(path), str(rows), str(repeat), str(threads)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} {path.name} {rows}: failed\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/wide_native"))
    ap.add_argument("--rows", type=int, nargs="+", default=[1024, 4096], help="ViT patch rows (4 per image token)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="ggml CPU threads and numpy BLAS threads (0: each library's default: all cores)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    files = ensure_files(args.work)
    results = []
    for rows in args.rows:
        for impl, quant in CASES:
            r = run_case(impl, files[quant], rows, args.repeat, args.threads)
            results.append({"impl": impl, "quant": quant, "rows": rows, **r})
            print(f"{impl:5} {quant:4} rows {rows:5}: run {r['run_s'] * 1000:8.1f} ms  load {r['load_s']:5.2f} s  "
                  f"peak +{r['peak_minus_base_mib']:7.1f} MiB" + (f"  ({r['backend']}, {r['weight_buffers']})" if impl == "ggml" else ""),
                  flush=True)
    machine = {"system": platform.system(), "machine": platform.machine(), "cpus": os.cpu_count(),
               "processor": platform.processor(), "threads": args.threads, "loadavg_after": os.getloadavg()}
    table = ["| rows | impl | weights | time (ms) | peak RSS over baseline (MiB) | load (s) |", "|---|---|---|---|---|---|"]
    for r in results:
        table.append(f"| {r['rows']} | {'numpy' if r['impl'] == 'numpy' else 'ggml ' + r.get('backend', '')} | "
                     f"{r['quant']} | {r['run_s'] * 1000:.0f} | {r['peak_minus_base_mib']:.0f} | {r['load_s']:.2f} |")
    print("\n".join(table))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
