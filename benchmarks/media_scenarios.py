"""The `video` and `document` scenarios of `python -m benchmarks` (run in a worker like the others).

video: a synthetic clip (benchmarks/video_clips.py; a new clip, i.e. new content, every repetition, so every
  turn 1 is cold: no memo, embedding or KV entry of it exists) through `Runtime.chat` as a `video` part.
  Turn 1: time to first token with the runtime's own stage timings (preprocess = the whole prompt plan, which
  decodes and preprocesses the clip; vision = ViT + projector of every frame group; prefill). Turn 2: a follow-up
  question in the same conversation (the KV prefix and the frame-group embeddings should make it cheap), then
  the same follow-up after the KV prefix is dropped (the frame-group embedding cache alone). The preprocess
  stage is split by calling edge.vision's pieces on the same clip right after: demux (open + probe), sampling
  (sample_frames + the video smart_resize), decode (the sampled frames to RGB), resize, normalise + patchify.
document: a PDF made here (distinct text on every page, new content every repetition) as a `file` part at
  the default per-page budget, one worker per KV cache type. Turn 1 and turn 2 as for video (the KV-dropped
  turn only when cfg["kv_dropped_turn"]: at 20 pages it is a whole second prefill); the render time
  (PDFium in its worker process) is measured apart on the same PDF with a second renderer. After the runs:
  what 128K context costs, KV bytes per token from the decoder GGUF's own dimensions, and the resident memory
  a decoder context of 131072 cells takes here, measured (RSS after creating it, less one of 4096 cells).
Warm-up rounds use a short input of the same kind (a whole 20-page warm-up would double the run).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from benchmarks.scenarios import GREEDY, _load_runtime, _reset, _rss_mb, measure

VIDEO_QUESTION = "Describe what happens in this video, with the times."
VIDEO_FOLLOW_UP = "What changes between the first and the last second?"
DOC_QUESTION = "Summarise the revenue figures across all pages."
DOC_FOLLOW_UP = "Which region has the highest margin?"
FULL_CONTEXT = 131072


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux's ru_maxrss also keeps the peak of the memory image exec replaced,
    i.e. the parent benchmark process that spawned this worker; VmHWM is reset by exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _manifest(cfg: dict, quant: str) -> dict:
    return json.loads((Path(cfg["bundles"][quant]) / "manifest.json").read_text())


def _ctx(tokens: int) -> int:
    """Context cells for a prompt of `tokens` media tokens: room for markers, question, answer; 256-aligned."""
    return (tokens + 1024 + 255) // 256 * 256


def _turn(done, t0: float) -> dict:
    t, u = done.timings, done.usage
    return {"preprocess": t.preprocess, "vision": t.vision, "prefill": t.prefill,
            "first_token": t.first_token if t.first_token > 0 else t.preprocess + t.vision + t.prefill,
            "total_s": time.perf_counter() - t0, "prompt_tokens": u.prompt_tokens, "cached_tokens": u.cached_tokens,
            "image_tokens": u.image_tokens, "images": u.images, "images_cached": u.images_cached,
            "video_tokens": u.video_tokens, "video_frames": u.video_frames, "completion_tokens": u.completion_tokens}


def _conversation(rt, first: list[dict], answer_tokens: int, follow_up: str, kv_dropped: bool = True) -> dict:
    """Turn 1 (cold), turn 2 (same conversation), optionally turn 2 again after the KV prefix is dropped; with
    how many media the runtime encoded in each (RuntimeStats.images_encoded)."""
    out = {}
    encoded = rt.stats.images_encoded
    t0 = time.perf_counter()
    done = rt.chat(first, max_tokens=answer_tokens, **GREEDY)
    out["turn1"] = {**_turn(done, t0), "encoded": rt.stats.images_encoded - encoded}
    second = first + [{"role": "assistant", "content": done.output.content or done.text},
                      {"role": "user", "content": follow_up}]
    for name in ("turn2", "turn2_no_kv")[:2 if kv_dropped else 1]:
        if name == "turn2_no_kv":
            rt.forget_prefix()
        encoded = rt.stats.images_encoded
        t0 = time.perf_counter()
        done = rt.chat(second, max_tokens=1, **GREEDY)
        out[name] = {**_turn(done, t0), "encoded": rt.stats.images_encoded - encoded}
    return out


def _rows(cfg: dict, fn, rep: int, discarded: list, meta: dict) -> list[dict]:
    """One measured repetition as one row per turn (the measure() bookkeeping copied onto each)."""
    n = len(discarded)
    r = measure(cfg, fn, rep, discarded)
    for d in discarded[n:]:
        d.update(meta, rep=rep)
    if r is None:
        return []
    common = {k: v for k, v in r.items() if not isinstance(v, dict)}
    return [{**common, **meta, **r[turn], "turn": turn, "rep": rep} for turn in ("turn1", "turn2", "turn2_no_kv")
            if turn in r] + \
        ([{**common, **meta, **r["split"], "turn": "split", "rep": rep}] if "split" in r else [])


# --- video ---------------------------------------------------------------------------------------


def video_stages(data: bytes, config) -> dict:
    """Seconds of each piece of prepare_video on `data` (the same functions it calls, timed one by one)."""
    import numpy as np

    from edge.vision.resample import resize_bicubic_aa
    from edge.vision.video import decode_frames, open_video, probe
    from edge.vision.video_preprocess import normalize, patchify_pair, plan_size
    from edge.vision.video_sampling import sample_frames

    out, t = {}, time.perf_counter()
    src = open_video(data)
    meta = probe(src)
    out["demux_s"], t = time.perf_counter() - t, time.perf_counter()
    indices = sample_frames(meta.total_frames, meta.fps, meta.duration, temporal_patch_size=config.temporal_patch_size)
    h, w = plan_size(len(indices), meta.height, meta.width, config)
    out["sampling_s"], t = time.perf_counter() - t, time.perf_counter()
    frames = dict(decode_frames(src, indices, meta))
    out["decode_s"], t = time.perf_counter() - t, time.perf_counter()
    resized = {i: resize_bicubic_aa(f, h, w) for i, f in frames.items()}
    out["resize_s"], t = time.perf_counter() - t, time.perf_counter()
    step = config.temporal_patch_size
    for g in range(len(indices) // step):
        patchify_pair(normalize(np.stack([resized[i] for i in indices[g * step:(g + 1) * step]]), config), config)
    out["normalize_patchify_s"] = time.perf_counter() - t
    out.update(sampled_frames=len(indices), decoded_frames=len(frames), resized=f"{w}x{h}",
               clip=f"{meta.width}x{meta.height}, {meta.duration:g} s at {meta.fps:g} fps ({meta.codec}), {len(data)} bytes")
    return out


def run_video(cfg: dict) -> list[dict]:
    from benchmarks.video_clips import clip_bytes
    from edge.vision.video_preprocess import VideoConfig, prepare_video

    quant, clip = cfg["quant"], cfg["clip"]
    config = VideoConfig.from_video_preprocessor_config(_manifest(cfg, quant).get("video_preprocessor"))

    def make(seed: int, seconds: float) -> bytes:  # keyframe every 2 s, B-frames: a typical camera/phone stream
        return clip_bytes(clip["width"], clip["height"], clip["fps"], seconds, gop=2 * clip["fps"], bframes=2,
                          seed=seed)

    clips = {rep: make(1000 + rep, clip["seconds"]) for rep in range(cfg["reps"])}
    warm = make(999, clip.get("warmup_seconds", 2))
    n_ctx = _ctx(prepare_video(clips[0], config).n_tokens)
    rt = _load_runtime({**cfg, "settings": {**cfg["settings"], "n_ctx": n_ctx}}, quant, cfg["vision_dtype"])
    rss_load = _rss_mb()
    runs, discarded = [], []
    for rep in range(-cfg["warmup"], cfg["reps"]):
        data = clips.get(rep, warm)

        def fn(data=data):
            _reset(rt)
            out = _conversation(rt, [{"role": "user", "content": [{"type": "video", "video": data},
                                                                  {"type": "text", "text": VIDEO_QUESTION}]}],
                                cfg["answer_tokens"], VIDEO_FOLLOW_UP)
            out["split"] = video_stages(data, config)
            return out

        runs += _rows(cfg, fn, rep, discarded, {"side": "ours", "variant": f"onnx-{cfg['vision_dtype']}", "quant": quant,
                                                "n_ctx": n_ctx, "kv_type": cfg["settings"]["kv_type"]})
    peak = _peak_rss_mb()
    rt.close()
    runs.append({"turn": "memory", "rss_after_load_mb": rss_load, "peak_rss_mb": peak, "n_ctx": n_ctx})
    return runs + discarded


# --- documents -----------------------------------------------------------------------------------


def text_pdf(pages: int, seed: int = 0) -> bytes:
    """A report of `pages` Letter pages, 55 lines of 10-pt Helvetica each, every page's figures different
    (identical pages would share one cached embedding and flatter the vision time)."""
    from benchmarks.pdf_fuzz import build_pdf, stream

    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (3 + 2 * i) for i in range(pages)),
                                                              pages)]
    font = b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"
    for p in range(pages):
        k = seed * 1000 + p
        lines = b" ".join(b"(%d.%d Revenue %d.%02d million in region %d; margin %d.%d%%, up %d bps year on year.) Tj "
                          b"0 -13 Td" % (p + 1, i, 100 + (i * 7 + k * 13) % 900, (i * 13 + k) % 100, (i + k) % 9,
                                         10 + (i + k) % 7, (i * k) % 10, 5 * i + k % 50) for i in range(55))
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R /Resources %s >>"
                       % (4 + 2 * p, font))
        objects.append(stream(b"", b"BT /F1 10 Tf 40 760 Td " + lines + b" ET"))
    return build_pdf(objects)


def context_cost(cfg: dict, quant: str, kv_type: str) -> dict:
    """KV bytes per token from the decoder GGUF, and the RSS a 131072-cell context adds here (measured)."""
    from benchmarks.document_pages import kv_bytes_per_token
    from edge.engine.llama import Decoder
    from edge.options import RuntimeOptions

    decoder = cfg["decoders"][quant]
    s = cfg["settings"]
    per_token = kv_bytes_per_token(Path(decoder), kv_type)
    rss = {}
    for cells in (4096, FULL_CONTEXT):
        before = _rss_mb()
        d = Decoder(decoder, RuntimeOptions(ctx_size=cells, kv_type=kv_type, threads=cfg["threads"],
                                            batch_size=s["n_batch"], ubatch_size=s["n_ubatch"], flash_attn=s["flash_attn"],
                                            device="cpu"))
        rss[cells] = _rss_mb() - before
        d.close()
    return {"kv_bytes_per_token": per_token, "kv_mib_at_128k": per_token * FULL_CONTEXT / 2**20,
            "rss_4096_mb": rss[4096], "rss_128k_mb": rss[FULL_CONTEXT],
            "rss_128k_minus_4096_mb": rss[FULL_CONTEXT] - rss[4096],
            "kv_mib_128k_minus_4096": per_token * (FULL_CONTEXT - 4096) / 2**20}


def run_document(cfg: dict) -> list[dict]:
    from edge.vision.document import DocumentOptions
    from edge.vision.image import ImageConfig
    from edge.vision.pdf_worker import PdfRenderer

    quant, kv = cfg["quant"], cfg["settings"]["kv_type"]
    image_config = ImageConfig.from_preprocessor_config(_manifest(cfg, quant)["preprocessor"])
    docs = {rep: text_pdf(cfg["pages"], seed=1 + rep) for rep in range(cfg["reps"])}
    warm = text_pdf(cfg.get("warmup_pages", 2), seed=999)
    options = DocumentOptions(**({"page_tokens": cfg["page_tokens"]} if cfg.get("page_tokens") else {}))
    with PdfRenderer(image_config) as sizer:  # the context the document needs, before loading the runtime
        n_ctx = _ctx(sizer.render(docs[0], options).n_tokens + 2 * cfg["pages"])
    rt = _load_runtime({**cfg, "settings": {**cfg["settings"], "n_ctx": n_ctx}}, quant, cfg["vision_dtype"])
    rss_load = _rss_mb()
    runs, discarded = [], []
    part = {k: v for k, v in (("page_tokens", cfg.get("page_tokens")),) if v}
    for rep in range(-cfg["warmup"], cfg["reps"]):
        data = docs.get(rep, warm)

        def fn(data=data):
            _reset(rt)
            out = _conversation(rt, [{"role": "user", "content": [{"type": "file", "file": data, **part},
                                                                  {"type": "text", "text": DOC_QUESTION}]}],
                                cfg["answer_tokens"], DOC_FOLLOW_UP, cfg.get("kv_dropped_turn", True))
            renderer = PdfRenderer(image_config)  # cold cache, worker started before the clock
            renderer.start()
            t = time.perf_counter()
            doc = renderer.render(data, options)
            out["split"] = {"render_s": time.perf_counter() - t, "pages": len(doc.pages), "page_tokens": doc.page_tokens,
                            "tokens_per_page": sorted({p.n_tokens for p in doc.pages}),
                            "page_px": sorted({f"{p.width}x{p.height}" for p in doc.pages})}
            renderer.close()
            return out

        runs += _rows(cfg, fn, rep, discarded, {"side": "ours", "variant": f"onnx-{cfg['vision_dtype']}", "quant": quant,
                                                "n_ctx": n_ctx, "kv_type": kv})
    peak = _peak_rss_mb()
    rt.close()
    runs.append({"turn": "memory", "kv_type": kv, "rss_after_load_mb": rss_load, "peak_rss_mb": peak, "n_ctx": n_ctx,
                 **context_cost(cfg, quant, kv)})
    return runs + discarded


MEDIA_SCENARIOS = {"video": run_video, "document": run_document}
