"""`python -m benchmarks`: glm-edge against llama.cpp (llama-cpp-python) and transformers, side by side.

    python -m benchmarks                       # real widths, 2 text layers / 2 vision blocks (minutes)
    python -m benchmarks --full-depth          # the real 40 / 24 layers (a big machine; hours on 2 cores)
    python -m benchmarks --quick --out /tmp/b  # tiny model, one repetition (the CI smoke test)
    python -m benchmarks --scenarios text image --reps 5
    python -m benchmarks --scenarios video document --out benchmarks/results/media   # issues 12 and 16

Prepares what it needs into a cache folder (benchmarks/prepare.py), runs every scenario in its own worker
process (benchmarks/scenarios.py) and writes into --out: results.json (machine, settings, raw runs,
medians, ratios, targets), results.md (tables) and PNG charts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARALLEL_PARTS = ("scaling", "ttft", "admission")  # benchmarks/parallel.py run_parallel
ALL = ("bandwidth", "text", "image", "transformers", "multiturn", "load", "parallel", "video", "document")


def parse_args(argv=None):
    from benchmarks.prepare import BUNDLE_QUANTS as QUANTS

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--depth-text", type=int, default=2, help="decoder layers of the wide reference model (default 2)")
    p.add_argument("--depth-vision", type=int, default=2, help="ViT blocks of the wide reference model (default 2)")
    p.add_argument("--full-depth", action="store_true", help="the real 40 decoder layers / 24 ViT blocks")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per configuration (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; 0 with --quick)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every engine (default: all cores)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("GLM_EDGE_BENCH_CACHE",
                                                                     Path.home() / ".cache" / "glm-edge-bench")))
    p.add_argument("--quick", action="store_true", help="tiny model, small inputs, one repetition (smoke test)")
    p.add_argument("--scenarios", nargs="+", choices=ALL, default=list(ALL))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quants", nargs="+", choices=QUANTS, default=list(QUANTS),
                   help="decoder quantisations to prepare and run (default all; Q4_K_M is always needed: every media "
                        "and parallel scenario runs on it). Q4_K_M alone saves converting Q8_0 at full depth")
    p.add_argument("--document-kv", nargs="+", choices=("f16", "q8_0"), default=None,
                   help="KV cache types of the document scenario (default f16 and q8_0; f16 with --quick)")
    p.add_argument("--parallel-parts", nargs="+", choices=PARALLEL_PARTS, default=list(PARALLEL_PARTS),
                   help="parts of the parallel scenario to run (default all; scaling alone at full depth)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds allowed per scenario worker")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each timed run, wait up to this many seconds for other processes to leave the CPUs "
                        "mostly idle (shared machines; default 60, 0 with --quick)")
    p.add_argument("--quiet-threshold", type=float, default=0.25, help="CPU busy fraction counted as idle (default 0.25)")
    p.add_argument("--retries", type=int, default=None,
                   help="repeat a timed run disturbed by other processes at most this many times (default 2, 0 with --quick)")
    p.add_argument("--retry-above", type=float, default=0.10,
                   help="a run is disturbed when other processes used more than this share of all CPUs (default 0.10)")
    args = p.parse_args(argv)
    if "Q4_K_M" not in args.quants:
        p.error("--quants must include Q4_K_M (the media and parallel scenarios run on it)")
    args.quants = tuple(q for q in QUANTS if q in args.quants)
    return args


def plan(args) -> dict:
    """Sizes and settings for this run."""
    if args.quick:
        return {"label": "quick smoke run, tiny model", "size": "tiny", "text_layers": None, "vision_depth": None,
                "reps": args.reps or 1, "warmup": 0 if args.warmup is None else args.warmup,
                "images": {"112x112": (112, 112), "224x168": (224, 168)}, "multiturn_image": "112x112",
                "prompt_words": 60, "decode_tokens": 8, "answer_tokens": 4, "bandwidth_mb": 64, "bandwidth_passes": 2,
                "parallel": {"streams": [1, 2, 4, 8], "decode_tokens": 8, "stream_words": 12, "ttft_clients": 8,
                             "ttft_image": (112, 112), "answer_tokens": 4, "admission_words": 60,
                             "admission_chunks": [512, 32], "admission_running": 3, "admission_lead_tokens": 3},
                "clip": {"width": 100, "height": 70, "fps": 10, "seconds": 2, "warmup_seconds": 1},
                "document": {"pages": 3, "page_tokens": 64, "kv_types": ("f16",), "kv_dropped_turn": True},
                "settings": {"n_ctx": 2048, "n_batch": 512, "n_ubatch": 512, "kv_type": "f16", "flash_attn": "on"}}
    text, vision = (40, 24) if args.full_depth else (args.depth_text, args.depth_vision)
    return {"label": f"real widths, {text} decoder layers / {vision} ViT blocks", "size": "wide", "text_layers": text,
            "vision_depth": vision, "reps": args.reps or 3, "warmup": 1 if args.warmup is None else args.warmup,
            # 1008x756 stands for a 1024x768 photo: sides multiples of 28, so both preprocessors give one grid.
            "images": {"448x448": (448, 448), "1008x756": (1008, 756)}, "multiturn_image": "448x448",
            "prompt_words": 400, "decode_tokens": 48, "answer_tokens": 16, "bandwidth_mb": 1024, "bandwidth_passes": 5,
            # parallel: N streams of short distinct prompts; 8 clients with a 448x448 image each (256 tokens);
            # a 400-word prompt (about 1070 tokens) admitted beside 3 running streams, prefill chunks 512 / 128 / 32.
            "parallel": {"streams": [1, 2, 4, 8], "decode_tokens": 64, "stream_words": 20, "ttft_clients": 8,
                         "ttft_image": (448, 448), "answer_tokens": 16, "admission_words": 400,
                         "admission_chunks": [512, 128, 32], "admission_running": 3, "admission_lead_tokens": 12},
            # issue 12: a 10 s 640x360 clip at 30 fps; issue 16: 20 pages at the default per-page budget
            "clip": {"width": 640, "height": 360, "fps": 30, "seconds": 10, "warmup_seconds": 2},
            "document": {"pages": 20, "page_tokens": None, "kv_types": ("f16", "q8_0"), "kv_dropped_turn": False},
            "settings": {"n_ctx": 4096, "n_batch": 512, "n_ubatch": 512, "kv_type": "f16", "flash_attn": "on"}}


def decode_bytes_per_token(gguf_path: Path) -> int:
    """Weight bytes one decode step reads: every tensor except the token embedding (one row of it is read)."""
    from gguf import GGUFReader

    total = 0
    for t in GGUFReader(gguf_path).tensors:
        if t.name == "token_embd.weight":
            total += int(t.n_bytes) // int(t.shape[-1])
        else:
            total += int(t.n_bytes)
    return total


def run_worker(cfg: dict, timeout: int, log) -> dict:
    with tempfile.TemporaryDirectory(prefix="glm-edge-bench-") as tmp:
        cfg_path, out_path = Path(tmp) / "config.json", Path(tmp) / "out.json"
        cfg_path.write_text(json.dumps(cfg, default=str))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", str(cfg_path), str(out_path)], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0 or not out_path.is_file():
            log(f"  worker {cfg['scenario']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            return {"scenario": cfg["scenario"], "error": proc.stderr[-3000:], "runs": [],
                    "seconds": time.perf_counter() - started}
        return json.loads(out_path.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks import report
    from benchmarks.machine import machine_info
    from benchmarks.mtmd_peer import quiet_llama
    from benchmarks.prepare import MMPROJ_QUANTS, prepare

    started = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[bench {time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    quiet_llama()
    p = plan(args)
    command = " ".join(["python -m benchmarks"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
    if os.environ.get("GLM_EDGE_BENCH_CACHE"):
        command = f"GLM_EDGE_BENCH_CACHE={shlex.quote(os.environ['GLM_EDGE_BENCH_CACHE'])} {command}"
    info = {"label": p["label"], "command": command,
            "machine": machine_info(REPO), "reps": p["reps"], "warmup": p["warmup"], "threads": args.threads,
            "settings": p["settings"]}
    log(f"{p['label']}; cache {args.cache}")
    art = prepare(args.cache, p["size"], p["text_layers"] or 2, p["vision_depth"] or 2, p["images"], seed=args.seed,
                  bundle_quants=args.quants)
    from convert.checkpoint import Checkpoint
    from edge.bundle import load_bundle

    spec = Checkpoint(art.checkpoint).spec
    info["text_layers"] = spec.text.num_layers
    info["model"] = (f"reference checkpoint ({p['size']}): text {spec.text.hidden_size} wide x {spec.text.num_layers} "
                     f"layers, vocab {spec.text.vocab_size}; vision {spec.vision.hidden_size} wide x {spec.vision.depth} "
                     f"blocks, projector {spec.vision.out_hidden_size}/{spec.vision.intermediate_size}")
    for q in args.quants:
        load_bundle(art.bundle(q))  # verify once (sha256 stamp), so load times measure loading, not hashing
    s = p["settings"]
    info["settings_text"] = (f"threads {args.threads}, n_ctx {s['n_ctx']}, n_batch {s['n_batch']}, n_ubatch {s['n_ubatch']}, "
                             f"KV {s['kv_type']}, flash attention {s['flash_attn']}, greedy; projector F16 in bundles")
    info["decode_bytes_per_token"] = {q: decode_bytes_per_token(art.decoder(q)) for q in args.quants}
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0 if args.quick else 60)
    retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    info["quiet_wait_s"], info["quiet_threshold"] = quiet_wait, args.quiet_threshold
    info["retries"], info["retry_above"] = retries, args.retry_above
    common = {"threads": args.threads, "settings": s, "reps": p["reps"], "warmup": p["warmup"],
              "quiet_wait": quiet_wait, "quiet_threshold": args.quiet_threshold, "retries": retries,
              "retry_above": args.retry_above,
              "bundles": {q: str(art.bundle(q)) for q in args.quants},
              "decoders": {q: str(art.decoder(q)) for q in args.quants},
              "mmproj": {q: str(art.mmproj(q)) for q in MMPROJ_QUANTS},
              "images": {n: str(art.image(n)) for n in p["images"]}, "checkpoint": str(art.checkpoint)}
    info["skipped"] = {}
    scenarios = list(args.scenarios)
    if "transformers" in scenarios:
        import numpy as np
        import psutil

        params = sum(int(np.prod(t.shape)) for t in Checkpoint(art.checkpoint).tensors.values())
        need, avail = params * 4 * 1.5, psutil.virtual_memory().available  # fp32 weights + load-time copies
        if need > 0.9 * avail:
            scenarios.remove("transformers")
            info["skipped"]["transformers"] = (f"fp32 transformers needs about {need / 2**30:.0f} GiB, "
                                               f"{avail / 2**30:.0f} GiB available")
            log(f"skipping transformers: {info['skipped']['transformers']}")
    jobs = []
    for name in scenarios:
        if name == "bandwidth":
            jobs.append({"scenario": name, "bandwidth_mb": p["bandwidth_mb"], "bandwidth_passes": p["bandwidth_passes"]})
        elif name == "text":
            jobs += [{"scenario": name, "quant": q, "prompt_words": p["prompt_words"], "decode_tokens": p["decode_tokens"]}
                     for q in args.quants]
        elif name in ("image", "transformers"):
            jobs.append({"scenario": name, "quant": "Q4_K_M"})
        elif name == "multiturn":
            jobs.append({"scenario": name, "quant": "Q4_K_M", "vision_dtype": "int8", "mmproj_quant": "F16",
                         "image": p["multiturn_image"], "answer_tokens": p["answer_tokens"]})
        elif name == "load":
            for q in args.quants:
                jobs += [{"scenario": name, "side": "ours", "quant": q, "vision_dtype": d, "image": p["multiturn_image"]}
                         for d in ("int8", "fp32")]
                jobs.append({"scenario": name, "side": "llama.cpp", "quant": q, "mmproj_quant": "F16" if q == "Q4_K_M" else "Q8_0",
                             "image": p["multiturn_image"]})
        elif name == "parallel":
            jobs.append({"scenario": name, "quant": "Q4_K_M", "vision_dtype": "int8", **p["parallel"],
                         "parts": list(args.parallel_parts)})
        elif name == "video":
            jobs.append({"scenario": name, "quant": "Q4_K_M", "vision_dtype": "int8", "clip": p["clip"],
                         "answer_tokens": p["answer_tokens"]})
        elif name == "document":
            d = p["document"]
            jobs += [{"scenario": name, "quant": "Q4_K_M", "vision_dtype": "int8", "pages": d["pages"],
                      "page_tokens": d["page_tokens"], "kv_dropped_turn": d["kv_dropped_turn"],
                      "answer_tokens": p["answer_tokens"], "settings": {**s, "kv_type": kv}}
                     for kv in args.document_kv or d["kv_types"]]
    results: dict = {name: [] for name in scenarios}
    info["worker_seconds"], info["errors"] = {}, []
    for job in jobs:
        desc = " ".join(f"{k}={v}" for k, v in job.items() if k in ("scenario", "quant", "side", "vision_dtype"))
        desc += f" kv={job['settings']['kv_type']}" if "settings" in job else ""
        log(f"running {desc}")
        res = run_worker({**common, **job}, args.timeout, log)
        results[job["scenario"]] += res["runs"]
        info["worker_seconds"][desc] = round(res["seconds"], 1)
        if "error" in res:
            info["errors"].append({"job": desc, "error": res["error"]})
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = time.perf_counter() - started
    summary = report.summarize(results, info)
    chart_files = report.charts(summary, out)
    (out / "results.json").write_text(json.dumps({"info": info, "summary": summary, "runs": results}, indent=1,
                                                 default=str) + "\n")
    (out / "results.md").write_text(report.markdown(summary, info, chart_files))
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}, {len(chart_files)} charts")
    for t in summary["targets"]:
        log(f"  {'MET ' if t['met'] else 'MISS'} {t['target']}: {t['value']:.3f}x ({t['detail']})")
    return 1 if info["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
