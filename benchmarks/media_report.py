"""Medians and markdown tables of the `video` and `document` scenarios (benchmarks/media_scenarios.py).

`summarize_media(results)` -> {"video": ..., "document": {kv_type: ...}}; `markdown_media(summary, info)` -> lines.
Turn rows are medians over the counted repetitions; the 128K rows say which numbers were measured on this
machine (this GGUF's depth) and which are computed for the real depth (`REAL_TEXT_LAYERS`).
"""

from __future__ import annotations

import statistics

REAL_TEXT_LAYERS = 40  # GLM-4.6V-Flash's decoder layers (the --full-depth value)
TURN_KEYS = ("preprocess", "vision", "prefill", "first_token", "total_s", "prompt_tokens", "cached_tokens", "encoded",
             "images_cached", "image_tokens", "images", "video_tokens", "video_frames")
VIDEO_SPLIT = ("demux_s", "sampling_s", "decode_s", "resize_s", "normalize_patchify_s")
TURNS = ("turn1", "turn2", "turn2_no_kv")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _turns(runs: list[dict]) -> dict:
    out = {}
    for turn in TURNS:
        rows = [r for r in runs if r.get("turn") == turn]
        if rows:
            out[turn] = {k: _median(r.get(k) for r in rows) for k in TURN_KEYS}
            out[turn]["n"] = len(rows)
            out[turn]["best_first_token"] = min(r["first_token"] for r in rows)
    return out


def summarize_media(results: dict) -> dict:
    s: dict = {}
    video = [r for r in results.get("video", []) if not r.get("discarded")]
    if video:
        v = _turns(video)
        split = [r for r in video if r.get("turn") == "split"]
        if split:
            v["split"] = {k: _median(r[k] for r in split) for k in VIDEO_SPLIT}
            v["split"].update({k: split[0][k] for k in ("clip", "sampled_frames", "decoded_frames", "resized")})
        v["memory"] = next((r for r in video if r.get("turn") == "memory"), {})
        v["n_ctx"] = v["memory"].get("n_ctx")
        s["video"] = v
    docs = [r for r in results.get("document", []) if not r.get("discarded")]
    if docs:
        s["document"] = {}
        for kv in dict.fromkeys(r["kv_type"] for r in docs if r.get("kv_type")):
            rows = [r for r in docs if r.get("kv_type") == kv]
            d = _turns(rows)
            split = [r for r in rows if r.get("turn") == "split"]
            if split:
                d["split"] = {"render_s": _median(r["render_s"] for r in split)}
                d["split"].update({k: split[0][k] for k in ("pages", "page_tokens", "tokens_per_page", "page_px")})
            d["memory"] = next((r for r in rows if r.get("turn") == "memory"), {})
            s["document"][kv] = d
    return s


def _f(x, digits=2) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _second_turn_rows(d: dict, what: str) -> list[str]:
    L = [f"| turn | TTFT s | preprocess s | vision s | prefill s | {what} encoded | embeddings from cache | "
         "KV tokens reused |", "|---|---|---|---|---|---|---|---|"]
    names = {"turn1": "1: first question (cold)", "turn2": "2: follow-up, same conversation",
             "turn2_no_kv": "2 again, KV prefix dropped (embedding cache only)"}
    for turn in TURNS:
        t = d.get(turn)
        if t:
            L.append(f"| {names[turn]} | {_f(t['first_token'], 3)} | {_f(t['preprocess'], 3)} | {_f(t['vision'], 3)} | "
                     f"{_f(t['prefill'], 3)} | {_f(t['encoded'], 0)} | {_f(t['images_cached'], 0)} | "
                     f"{_f(t['cached_tokens'], 0)} of {_f(t['prompt_tokens'], 0)} |")
    return L


def markdown_media(s: dict, info: dict) -> list[str]:
    L: list[str] = []
    v = s.get("video")
    if v and "turn1" in v:
        t1, sp, mem = v["turn1"], v.get("split", {}), v.get("memory", {})
        groups = t1["video_frames"] / 2
        L += ["## Video: time to first token and the second question", "",
              f"Clip: {sp.get('clip', '?')} (synthetic, keyframe every 2 s, B-frames; new content every repetition); "
              f"{sp.get('sampled_frames', '?')} sampled frames in {groups:.0f} frame groups resized to "
              f"{sp.get('resized', '?')}, {t1['video_tokens']:.0f} video tokens; prompt {t1['prompt_tokens']:.0f} "
              f"tokens, n_ctx {v.get('n_ctx')}, onnx-int8 vision, Q4_K_M decoder. Medians of {t1['n']} runs.", "",
              "| stage of the first question | seconds |", "|---|---|"]
        split_sum = sum(sp.get(k, 0.0) for k in VIDEO_SPLIT)
        for key, label in (("demux_s", "demux: open + probe (header, packet count)"),
                           ("decode_s", f"decode: the {sp.get('decoded_frames', '?')} sampled frames to RGB "
                                        "(only the keyframe groups holding them)"),
                           ("sampling_s", "sampling: frame indices + video smart_resize"),
                           ("resize_s", "preprocess: antialiased bicubic resize"),
                           ("normalize_patchify_s", "preprocess: normalise + patchify (temporal pairs)")):
            if key in sp:
                L.append(f"| {label} | {_f(sp[key], 3)} |")
        L += [f"| (the five above, timed apart on the same clip) | {_f(split_sum, 3)} |",
              f"| runtime preprocess stage (prompt plan: the above inside prepare_video + tokenizing) | "
              f"{_f(t1['preprocess'], 3)} |",
              f"| vision: ViT + projector, {groups:.0f} frame groups | {_f(t1['vision'], 3)} |",
              f"| prefill: {t1['prompt_tokens']:.0f} tokens | {_f(t1['prefill'], 3)} |",
              f"| **time to first token** | **{_f(t1['first_token'], 3)}** |", ""]
        L += _second_turn_rows(v, "frame groups")
        L += ["", f"Peak RSS of the video worker: {_f(mem.get('peak_rss_mb'), 0)} MB (after load "
                  f"{_f(mem.get('rss_after_load_mb'), 0)} MB).", ""]
    docs = s.get("document")
    if docs:
        first = next(iter(docs.values()))
        sp = first.get("split", {})
        L += ["## Documents: a many-page PDF per KV cache type", "",
              f"A {sp.get('pages', '?')}-page text PDF made in the benchmark (Letter, 55 lines of 10-pt text per page, "
              f"every page different, new content every repetition) as a `file` part at "
              f"{'the default' if sp.get('page_tokens') == 1280 else 'a'} per-page budget of {sp.get('page_tokens')} "
              f"tokens ({', '.join(sp.get('page_px', []))} px per page); onnx-int8 vision, Q4_K_M decoder. Render = "
              "PDFium in its worker process, timed apart on the same PDF; preprocess = the runtime's prompt plan "
              "(render + page images' preprocessing).", "",
              "| KV cache | pages | tokens per page | prompt tokens | n_ctx | render s | preprocess s | vision s | "
              "prefill s | **TTFT s** | follow-up TTFT s (KV reused) | follow-up, KV dropped s | peak RSS MB | runs |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for kv, d in docs.items():
            t1, t2, t3, m = d.get("turn1", {}), d.get("turn2", {}), d.get("turn2_no_kv", {}), d.get("memory", {})
            ds = d.get("split", {})
            L.append(f"| {kv} | {ds.get('pages', '-')} | {'/'.join(str(x) for x in ds.get('tokens_per_page', []))} | "
                     f"{_f(t1.get('prompt_tokens'), 0)} | {m.get('n_ctx', '-')} | {_f(ds.get('render_s'))} | "
                     f"{_f(t1.get('preprocess'))} | {_f(t1.get('vision'))} | {_f(t1.get('prefill'))} | "
                     f"**{_f(t1.get('first_token'))}** | {_f(t2.get('first_token'), 3)} ({_f(t2.get('cached_tokens'), 0)} "
                     f"of {_f(t2.get('prompt_tokens'), 0)}) | {_f(t3.get('first_token'))} | {_f(m.get('peak_rss_mb'), 0)} | "
                     f"{t1.get('n', 0)} |")
        L += ["", "### What 128K context costs", "",
              "KV bytes per token = 2 (K and V) x layers x KV heads x head dim x bytes per value, read from the decoder "
              "GGUF, x 131072 cells (computed). **measured**: the resident memory (RSS) that creating a llama.cpp "
              "context of 131072 cells adds on this machine over one of 4096 cells, right after creation (pages of "
              "the KV buffer that nothing has written yet need not be resident). **planned**: the same per-layer "
              f"size x {REAL_TEXT_LAYERS} layers (the real model), computed, not run here.", "",
              "| KV cache | bytes per token (this GGUF) | 128K KV, this GGUF (computed) | 131072 - 4096 cells (computed) | "
              f"RSS added at creation, 131072 - 4096 cells (measured) | bytes per token, {REAL_TEXT_LAYERS} layers | "
              f"128K KV, {REAL_TEXT_LAYERS} layers (planned) |",
              "|---|---|---|---|---|---|---|"]
        layers = info.get("text_layers") or 0
        for kv, d in docs.items():
            m = d.get("memory", {})
            if "kv_bytes_per_token" not in m:
                continue
            real = m["kv_bytes_per_token"] / layers * REAL_TEXT_LAYERS if layers else float("nan")
            L.append(f"| {kv} | {m['kv_bytes_per_token']:.0f} | {m['kv_mib_at_128k']:.0f} MiB | "
                     f"{m['kv_mib_128k_minus_4096']:.0f} MiB | {m['rss_128k_minus_4096_mb']:.0f} MiB | "
                     f"{real:.0f} | {real * 131072 / 2**30:.2f} GiB (planned) |")
        L.append("")
    return L
