"""Medians, ratios and targets from the raw runs; the markdown table and the PNG charts.

Every ratio is ours / peer measured in the same run (for speeds: ours tokens/s over theirs, > 1 is better
for us; for times: ours seconds over theirs, < 1 is better for us).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks import report_parallel
from benchmarks.media_report import markdown_media, summarize_media

STAGES = ("preprocess", "vision", "prefill")
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "f16c")


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _group(runs, *keys):
    out = defaultdict(list)
    for r in runs:
        out[tuple(r.get(k) for k in keys)].append(r)
    return out


def summarize(results: dict, info: dict) -> dict:
    """Medians per configuration, ratios and target verdicts."""
    s: dict = {"text": {}, "image": {}, "multiturn": {}, "load": [], "bandwidth": {}, "targets": []}
    s["discarded_runs"] = sum(1 for runs in results.values() for r in runs if r.get("discarded"))
    results = {k: [r for r in runs if not r.get("discarded")] for k, runs in results.items()}
    # text
    for (quant, side), runs in _group(results.get("text", []), "quant", "side").items():
        s["text"].setdefault(quant, {})[side] = {
            "prefill_tps": _median(r["prefill_tps"] for r in runs), "decode_tps": _median(r["decode_tps"] for r in runs),
            "best_prefill_tps": max(r["prefill_tps"] for r in runs), "best_decode_tps": max(r["decode_tps"] for r in runs),
            "prefill_tokens": runs[0]["prefill_tokens"], "decode_tokens": _median(r["decode_tokens"] for r in runs),
            "n": len(runs)}
    for quant, sides in s["text"].items():
        if "ours" in sides and "llama.cpp" in sides:
            sides["ratio"] = {k: sides["ours"][k] / sides["llama.cpp"][k]
                              for k in ("prefill_tps", "decode_tps", "best_prefill_tps", "best_decode_tps")}
    # image (ours, mtmd, transformers)
    image_runs = [r for r in results.get("image", []) + results.get("transformers", []) if not r.get("profile")]
    for (image, variant), runs in _group(image_runs, "image", "variant").items():
        med = {k: _median(r[k] for r in runs) for k in STAGES + ("first_token",)}
        med.update(side=runs[0]["side"], image_tokens=runs[0]["image_tokens"], prompt_tokens=runs[0]["prompt_tokens"],
                   n=len(runs), best_first_token=min(r["first_token"] for r in runs),
                   best_vision=min(r["vision"] for r in runs), best_prefill=min(r["prefill"] for r in runs))
        s["image"].setdefault(image, {})[variant] = med
    s["vision_profile"] = {}
    for r in results.get("image", []):
        if r.get("profile"):
            s["vision_profile"].setdefault(r["image"], {})[r["variant"]] = {
                k: r[k] for k in ("vit_s", "projector_s", "patches")}
    for image, variants in s["image"].items():
        mtmd = {v: m for v, m in variants.items() if v.startswith("mtmd")}
        ours = {v: m for v, m in variants.items() if v.startswith("onnx")}
        if mtmd and ours:
            best_mtmd = min(mtmd, key=lambda v: mtmd[v]["first_token"])
            fastest_mtmd_vision = min(mtmd, key=lambda v: mtmd[v]["vision"])
            variants["ratios"] = {
                f"{o}/{m}": {"first_token": ours[o]["first_token"] / mtmd[m]["first_token"],
                             "vision": ours[o]["vision"] / mtmd[m]["vision"],
                             "prefill": ours[o]["prefill"] / mtmd[m]["prefill"],
                             "preprocess": ours[o]["preprocess"] / mtmd[m]["preprocess"]}
                for o in ours for m in mtmd}
            variants["best_mtmd"], variants["fastest_mtmd_vision"] = best_mtmd, fastest_mtmd_vision
    # multi-turn
    for (side, turn), runs in _group(results.get("multiturn", []), "side", "turn").items():
        s["multiturn"].setdefault(side, {})[f"turn{turn}"] = {
            **{k: _median(r[k] for r in runs) for k in STAGES + ("first_token",)},
            "best_first_token": min(r["first_token"] for r in runs),
            "cached_tokens": _median(r["cached_tokens"] for r in runs), "prompt_tokens": runs[0]["prompt_tokens"],
            "variant": runs[0]["variant"], "image": runs[0]["image"], "n": len(runs)}
    # load / memory
    s["load"] = sorted(results.get("load", []), key=lambda r: (r["side"] != "ours", r["quant"], r["variant"]))
    # bandwidth and decode bytes per token
    bw = results.get("bandwidth", [])
    if bw:
        s["bandwidth"]["runs"] = bw
        s["bandwidth"]["copy_gb_per_s"] = max(r["gb_per_s"] for r in bw if r["kind"] == "copy")
        reads = [r["gb_per_s"] for r in bw if r["kind"] == "read"]
        # A decode step only reads weights: the ceiling is the best measured read rate (copy if none).
        s["bandwidth"]["ceiling_gb_per_s"] = max(reads) if reads else s["bandwidth"]["copy_gb_per_s"]
    s["bandwidth"]["decode"] = {}
    for quant, nbytes in info.get("decode_bytes_per_token", {}).items():
        entry = {"bytes_per_token": nbytes}
        for side in ("ours", "llama.cpp"):
            tps = s["text"].get(quant, {}).get(side, {}).get("decode_tps")
            if tps:
                entry[f"{side}_gb_per_s"] = tps * nbytes / 1e9
                if s["bandwidth"].get("ceiling_gb_per_s"):
                    entry[f"{side}_fraction"] = entry[f"{side}_gb_per_s"] / s["bandwidth"]["ceiling_gb_per_s"]
        s["bandwidth"]["decode"][quant] = entry
    # neighbours' CPU load just before each timed run (shared machines): the noise indicator
    busy = [r["cpu_busy_before"] for runs in results.values() for r in runs
            if isinstance(r, dict) and r.get("cpu_busy_before") is not None]
    if busy:
        s["cpu_busy_before"] = {"median": _median(busy), "max": max(busy), "n": len(busy),
                                "over_threshold": sum(b > info.get("quiet_threshold", 0.25) for b in busy)}
    during = [r["others_cpu_during"] for runs in results.values() for r in runs
              if isinstance(r, dict) and r.get("others_cpu_during") is not None]
    if during:
        s["others_cpu_during"] = {"median": _median(during), "max": max(during), "n": len(during),
                                  "over_0.25": sum(d > 0.25 for d in during)}
    s["parallel"] = report_parallel.summarize(results.get("parallel", []))
    s.update(summarize_media(results))  # video and document
    s["targets"] = targets(s)
    return s


def targets(s: dict) -> list[dict]:
    out = []

    def add(name, value, limit, higher_is_better, detail, best=None):
        ok = value >= limit if higher_is_better else value <= limit
        out.append({"target": name, "value": value, "limit": limit, "met": bool(ok), "detail": detail, "best_of_n": best})

    for quant, sides in s["text"].items():
        if "ratio" in sides:
            r = sides["ratio"]
            add(f"decode {quant} >= 0.97x llama.cpp", r["decode_tps"], 0.97, True,
                f"{sides['ours']['decode_tps']:.2f} vs {sides['llama.cpp']['decode_tps']:.2f} tok/s", r["best_decode_tps"])
            add(f"prefill {quant} >= 0.95x llama.cpp", r["prefill_tps"], 0.95, True,
                f"{sides['ours']['prefill_tps']:.1f} vs {sides['llama.cpp']['prefill_tps']:.1f} tok/s", r["best_prefill_tps"])
    for image, variants in s["image"].items():
        if "ratios" not in variants or "onnx-int8" not in variants:
            continue
        m = variants["fastest_mtmd_vision"]
        o = variants["onnx-int8"]
        add(f"vision encode {image}: int8 <= 0.5x mtmd", o["vision"] / variants[m]["vision"], 0.5,
            False, f"{o['vision']:.2f} s vs {variants[m]['vision']:.2f} s ({m}, mtmd's fastest)",
            o["best_vision"] / variants[m]["best_vision"])
        b = variants["best_mtmd"]
        best_ours = min((v for v in variants if v.startswith("onnx")), key=lambda v: variants[v]["first_token"])
        add(f"image TTFT {image} <= 0.8x mtmd", variants[best_ours]["first_token"] / variants[b]["first_token"], 0.8,
            False, f"{variants[best_ours]['first_token']:.2f} s ({best_ours}) vs {variants[b]['first_token']:.2f} s ({b})",
            variants[best_ours]["best_first_token"] / variants[b]["best_first_token"])
    ours = s["multiturn"].get("ours", {})
    if "turn1" in ours and "turn2" in ours:
        add("second turn same image <= 0.1x first", ours["turn2"]["first_token"] / ours["turn1"]["first_token"], 0.1,
            False, f"{ours['turn2']['first_token']:.3f} s vs {ours['turn1']['first_token']:.2f} s",
            ours["turn2"]["best_first_token"] / ours["turn1"]["best_first_token"])
    report_parallel.targets(s.get("parallel", {}), add)
    return out


# --- markdown ----------------------------------------------------------------------------------


def _f(x, digits=2) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:.{digits}f}"


def markdown(s: dict, info: dict, charts: list[str]) -> str:
    m = info["machine"]
    L = [f"# glm-edge benchmarks ({info['label']})", "",
         f"Command: `{info['command']}` (from the repository root)  ",
         f"Machine: {m['cpu_model']} ({' '.join(f for f in m.get('cpu_flags', []) if f in SHOWN_FLAGS)}), {m['logical_cores']} logical / "
         f"{m['physical_cores']} physical cores, {m['ram_gb']} GB RAM, {m['os']}; load average "
         f"{m['load_average_at_start']} at start, {info.get('load_average_at_end')} at end (shared machine)  ",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; commit {m['git_commit']}  ",
         f"Model: {info['model']}  ", f"Settings: {info['settings_text']}  ",
         f"Repetitions: {info['reps']} timed (+{info['warmup']} warm-up) per configuration, medians shown; "
         f"total wall time {info['wall_s'] / 60:.1f} min.", ""]
    if s.get("cpu_busy_before"):
        b = s["cpu_busy_before"]
        L[-1:-1] = [f"Neighbours' CPU load before each timed run (waited up to {info.get('quiet_wait_s')} s for < "
                    f"{info.get('quiet_threshold')}): median {b['median']:.2f}, max {b['max']:.2f}; "
                    f"{b['over_threshold']} of {b['n']} runs started above the threshold.  "]
    if s.get("others_cpu_during"):
        d = s["others_cpu_during"]
        L[-1:-1] = [f"Other processes' share of all CPUs during the counted runs: median {d['median']:.2f}, max "
                    f"{d['max']:.2f} ({d['over_0.25']} of {d['n']} above 0.25); {s.get('discarded_runs', 0)} runs "
                    f"disturbed by more than {info.get('retry_above')} were repeated (kept in the JSON, marked discarded).  "]
    for name, why in info.get("skipped", {}).items():
        L += [f"Skipped {name}: {why}.", ""]
    if s["targets"]:
        L += ["## Targets", "", "Ratios of medians (best-of-N ratio beside it: noise on a shared machine only adds time).", "",
              "| target | measured (median) | best of N | met | detail (medians) |", "|---|---|---|---|---|"]
        for t in s["targets"]:
            L.append(f"| {t['target']} | {t['value']:.3f}x | {_f(t.get('best_of_n'), 3)}x | "
                     f"{'yes' if t['met'] else '**no**'} | {t['detail']} |")
        L.append("")
    if s["text"]:
        L += ["## Text only: prefill and decode (tokens/s, higher is better)", "",
              "| decoder | prompt tokens | ours prefill | llama.cpp prefill | ratio | decode tokens | ours decode | "
              "llama.cpp decode | ratio |", "|---|---|---|---|---|---|---|---|---|"]
        for quant, sd in s["text"].items():
            o, p, r = sd.get("ours", {}), sd.get("llama.cpp", {}), sd.get("ratio", {})
            L.append(f"| {quant} | {o.get('prefill_tokens', '-')} | {_f(o.get('prefill_tps'), 1)} | "
                     f"{_f(p.get('prefill_tps'), 1)} | {_f(r.get('prefill_tps'), 3)}x | {_f(o.get('decode_tokens'), 0)} | "
                     f"{_f(o.get('decode_tps'))} | {_f(p.get('decode_tps'))} | {_f(r.get('decode_tps'), 3)}x |")
        L.append("")
    if s["image"]:
        L += ["## Image time to first token (seconds, lower is better)", "",
              "Same prompt, same decoder GGUF; `onnx-*` = ours (HF-exact preprocessing, ONNX ViT, ggml F16 projector), "
              "`mtmd-*` = llama.cpp's vision path with our mmproj of the same weights, `torch-fp32` = transformers.", "",
              "| image | variant | image tokens | preprocess | vision | prefill | TTFT | TTFT vs mtmd-F16 | vision vs mtmd-F16 |",
              "|---|---|---|---|---|---|---|---|---|"]
        for image, variants in s["image"].items():
            ref = variants.get("mtmd-F16")
            for v, med in variants.items():
                if not isinstance(med, dict) or "first_token" not in med:
                    continue
                rt = med["first_token"] / ref["first_token"] if ref else None
                rv = med["vision"] / ref["vision"] if ref else None
                L.append(f"| {image} | {v} | {med['image_tokens']} | {_f(med['preprocess'], 3)} | {_f(med['vision'])} | "
                         f"{_f(med['prefill'])} | {_f(med['first_token'])} | {_f(rt, 3)}x | {_f(rv, 3)}x |")
        L.append("")
    if s.get("vision_profile"):
        L += ["Where our vision time goes (best of N, outside the TTFT runs):", "",
              "| image | variant | patches | ONNX ViT s | projector s (ggml F16) |", "|---|---|---|---|---|"]
        for image, variants in s["vision_profile"].items():
            for v, p in variants.items():
                L.append(f"| {image} | {v} | {p['patches']} | {_f(p['vit_s'])} | {_f(p['projector_s'])} |")
        L.append("")
    if s["multiturn"]:
        L += ["## Multi-turn chat about one image (time to first token, seconds)", "",
              "| side | variant | turn 1 | turn 2 | turn 2 / turn 1 | turn-2 tokens reused from KV |", "|---|---|---|---|---|---|"]
        for side, turns in s["multiturn"].items():
            t1, t2 = turns.get("turn1", {}), turns.get("turn2", {})
            ratio = t2.get("first_token", float("nan")) / t1.get("first_token", float("nan"))
            L.append(f"| {side} | {t1.get('variant')} | {_f(t1.get('first_token'))} | {_f(t2.get('first_token'), 3)} | "
                     f"{_f(ratio, 3)}x | {_f(t2.get('cached_tokens'), 0)} of {t2.get('prompt_tokens')} |")
        o, p = s["multiturn"].get("ours", {}).get("turn2"), s["multiturn"].get("llama.cpp", {}).get("turn2")
        if o and p:
            L += ["", f"Second turn, ours vs llama.cpp mtmd (which re-evaluates the prompt and re-encodes the image): "
                      f"{o['first_token'] / p['first_token']:.3f}x."]
        L.append("")
    if s["load"]:
        L += ["## Load time and memory (one process each; one image request after load)", "",
              "| side | decoder | vision | load s | RSS after load MB | peak RSS MB | first request s |",
              "|---|---|---|---|---|---|---|"]
        for r in s["load"]:
            L.append(f"| {r['side']} | {r['quant']} | {r['variant']} | {_f(r['load_s'])} | {_f(r['rss_after_load_mb'], 0)} | "
                     f"{_f(r['peak_rss_mb'], 0)} | {_f(r['request_s'])} |")
        L.append("")
    bw = s["bandwidth"]
    if bw.get("decode") and (bw.get("runs") or s["text"]):  # nothing to show when neither ran
        L += ["## The physical limit: memory bandwidth", ""]
        if bw.get("runs"):
            L.append("Measured with numpy: " + ", ".join(f"{r['kind']} {r['threads']} thread(s) {r['gb_per_s']:.1f} GB/s"
                                                         for r in bw["runs"]) +
                     " (copy counts bytes read + written; read is a sum over the array). A decode step reads every "
                     f"weight once, so the ceiling is the best read rate, {bw['ceiling_gb_per_s']:.1f} GB/s; weight bytes "
                     "per token = every decoder tensor except the token embedding (one row of it), from the GGUF; "
                     "the KV cache (a few MB here) is left out.")
            L.append("")
        L += ["| decoder | weight bytes read per token | ours GB/s | fraction of ceiling | llama.cpp GB/s | fraction of ceiling |",
              "|---|---|---|---|---|---|"]
        for quant, e in bw["decode"].items():
            L.append(f"| {quant} | {e['bytes_per_token'] / 2**20:.0f} MiB | {_f(e.get('ours_gb_per_s'))} | "
                     f"{_f(e.get('ours_fraction'), 3)} | {_f(e.get('llama.cpp_gb_per_s'))} | {_f(e.get('llama.cpp_fraction'), 3)} |")
        L.append("")
    L += report_parallel.markdown(s.get("parallel", {}))
    L += markdown_media(s, info)
    if charts:
        L += ["## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts] + [""]
    return "\n".join(L)


# --- charts ------------------------------------------------------------------------------------


def charts(s: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    colors = {"ours": "#1f77b4", "llama.cpp": "#ff7f0e", "transformers": "#2ca02c"}
    if s["text"]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, title in zip(axes, ("prefill_tps", "decode_tps"), ("prefill tokens/s", "decode tokens/s")):
            quants = list(s["text"])
            for i, side in enumerate(("ours", "llama.cpp")):
                vals = [s["text"][q].get(side, {}).get(key, 0) for q in quants]
                ax.bar([x + i * 0.38 for x in range(len(quants))], vals, 0.38, label=side, color=colors[side])
            ax.set_xticks([x + 0.19 for x in range(len(quants))], quants)
            ax.set_title(title)
            ax.legend()
        fig.suptitle("Text only (higher is better)")
        fig.tight_layout()
        files.append(_save(fig, out / "text.png"))
    if s["image"]:
        images = list(s["image"])
        fig, axes = plt.subplots(1, len(images), figsize=(6 * len(images), 4.5), squeeze=False)
        for ax, image in zip(axes[0], images):
            variants = [v for v, m in s["image"][image].items() if isinstance(m, dict) and "first_token" in m]
            bottom = [0.0] * len(variants)
            for stage, color in zip(STAGES + ("other",), ("#9edae5", "#1f77b4", "#ff7f0e", "#c7c7c7")):
                vals = []
                for v in variants:
                    m = s["image"][image][v]
                    vals.append(m["first_token"] - sum(m[k] for k in STAGES) if stage == "other" else m[stage])
                vals = [max(x, 0.0) for x in vals]
                ax.bar(range(len(variants)), vals, 0.6, bottom=bottom, label=stage, color=color)
                bottom = [b + x for b, x in zip(bottom, vals)]
            ax.set_xticks(range(len(variants)), variants, rotation=20)
            ax.set_ylabel("seconds")
            ax.set_title(f"image TTFT {image}")
            ax.legend()
        fig.tight_layout()
        files.append(_save(fig, out / "image_ttft.png"))
    if s["multiturn"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        sides = list(s["multiturn"])
        for i, turn in enumerate(("turn1", "turn2")):
            vals = [s["multiturn"][sd].get(turn, {}).get("first_token", 0) for sd in sides]
            ax.bar([x + i * 0.38 for x in range(len(sides))], vals, 0.38, label=turn.replace("turn", "turn "))
        ax.set_xticks([x + 0.19 for x in range(len(sides))], sides)
        ax.set_ylabel("seconds to first token")
        ax.set_title("Multi-turn chat about one image")
        ax.legend()
        fig.tight_layout()
        files.append(_save(fig, out / "multiturn.png"))
    if s["load"]:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        labels = [f"{r['side']}\n{r['quant']} {r['variant']}" for r in s["load"]]
        for ax, key, title in zip(axes, ("load_s", "peak_rss_mb"), ("load seconds", "peak RSS MB")):
            ax.bar(range(len(labels)), [r[key] for r in s["load"]], 0.6,
                   color=[colors.get(r["side"], "gray") for r in s["load"]])
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
            ax.set_title(title)
        fig.tight_layout()
        files.append(_save(fig, out / "load_memory.png"))
    parallel = report_parallel.chart(s.get("parallel", {}), out, plt)
    if parallel:
        files.append(parallel)
    return files


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)
