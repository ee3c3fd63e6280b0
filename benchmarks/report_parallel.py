"""The `parallel` scenario's summary, targets, markdown section and chart (called from benchmarks/report.py).

Targets (issue 13): 4 streams >= 2.5x the 1-stream aggregate decode tokens/s, and ours >= 0.95x llama.cpp's
batched decode at every N. Time to first token of clients with an image each is reported as p50/p95 pooled
over the repetitions, parallel=N vs parallel=1 (today's FIFO); no target.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np


def _median(values) -> float:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(runs: list[dict]) -> dict:
    runs = [r for r in runs if not r.get("discarded")]
    out: dict = {"scaling": {}, "memory": {}, "ttft": {}, "admission": {}}
    for r in runs:
        if r.get("part") == "scaling":
            out["scaling"].setdefault(r["streams"], {}).setdefault(r["side"], []).append(r["aggregate_tps"])
        elif r.get("part") == "scaling_memory":
            out["memory"][r["streams"]] = {k: r.get(k) for k in ("rss_after_load_mb", "rss_after_runs_mb", "ids_equal_peer",
                                                                  "anon_before_mb", "anon_after_runs_mb",
                                                                  "peer_context_mb")}
        elif r.get("part") == "ttft":
            d = out["ttft"].setdefault(r["parallel"], {"first_token_s": [], "total_s": [], "clients": r["clients"],
                                                       "image": r["image"], "image_tokens": r["image_tokens"]})
            d["first_token_s"] += r["first_token_s"]
            d["total_s"] += r["total_s"]
        elif r.get("part") == "admission":
            out["admission"].setdefault(r["prefill_chunk"], {}).setdefault(r["variant"], []).append(r)
    scaling = {}
    for n, sides in sorted(out["scaling"].items()):
        row = {side: {"aggregate_tps": _median(v), "best_tps": max(v), "n": len(v)} for side, v in sides.items()}
        if "ours" in row and "llama.cpp" in row:
            row["ratio"] = row["ours"]["aggregate_tps"] / row["llama.cpp"]["aggregate_tps"]
            row["best_ratio"] = row["ours"]["best_tps"] / row["llama.cpp"]["best_tps"]
        scaling[n] = row
    one = scaling.get(1, {})
    for n, row in scaling.items():
        for side in ("ours", "llama.cpp"):
            if side in row and side in one:
                row[side]["speedup"] = row[side]["aggregate_tps"] / one[side]["aggregate_tps"]
                row[side]["per_stream_tps"] = row[side]["aggregate_tps"] / n
    out["scaling"] = scaling
    for p, d in out["ttft"].items():
        for key in ("first_token_s", "total_s"):
            d[key.replace("_s", "") + "_p50"], d[key.replace("_s", "") + "_p95"] = _pct(d[key], 50), _pct(d[key], 95)
        d["samples"] = len(d["first_token_s"])
    admission = {}
    for chunk, variants in sorted(out["admission"].items(), reverse=True):
        row = {}
        for variant, rs in variants.items():
            keys = [k for k in rs[0] if k.startswith(("gap_", "first_token_s", "prompt_tokens"))]
            row[variant] = {k: _median(r[k] for r in rs) for k in keys}
        admission[chunk] = row
    out["admission"] = admission
    return out


def targets(sp: dict, add) -> None:
    """Append the parallel targets through `add(name, value, limit, higher_is_better, detail, best)`."""
    sc = sp.get("scaling", {})
    if 1 in sc and 4 in sc and "ours" in sc[1] and "ours" in sc[4]:
        o1, o4 = sc[1]["ours"], sc[4]["ours"]
        add("parallel: 4 streams >= 2.5x 1 stream (aggregate decode)", o4["aggregate_tps"] / o1["aggregate_tps"], 2.5,
            True, f"{o4['aggregate_tps']:.1f} vs {o1['aggregate_tps']:.1f} tok/s; llama.cpp batched "
            f"{sc[4].get('llama.cpp', {}).get('speedup', float('nan')):.2f}x", o4["best_tps"] / o1["best_tps"])
    for n, row in sc.items():
        if "ratio" in row:
            add(f"parallel: {n} stream(s) >= 0.95x llama.cpp batched", row["ratio"], 0.95, True,
                f"{row['ours']['aggregate_tps']:.1f} vs {row['llama.cpp']['aggregate_tps']:.1f} tok/s", row["best_ratio"])


def _f(x, digits=2) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _allocated(mem: dict) -> float | None:
    if mem.get("anon_after_runs_mb") is None or mem.get("anon_before_mb") is None:
        return None
    return mem["anon_after_runs_mb"] - mem["anon_before_mb"]


def markdown(sp: dict) -> list[str]:
    L = ["## Parallel sequences (continuous batching)", ""]
    if sp.get("scaling"):
        L += ["Aggregate decode tokens/s with N concurrent streams: ours = N threads calling `stream_chat` on one Runtime "
              "loaded with parallel=N (steady window where all N generate); llama.cpp = its batched decode of the same "
              "GGUF (one llama_batch per step, one token per sequence, greedy), same threads, n_ctx, unified KV, KV type, "
              "flash attention.", "",
              "| streams | ours tok/s | per stream | vs 1 stream | llama.cpp tok/s | vs 1 stream | ours / llama.cpp | "
              "RSS after load MB | allocated MB | llama.cpp context MB | same ids as llama.cpp |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, row in sp["scaling"].items():
            o, p, mem = row.get("ours", {}), row.get("llama.cpp", {}), sp["memory"].get(n, {})
            L.append(f"| {n} | {_f(o.get('aggregate_tps'), 1)} | {_f(o.get('per_stream_tps'), 1)} | {_f(o.get('speedup'))}x | "
                     f"{_f(p.get('aggregate_tps'), 1)} | {_f(p.get('speedup'))}x | {_f(row.get('ratio'), 3)}x | "
                     f"{_f(mem.get('rss_after_load_mb'), 0)} | {_f(_allocated(mem), 0)} | {_f(mem.get('peer_context_mb'), 0)} | "
                     f"{mem.get('ids_equal_peer', '-')} of {n} |")
        L += ["", "RSS counts the mmapped GGUF pages touched so far; allocated = the runtime's anonymous resident "
              "memory after its runs (RssAnon after - before loading it: KV cache, compute and output buffers, "
              "vision encoder, projector); llama.cpp context = the peer's context for N sequences alone (RssAnon "
              "growth when it is created: KV cache, output and compute buffers).", ""]
    if sp.get("ttft"):
        L += ["Time to first token (seconds) of clients sending one distinct image each at the same moment "
              "(pooled over the repetitions); parallel=1 is today's one-at-a-time FIFO.", "",
              "| parallel | clients | image (tokens) | TTFT p50 | TTFT p95 | answer done p50 | answer done p95 | samples |",
              "|---|---|---|---|---|---|---|---|"]
        for p, d in sorted(sp["ttft"].items(), reverse=True):
            L.append(f"| {p} | {d['clients']} | {d['image']} ({d['image_tokens']}) | {_f(d['first_token_p50'])} | "
                     f"{_f(d['first_token_p95'])} | {_f(d['total_p50'])} | {_f(d['total_p95'])} | {d['samples']} |")
        L.append("")
    if sp.get("admission"):
        L += ["Inter-token latency (seconds) of running streams while a long prompt is admitted (prefilled in chunks "
              "of at most `--prefill-chunk` tokens per step beside the running streams' tokens; alone it prefills in full "
              "batches of n_batch); medians over repetitions.", "",
              "| prefill chunk | prompt tokens | gap before p50 | gap during p50 | gap during max | gap after p50 | "
              "new request TTFT | same prompt alone |", "|---|---|---|---|---|---|---|---|"]
        for chunk, row in sp["admission"].items():
            lo, so = row.get("with running streams", {}), row.get("solo", {})
            L.append(f"| {chunk} | {_f(lo.get('prompt_tokens'), 0)} | {_f(lo.get('gap_before_p50_s'), 3)} | "
                     f"{_f(lo.get('gap_during_p50_s'), 3)} | {_f(lo.get('gap_during_max_s'), 3)} | "
                     f"{_f(lo.get('gap_after_p50_s'), 3)} | {_f(lo.get('first_token_s'))} | {_f(so.get('first_token_s'))} |")
        L.append("")
    return L


def chart(sp: dict, out: Path, plt) -> str | None:
    if not sp.get("scaling"):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ns = list(sp["scaling"])
    for side, color in (("ours", "#1f77b4"), ("llama.cpp", "#ff7f0e")):
        axes[0].plot(ns, [sp["scaling"][n].get(side, {}).get("aggregate_tps", float("nan")) for n in ns], "o-",
                     label=side, color=color)
    axes[0].set_xticks(ns)
    axes[0].set_xlabel("concurrent streams")
    axes[0].set_ylabel("aggregate decode tokens/s")
    axes[0].set_title("decode scaling")
    axes[0].legend()
    ps = sorted(sp.get("ttft", {}), reverse=True)
    for i, q in enumerate(("first_token_p50", "first_token_p95")):
        axes[1].bar([x + i * 0.38 for x in range(len(ps))], [sp["ttft"][p][q] for p in ps], 0.38, label=q[-3:])
    axes[1].set_xticks([x + 0.19 for x in range(len(ps))], [f"parallel={p}" for p in ps])
    axes[1].set_ylabel("seconds to first token")
    axes[1].set_title("clients with an image each")
    axes[1].legend()
    fig.tight_layout()
    path = out / "parallel.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
