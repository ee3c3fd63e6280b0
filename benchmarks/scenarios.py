"""The measured scenarios. Each runs in its own worker process (`python -m benchmarks.worker`), so that one
side's memory never weighs on the other and peak RSS is per process.

Inside a scenario ours and the peer alternate within every repetition (ours, peer, peer', ours', ...
rotated each repetition), so a noisy neighbour on a shared machine slows both about equally; ratios, not
absolute times, are the product's numbers. A first untimed round warms every path (page cache, graph
allocation, onnxruntime arenas). Settings are identical on both sides: n_ctx, n_batch, n_ubatch,
threads, flash attention, KV type; greedy sampling.
"""

from __future__ import annotations

import gc
import os
import resource
import time

import numpy as np

# --- common --------------------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


def cpu_busy(seconds: float = 0.5) -> float:
    """Fraction of all CPUs busy over `seconds` (this process is idle meanwhile: it is the neighbours' load)."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(seconds)
        total1, idle1 = _cpu_times()
    except OSError:
        return float("nan")
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def quiet_gate(cfg: dict) -> float | None:
    """On a shared machine, wait (at most cfg['quiet_wait'] s) until the neighbours leave the CPUs mostly idle:
    llama.cpp's spinning thread barriers slow down several-fold when a thread is descheduled. Returns the busy
    fraction seen just before the measurement (recorded with every run)."""
    limit, threshold = cfg.get("quiet_wait", 0), cfg.get("quiet_threshold", 0.25)
    if not limit:
        return None
    deadline = time.monotonic() + limit
    busy = cpu_busy(0.3)
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy(1.0)
    return busy


def timed(fn, busy_before) -> dict:
    """Run fn() and add what the neighbours did meanwhile: `others_cpu_during` = the share of all CPUs used by
    other processes while it ran (machine busy time minus this process's CPU time, over wall x cores)."""
    try:
        total0, idle0 = _cpu_times()
    except OSError:
        total0 = None
    own0, wall0 = os.times(), time.perf_counter()
    r = fn()
    wall = time.perf_counter() - wall0
    own1 = os.times()
    if total0 is not None:
        total1, idle1 = _cpu_times()
        hz = os.sysconf("SC_CLK_TCK")
        busy_s = ((total1 - total0) - (idle1 - idle0)) / hz
        own_s = (own1.user - own0.user) + (own1.system - own0.system)
        r["others_cpu_during"] = max(0.0, busy_s - own_s) / (wall * (os.cpu_count() or 1))
    r["cpu_busy_before"] = busy_before
    return r


def measure(cfg: dict, fn, rep: int, discarded: list) -> dict | None:
    """One timed measurement (None for warm-up rounds). A run during which other processes took more than
    cfg['retry_above'] of the CPUs is repeated (at most cfg['retries'] times); the replaced attempts are kept
    in `discarded` (they appear in the raw JSON marked as such), the last attempt counts either way."""
    if rep < 0:
        fn()
        return None
    for attempt in range(cfg.get("retries", 0) + 1):
        r = timed(fn, quiet_gate(cfg))
        r["attempt"] = attempt
        noisy = r.get("others_cpu_during", 0.0) > cfg.get("retry_above", 1.0)
        if not noisy or attempt == cfg.get("retries", 0):
            return r
        discarded.append({**r, "discarded": True})
    return r


def _rotate(items: list, rep: int) -> list:
    k = rep % len(items)
    return items[k:] + items[:k]


def _load_runtime(cfg: dict, quant: str, vision_dtype: str):
    from edge.runtime import Runtime

    s = cfg["settings"]
    return Runtime.load(cfg["bundles"][quant], device="cpu", vision_dtype=vision_dtype, ctx_size=s["n_ctx"],
                        batch_size=s["n_batch"], ubatch_size=s["n_ubatch"], threads=cfg["threads"], kv_type=s["kv_type"],
                        flash_attn=s["flash_attn"])


def _reset(rt) -> None:
    """Forget the KV prefix and the image cache: the next request starts cold (what a new chat sees)."""
    rt.forget_prefix()
    rt.decoder.truncate(0)
    rt.image_cache = type(rt.image_cache)(rt.image_cache.max_bytes)


GREEDY = dict(temperature=0.0, repetition_penalty=1.0, enable_thinking=False)
QUESTION = "Describe this image in detail."


def _user_image(img: bytes, text: str = QUESTION) -> dict:
    return {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": text}]}


def peer_prompt(rt, messages: list[dict], marker: str) -> str:
    """The same rendered prompt (our template) with mtmd's media marker where the image goes; mtmd adds
    <|begin_of_image|> / <|end_of_image|> around the image itself."""
    from edge.chat.template import normalize_messages

    clean, _ = normalize_messages(messages)
    text = rt.prompt.render(clean, None, enable_thinking=False)
    return text.replace("<|begin_of_image|><|image|><|end_of_image|>", marker)


def _ours_ttft(rt, messages: list[dict]) -> dict:
    done = rt.chat(messages, max_tokens=1, **GREEDY)
    t = done.timings
    first = t.first_token if t.first_token > 0 else t.preprocess + t.vision + t.prefill
    return {"preprocess": t.preprocess, "vision": t.vision, "prefill": t.prefill, "first_token": first,
            "prompt_tokens": done.usage.prompt_tokens, "image_tokens": done.usage.image_tokens,
            "cached_tokens": done.usage.cached_tokens, "first_token_estimated": t.first_token <= 0}


def _peer_ttft(peer, prompt: str, images: list[bytes]) -> dict:
    t = peer.first_token(prompt, images)
    return {"preprocess": t.preprocess, "vision": t.vision, "prefill": t.prefill, "first_token": t.first_token,
            "prompt_tokens": t.n_tokens, "image_tokens": t.image_tokens, "cached_tokens": 0}


def _peer(cfg: dict, quant: str, mmproj: str):
    from benchmarks.mtmd_peer import MtmdPeer

    s = cfg["settings"]
    return MtmdPeer(cfg["decoders"][quant], cfg["mmproj"][mmproj], n_ctx=s["n_ctx"], n_batch=s["n_batch"],
                    n_ubatch=s["n_ubatch"], threads=cfg["threads"], flash_attn=s["flash_attn"], kv_type=s["kv_type"])


# --- text: decode and prefill --------------------------------------------------------------------

WORDS = ("the quick brown fox jumps over a lazy dog while seven bright stars shine above quiet northern hills "
         "engineers measure memory bandwidth latency and throughput on small machines every single day").split()


def long_text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


def load_llama(path: str, s: dict, threads: int, extra_buffers: bool):
    """llama-cpp-python's `Llama` with our settings. It has no argument for llama.cpp's extra (repacked/AMX)
    weight buffers, so its model-params factory is wrapped while it loads to match our Decoder's choice."""
    import llama_cpp.llama as high

    original = high.llama_cpp.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = extra_buffers
        return p

    high.llama_cpp.llama_model_default_params = params
    try:
        return high.Llama(str(path), n_ctx=s["n_ctx"], n_batch=s["n_batch"], n_ubatch=s["n_ubatch"], n_threads=threads,
                          n_threads_batch=threads, flash_attn=s["flash_attn"] == "on", n_gpu_layers=0, verbose=False)
    finally:
        high.llama_cpp.llama_model_default_params = original


def run_text(cfg: dict) -> list[dict]:
    """Prefill of a long text prompt and greedy decode of N tokens: our Runtime vs llama-cpp-python's Llama."""
    from benchmarks.mtmd_peer import quiet_llama

    quiet_llama()
    s, quant = cfg["settings"], cfg["quant"]
    rt = _load_runtime(cfg, quant, "int8")
    llm = load_llama(cfg["decoders"][quant], s, cfg["threads"], rt.decoder.extra_buffers)
    messages = [{"role": "user", "content": long_text(cfg["prompt_words"]) + "\nSummarize the text above."}]
    chunks, _, _ = rt.prompt.build(messages, None, False)
    tokens = [t for c in chunks for t in c.tokens]
    n_new = cfg["decode_tokens"]

    def ours():
        _reset(rt)
        done = rt.chat(messages, max_tokens=n_new, **GREEDY)
        t, u = done.timings, done.usage
        return {"prefill_tokens": u.prompt_tokens, "prefill_s": t.prefill, "decode_tokens": u.completion_tokens,
                "decode_s": t.decode, "stop": done.finish_reason}

    def peer():
        llm.reset()
        gen = llm.generate(tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        t0 = time.perf_counter()
        next(gen)  # prompt eval + first sample
        t1 = time.perf_counter()
        for _ in range(n_new):  # n_new decodes + n_new samples, like ours
            next(gen)
        t2 = time.perf_counter()
        gen.close()
        return {"prefill_tokens": len(tokens), "prefill_s": t1 - t0, "decode_tokens": n_new, "decode_s": t2 - t1,
                "stop": "length"}

    sides = [("ours", ours), ("llama.cpp", peer)]
    runs, discarded = [], []
    for rep in range(-cfg["warmup"], cfg["reps"]):
        for side, fn in _rotate(sides, rep):
            n_discarded = len(discarded)
            r = measure(cfg, fn, rep, discarded)
            for d in discarded[n_discarded:]:
                d.update(side=side, quant=quant, rep=rep)
            if r is not None:
                r.update(side=side, quant=quant, rep=rep, prefill_tps=r["prefill_tokens"] / r["prefill_s"],
                         decode_tps=r["decode_tokens"] / r["decode_s"])
                runs.append(r)
    rt.close()
    llm.close()
    return runs + discarded


# --- image time-to-first-token -------------------------------------------------------------------


def run_image(cfg: dict) -> list[dict]:
    """TTFT of one image + question: our ONNX fp32/int8 vs llama.cpp mtmd with mmproj F16/Q8_0."""
    from edge.vision.encoder import VisionEncoder

    quant = cfg["quant"]
    rt = _load_runtime(cfg, quant, "fp32")
    encoders = {"fp32": rt.vision, "int8": VisionEncoder(rt.bundle.vision_path("int8"), provider="cpu",
                                                         threads=cfg["threads"], expected_io=rt.bundle.vision_io("int8"))}
    peers = {q: _peer(cfg, quant, q) for q in cfg["mmproj"]}
    marker = next(iter(peers.values())).marker
    images = {name: open(path, "rb").read() for name, path in cfg["images"].items()}

    def ours(dtype, img):
        def fn():
            rt.vision = encoders[dtype]
            _reset(rt)
            return _ours_ttft(rt, [_user_image(img)])
        return fn

    def peer(q, img):
        def fn():
            return _peer_ttft(peers[q], peer_prompt(rt, [_user_image(img)], marker), [img])
        return fn

    runs, discarded = [], []
    for name, img in images.items():
        variants = [("ours", f"onnx-{d}", ours(d, img)) for d in encoders]
        variants += [("llama.cpp", f"mtmd-{q}", peer(q, img)) for q in peers]
        for rep in range(-cfg["warmup"], cfg["reps"]):
            for side, variant, fn in _rotate(variants, rep):
                n_discarded = len(discarded)
                r = measure(cfg, fn, rep, discarded)
                for d in discarded[n_discarded:] + ([r] if r else []):
                    d.update(side=side, variant=variant, image=name, rep=rep, quant=quant)
                if r is not None:
                    runs.append(r)
    # Where our vision time goes: the ONNX ViT and the runtime's projector (ggml by default) timed apart (best of `reps`).
    from edge.vision.image import prepare_image

    for name, img in images.items():
        prepared = prepare_image(img, rt.image_config)
        for dtype, enc in encoders.items():
            vit, proj = [], []
            for _ in range(max(cfg["reps"], 1)):
                t = time.perf_counter()
                hidden = enc.encode(prepared.pixel_patches, prepared.grid_thw)
                vit.append(time.perf_counter() - t)
                t = time.perf_counter()
                rt.projector(hidden)
                proj.append(time.perf_counter() - t)
            runs.append({"side": "ours", "variant": f"onnx-{dtype}", "image": name, "profile": True,
                         "vit_s": min(vit), "projector_s": min(proj), "patches": int(prepared.pixel_patches.shape[0])})
    for p in peers.values():
        p.close()
    rt.close()
    return runs + discarded


# --- transformers ------------------------------------------------------------------------------


def run_transformers(cfg: dict) -> list[dict]:
    """TTFT of transformers fp32 (Glm4vForConditionalGeneration) on the same checkpoint, forward to the first
    token; vision timed by hooks on the visual module (ViT + downsample + merger), prefill = the rest."""
    import io

    import torch
    from PIL import Image
    from transformers import AutoTokenizer, Glm4vForConditionalGeneration

    try:
        from transformers.models.glm46v.image_processing_pil_glm46v import Glm46VImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil as Processor
    import json

    torch.set_num_threads(cfg["threads"])
    ckpt = cfg["checkpoint"]
    t = time.perf_counter()
    model = Glm4vForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t
    tok = AutoTokenizer.from_pretrained(ckpt)
    pre_cfg = json.load(open(os.path.join(ckpt, "preprocessor_config.json")))
    processor = Processor(**{k: v for k, v in pre_cfg.items() if k not in ("image_processor_type", "processor_class")})
    image_token = model.config.image_token_id
    spans = {}
    visual = model.model.visual
    visual.register_forward_pre_hook(lambda m, a: spans.__setitem__("v0", time.perf_counter()))
    visual.register_forward_hook(lambda m, a, o: spans.__setitem__("v1", time.perf_counter()))
    images = {name: open(path, "rb").read() for name, path in cfg["images"].items()}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]

    def ttft(img: bytes) -> dict:
        start = time.perf_counter()
        pil = Image.open(io.BytesIO(img)).convert("RGB")
        out = processor(images=[pil], return_tensors="pt")
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n_img = int(out["image_grid_thw"][0].prod()) // 4
        expanded = []
        for i in ids:
            expanded += [i] * n_img if i == image_token else [i]
        input_ids = torch.tensor([expanded])
        pre = time.perf_counter() - start
        with torch.inference_mode():
            s = time.perf_counter()
            logits = model(input_ids=input_ids, pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"],
                           mm_token_type_ids=(input_ids == image_token).int(), logits_to_keep=1).logits
            token = int(logits[0, -1].argmax())
            fwd = time.perf_counter() - s
        vision = spans["v1"] - spans["v0"]
        return {"preprocess": pre, "vision": vision, "prefill": fwd - vision, "first_token": time.perf_counter() - start,
                "prompt_tokens": len(expanded), "image_tokens": n_img, "cached_tokens": 0, "token": token}

    runs, discarded = [], []
    for name, img in images.items():
        for rep in range(-cfg["warmup"], cfg["reps"]):
            n_discarded = len(discarded)
            r = measure(cfg, lambda: ttft(img), rep, discarded)
            for d in discarded[n_discarded:] + ([r] if r else []):
                d.update(side="transformers", variant="torch-fp32", image=name, rep=rep, load_s=load_s)
            if r is not None:
                runs.append(r)
    return runs + discarded


# --- multi-turn about one image -----------------------------------------------------------------


def run_multiturn(cfg: dict) -> list[dict]:
    """Turn 1: image + question, greedy answer. Turn 2: the same conversation + a follow-up question.
    Ours keeps the KV prefix (image included) and the image cache; mtmd evaluates the whole prompt again."""
    quant, mm = cfg["quant"], cfg["mmproj_quant"]
    rt = _load_runtime(cfg, quant, cfg["vision_dtype"])
    peer = _peer(cfg, quant, mm)
    img = open(cfg["images"][cfg["image"]], "rb").read()
    first_msgs = [_user_image(img)]
    variant_ours, variant_peer = f"onnx-{cfg['vision_dtype']}", f"mtmd-{mm}"

    def ours() -> dict:
        _reset(rt)
        t = time.perf_counter()
        done = rt.chat(first_msgs, max_tokens=cfg["answer_tokens"], **GREEDY)
        answer_s = time.perf_counter() - t
        tm = done.timings
        turn1 = {"preprocess": tm.preprocess, "vision": tm.vision, "prefill": tm.prefill,
                 "first_token": tm.first_token or tm.preprocess + tm.vision + tm.prefill,
                 "prompt_tokens": done.usage.prompt_tokens, "cached_tokens": done.usage.cached_tokens,
                 "answer_s": answer_s}
        second = first_msgs + [{"role": "assistant", "content": done.output.content or done.text},
                               {"role": "user", "content": "What colours dominate, and where?"}]
        state["second"] = second  # the peer replays the conversation ours produced
        return {"turns": [turn1, _ours_ttft(rt, second)]}

    state: dict = {}

    def peer_turns() -> dict:
        second = state["second"]
        return {"turns": [_peer_ttft(peer, peer_prompt(rt, first_msgs, peer.marker), [img]),
                          _peer_ttft(peer, peer_prompt(rt, second, peer.marker), [img])]}

    runs, discarded = [], []
    for rep in range(-cfg["warmup"], cfg["reps"]):
        for side, variant, fn in _rotate([("ours", variant_ours, ours), ("llama.cpp", variant_peer, peer_turns)], rep):
            if side == "llama.cpp" and "second" not in state:
                ours()
            n_discarded = len(discarded)
            r = measure(cfg, fn, rep, discarded)
            for d in discarded[n_discarded:] + ([r] if r else []):
                meta = {k: v for k, v in d.items() if k != "turns"}
                for turn, t in enumerate(d["turns"], start=1):
                    row = {**t, **meta, "side": side, "variant": variant, "turn": turn, "rep": rep, "image": cfg["image"],
                           "quant": quant}
                    (runs if d is r else discarded).append(row)
    discarded = [d for d in discarded if "turns" not in d]
    peer.close()
    rt.close()
    return runs + discarded


# --- load time and memory ------------------------------------------------------------------------


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_load(cfg: dict) -> list[dict]:
    """One process, one side: import, load, then one image request; load seconds, RSS after load, peak RSS."""
    img = open(cfg["images"][cfg["image"]], "rb").read()
    busy = quiet_gate(cfg)
    base_rss = _rss_mb()
    if cfg["side"] == "ours":
        import edge.runtime  # noqa: F401  (imports are not load time)

        t = time.perf_counter()
        rt = _load_runtime(cfg, cfg["quant"], cfg["vision_dtype"])
        load_s = time.perf_counter() - t
        rss_load = _rss_mb()
        t = time.perf_counter()
        _ours_ttft(rt, [_user_image(img)])
        request_s = time.perf_counter() - t
        variant = f"onnx-{cfg['vision_dtype']}"
        rt.close()
    else:
        import benchmarks.mtmd_peer  # noqa: F401
        from edge.runtime import Runtime  # only to render the same prompt; not counted below

        t = time.perf_counter()
        peer = _peer(cfg, cfg["quant"], cfg["mmproj_quant"])
        load_s = time.perf_counter() - t
        rss_load = _rss_mb()
        prompt = f"[gMASK]<sop><|user|>\n{peer.marker}{QUESTION}<|assistant|>\n<think></think>\n"
        t = time.perf_counter()
        peer.first_token(prompt, [img])
        request_s = time.perf_counter() - t
        variant = f"mtmd-{cfg['mmproj_quant']}"
        peer.close()
        del Runtime
    gc.collect()
    return [{"side": cfg["side"], "quant": cfg["quant"], "variant": variant, "load_s": load_s,
             "rss_before_mb": base_rss, "rss_after_load_mb": rss_load, "peak_rss_mb": _peak_rss_mb(),
             "request_s": request_s, "image": cfg["image"], "cpu_busy_before": busy}]


# --- memory bandwidth -------------------------------------------------------------------------


def run_bandwidth(cfg: dict) -> list[dict]:
    """STREAM-like numpy bandwidth on arrays far larger than any cache, 1 thread and `threads` threads (each on its
    own slice; numpy releases the GIL): copy (bytes read + written per second) and read (a sum, bytes read per
    second, the pattern of a decode step). The best of several passes."""
    from concurrent.futures import ThreadPoolExecutor

    n = cfg["bandwidth_mb"] * 2**20 // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    out = []
    quiet_gate(cfg)
    kinds = {"copy": (lambda a, b: np.copyto(dst[a:b], src[a:b]), 2 * src.nbytes),
             "read": (lambda a, b: src[a:b].sum(), src.nbytes)}
    for threads in sorted({1, cfg["threads"]}):
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(n), threads)]
        with ThreadPoolExecutor(threads) as pool:
            for kind, (op, nbytes) in kinds.items():
                best = float("inf")
                for _ in range(cfg["bandwidth_passes"]):
                    t = time.perf_counter()
                    list(pool.map(lambda b: op(*b), bounds))
                    best = min(best, time.perf_counter() - t)
                out.append({"kind": kind, "threads": threads, "bytes": nbytes, "seconds": best,
                            "gb_per_s": nbytes / best / 1e9})
    return out


from benchmarks.parallel import run_parallel  # (at the end: it uses the helpers above)

SCENARIOS = {"text": run_text, "image": run_image, "transformers": run_transformers, "multiturn": run_multiturn,
             "load": run_load, "bandwidth": run_bandwidth, "parallel": run_parallel}

from benchmarks.media_scenarios import MEDIA_SCENARIOS  # noqa: E402  (built on the helpers above)

SCENARIOS.update(MEDIA_SCENARIOS)
