"""`glm-edge` command line: serve, chat, info, doctor, convert, make-reference.

(Over 400 lines because it is mostly argparse declarations, one block per subcommand; the work is elsewhere.)

Each subcommand parses its arguments here and calls one function elsewhere; errors of the glm-edge tree
are printed as one line (`glm-edge: error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from edge.errors import BundleError, GlmEdgeError, InputError
from edge.options import Device, FlashAttn, KvType, ProjectorEngine, RuntimeOptions, Verify

log = logging.getLogger("glm-edge")


def _cmd_make_reference(args) -> None:
    from convert.reference import write_reference

    path = write_reference(
        args.out, size=args.size, seed=args.seed, text_layers=args.text_layers,
        vision_depth=args.vision_depth, progress=not args.quiet,
    )
    print(path)


def _cmd_convert(args) -> None:
    from convert.bundle_writer import convert_checkpoint
    from edge.hub import is_hub_id, resolve_commit, verified_snapshot

    hf_dir = Path(args.hf_dir)
    if is_hub_id(args.hf_dir):  # a Hub model id: the verified snapshot in the standard cache
        hf_dir = verified_snapshot(args.hf_dir, resolve_commit(args.hf_dir, args.revision), progress=not args.quiet)
    path = convert_checkpoint(
        hf_dir, Path(args.out_dir), quant=args.quant, vision_dtypes=args.vision,
        projector_quant=args.projector_quant, mmproj_quants=["F16"] if args.mmproj == [] else (args.mmproj or []), progress=not args.quiet,
    )
    print(path)


def _cmd_serve(args) -> None:
    import threading

    import uvicorn

    from edge.demo import resolve_model
    from edge.api.app import create_app
    from edge.api.service import ServerSettings, default_threads

    bundle = resolve_model(args.path, quant=args.quant, progress=not args.quiet, revision=args.revision)
    api_key = args.api_key or os.environ.get("GLM_EDGE_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model", args.host)
    if args.media_dir is not None and not Path(args.media_dir).is_dir():
        raise InputError(f"--media-dir {args.media_dir}: no such folder")
    if args.mcp_config is not None:
        from edge.chat.mcp_config import load_mcp_config

        load_mcp_config(args.mcp_config)  # a bad file is an error now, before the model loads
    settings = ServerSettings(
        bundle=bundle, runtime=_runtime_options(args, threads_default=default_threads()), model_name=args.model_name,
        api_key=api_key, cors_origins=tuple(args.cors_origin or ()),
        media_dir=Path(args.media_dir).resolve() if args.media_dir else None,
        allow_remote_media=args.allow_remote_media, remote_timeout=args.remote_timeout,
        max_images=args.max_images, max_image_bytes=int(args.max_image_mb * (1 << 20)),
        max_document_bytes=int(args.max_document_mb * (1 << 20)), max_video_bytes=int(args.max_video_mb * (1 << 20)),
        max_body_bytes=int(args.max_body_mb * (1 << 20)), max_queue=args.max_queue, serve_page=not args.no_page,
        mcp_config=Path(args.mcp_config) if args.mcp_config else None,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5))
    service = app.state.service
    failed = threading.Event()

    def stop_on_load_failure():
        service.loaded.wait()
        if service.status == "failed":
            failed.set()
            server.should_exit = True

    threading.Thread(target=stop_on_load_failure, daemon=True).start()
    print(f"glm-edge: serving {bundle} as {settings.model_name!r} on http://{args.host}:{args.port}", file=sys.stderr)
    server.run()
    if failed.is_set():
        raise BundleError(f"the model failed to load: {service.load_error}")


def _runtime_options(args, threads_default: int | None = None) -> RuntimeOptions:
    """RuntimeOptions from the runtime flags: each flag `--x-y` is the field `x_y`."""
    names = [n for n in RuntimeOptions.field_names() if hasattr(args, n)]
    options = RuntimeOptions().with_(**{n: getattr(args, n) for n in names})
    # refuse what cannot fit only when the user chose the context or KV type; defaults just warn
    explicit = args.ctx_size is not None or args.kv_type is not None
    options = options.with_(memory_check=explicit and not args.no_memory_check)
    return options if args.threads else options.with_(threads=threads_default)


def _load_runtime(args):
    from edge.demo import resolve_model
    from edge.runtime import Runtime

    bundle = resolve_model(args.bundle, quant=args.quant, progress=not args.quiet, revision=args.revision)
    return Runtime.load(bundle, _runtime_options(args))


def _split_chat_args(words: list[str]) -> tuple[str | None, str | None]:
    """`chat [BUNDLE] [PROMPT...]`: the first word is the bundle if it is an existing folder."""
    if words and Path(words[0]).expanduser().is_dir():  # a Hub id goes in --model (a prompt may contain "a/b")
        return words[0], " ".join(words[1:]) or None
    return None, " ".join(words) or None


def _read_image(path: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as e:
        raise InputError(f"cannot read image {path!r}: {e.strerror or e}") from e


def _cmd_chat(args) -> None:
    from edge.chat.results import ChatDelta, ChatDone

    args.bundle, prompt = _split_chat_args(args.words)
    if args.model:
        args.bundle = args.model
    host = None
    if args.mcp_config:
        from edge.mcp_setup import start_mcp_host

        host = start_mcp_host(args.mcp_config)
    try:
        rt = _load_runtime(args)
    except BaseException:
        if host is not None:
            host.close()
        raise
    color = sys.stdout.isatty() and not args.no_color
    dim, reset = ("\033[2m", "\033[0m") if color else ("", "")
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    sampling = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature),
                                   ("seed", args.seed)) if v is not None}

    doc_options = {k: v for k, v in (("pages", args.pages), ("page_tokens", args.page_tokens)) if v is not None}

    video_options = {k: v for k, v in (("fps", args.video_fps), ("max_frames", args.max_frames),
                                        ("max_video_tokens", args.max_video_tokens)) if v is not None}

    def events():
        if host is None:
            yield from rt.stream_chat(history, enable_thinking=args.thinking, **sampling)
            return
        from edge.chat.agent import AgentDone, ToolCallStep, ToolResultStep, describe_step, stream_agent
        from edge.mcp_setup import media_resolver
        from edge.media import MediaPolicy

        resolve = media_resolver(MediaPolicy(media_dir=Path(args.media_dir).resolve() if args.media_dir else None))
        for event in stream_agent(rt, history, host, enable_thinking=args.thinking, resolve=resolve,
                                  tool_choice=args.tool_choice, **sampling):
            if isinstance(event, (ToolCallStep, ToolResultStep)):
                yield describe_step(event)  # one line, printed as it happens
            elif isinstance(event, AgentDone):
                history[:] = event.history[:-1]  # the tool turns; the answer is appended below as usual
                yield ChatDone(event.finish_reason, event.done.output, event.usage, event.done.timings,
                               event.done.text, event.done.token_ids)
            elif isinstance(event, ChatDelta):
                yield event

    def turn(text: str, images: list[str], files: list[str] = (), videos: list[str] = ()) -> None:
        parts = [{"type": "file", "file": str(Path(f).expanduser()), **doc_options} for f in files]
        parts += [{"type": "video", "video": str(Path(v).expanduser()), **video_options} for v in videos]
        if host is not None:  # the agent names images by their bytes (handles), not by path
            parts += [{"type": "image", "image": _read_image(i)} for i in images]
        else:
            parts += [{"type": "image", "image": str(Path(i).expanduser())} for i in images]
        parts.append({"type": "text", "text": text})
        history.append({"role": "user", "content": parts if images or files or videos else text})
        in_reasoning = False
        done = None
        for event in events():
            if isinstance(event, str):
                sys.stdout.write(("\n" if in_reasoning else "") + f"{dim}{event}{reset}\n")
                in_reasoning = False
                sys.stdout.flush()
            elif isinstance(event, ChatDelta):
                if event.reasoning and not args.hide_reasoning:
                    if not in_reasoning:
                        sys.stdout.write(dim + ("" if color else "[reasoning] "))
                        in_reasoning = True
                    sys.stdout.write(event.reasoning)
                if event.content or event.tool_calls:
                    if in_reasoning:
                        sys.stdout.write(reset + ("\n" if not color else "\n\n"))
                        in_reasoning = False
                    sys.stdout.write(event.content)
                sys.stdout.flush()
            elif isinstance(event, ChatDone):
                done = event
        if in_reasoning:
            sys.stdout.write(reset + "\n")
        sys.stdout.write("\n")
        out = done.output
        for call in out.tool_calls:
            print(f"[tool call] {call.name}({call.arguments})")
        for box in out.boxes:
            px = ", ".join(f"{v:.0f}" for v in box.box_px) if box.box_px else "?"
            print(f"[box] {box.label or '(unlabelled)'}: 0..1000 {list(box.box_1000)} -> pixels [{px}] on image {box.image_index}")
        if args.stats:
            u, t = done.usage, done.timings
            print(f"{dim}[{u.prompt_tokens} prompt ({u.image_tokens} image, {u.cached_tokens} cached) + "
                  f"{u.completion_tokens} generated tokens; {t.decode_tokens_per_second(u.completion_tokens):.1f} tok/s; "
                  f"finish: {done.finish_reason}]{reset}", file=sys.stderr)
        history.append({"role": "assistant", "content": out.content,
                        **({"tool_calls": [c.to_openai() for c in out.tool_calls]} if out.tool_calls else {})})

    try:
        if prompt is not None:
            turn(prompt, args.image or [], args.file or [], args.video or [])
            return
        print("glm-edge chat: type a message; /image PATH attaches an image to the next message, /reset clears the "
              "conversation, /quit (or Ctrl-D) leaves.", file=sys.stderr)
        pending = list(args.image or [])
        pending_files = list(args.file or [])
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                print()
                return
            if not line:
                continue
            if line in ("/quit", "/exit"):
                return
            if line == "/reset":
                del history[1 if args.system else 0:]
                continue
            if line.startswith("/image "):
                pending.append(line[7:].strip())
                continue
            try:
                turn(line, pending, pending_files)
            except GlmEdgeError as e:
                history.pop()
                print(f"glm-edge: error: {e}", file=sys.stderr)
            pending, pending_files = [], []
    finally:
        rt.close()
        if host is not None:
            host.close()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _cmd_info(args) -> None:
    import json

    from edge.bundle import load_bundle
    from edge.engine.sampling import sampling_defaults

    bundle = load_bundle(args.bundle, verify="size")
    m = bundle.manifest
    backends = {}
    from edge.engine.llama import supports_gpu_offload

    backends["llama.cpp GPU offload"] = supports_gpu_offload()
    try:
        import onnxruntime

        backends["onnxruntime providers"] = onnxruntime.get_available_providers()
    except ImportError as e:  # pragma: no cover
        backends["onnxruntime"] = f"unavailable ({e})"
    files = [m["decoder"], m["projector"]] + [f for v in m["vision"].values() for f in v["files"]]
    if args.json:
        params, sources = sampling_defaults(m.get("generation") or {})
        defaults = {k: {"value": getattr(params, k), "source": s} for k, s in sources.items()}
        print(json.dumps({"path": str(bundle.path), "manifest": m, "backends": backends,
                          "sampling_defaults": defaults}, indent=2))
        return
    model = m.get("model", {})
    print(f"bundle        {bundle.path}")
    print(f"format        {m['format']} v{m['format_version']}, converter {m.get('converter_version')}, "
          f"created {m.get('created')}")
    print(f"source        {m.get('source', {}).get('architecture')} ({m.get('source', {}).get('folder')}), "
          f"config sha256 {str(m.get('source', {}).get('config_sha256'))[:16]}")
    print(f"model         text {model.get('text_layers')} layers x {model.get('text_hidden_size')}, "
          f"vocab {model.get('vocab_size')}, context {model.get('context_length')}; vision depth "
          f"{model.get('vision_depth')} x {model.get('vision_hidden_size')}")
    print(f"decoder       {m['decoder']['path']}  {m['decoder'].get('quant')}  {_human(m['decoder']['bytes'])}")
    print(f"projector     {m['projector']['path']}  {m['projector'].get('quant')}  {_human(m['projector']['bytes'])}")
    for dtype, variant in m["vision"].items():
        size = sum(f["bytes"] for f in variant["files"])
        print(f"vision        {dtype}: {', '.join(f['path'] for f in variant['files'])}  {_human(size)}")
    print(f"total         {_human(sum(f['bytes'] for f in files))}")
    params, sources = sampling_defaults(m.get("generation") or {})
    for key, source in sources.items():
        print(f"sampling      {key}={getattr(params, key)}  ({source})")
    for name, value in backends.items():
        print(f"backend       {name}: {value}")


def _cmd_doctor(args) -> None:
    import json

    from edge.doctor import doctor_report, format_report

    report = doctor_report()
    if args.bundle is not None:  # the memory plan of that bundle at 8K / 32K / 128K, per KV type
        from edge.bundle import load_bundle
        from edge.memory_plan import format_plan_table, plan_table

        bundle = load_bundle(args.bundle, verify="size")
        if args.json:
            report["memory_plan"] = plan_table(bundle)
        else:
            print(format_plan_table(bundle) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def build_parser() -> argparse.ArgumentParser:
    from convert.quantize import ALL_QUANTS

    parser = argparse.ArgumentParser(prog="glm-edge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    ref = sub.add_parser("make-reference", help="write a deterministic GLM-4.6V-layout HF checkpoint")
    ref.add_argument("out", help="output folder (must not exist)")
    ref.add_argument("--size", choices=["tiny", "wide"], default="tiny")
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--text-layers", type=int, default=None, help="decoder depth (wide default: 40)")
    ref.add_argument("--vision-depth", type=int, default=None, help="vision tower depth (wide default: 24)")
    ref.add_argument("--quiet", action="store_true")
    ref.set_defaults(func=_cmd_make_reference)

    conv = sub.add_parser("convert", help="convert an HF checkpoint folder into a glm-edge bundle")
    conv.add_argument("hf_dir", help="HF checkpoint folder or Hub model id (owner/name)")
    conv.add_argument("--revision", default=None, help="branch, tag or commit of a Hub model id")
    conv.add_argument("out_dir")
    conv.add_argument("--quant", default="Q4_K_M", type=str.upper, help=f"decoder type: {', '.join(ALL_QUANTS)}")
    conv.add_argument("--vision", nargs="+", default=["fp32"], help="vision encoder variants: fp32 fp16 int8")
    conv.add_argument("--projector-quant", default="F16", type=str.upper, help="projector type: F32, F16, Q8_0")
    conv.add_argument("--mmproj", nargs="*", type=str.upper, default=None, metavar="QUANT",
                      help="also write llama.cpp mmproj GGUFs (glm4v) of these types (F32, F16, Q8_0; "
                           "no type given: F16), for llama.cpp's own vision path / llama-server")
    conv.add_argument("--quiet", action="store_true")
    conv.set_defaults(func=_cmd_convert)

    _add_serve(sub)
    _add_chat(sub)

    info = sub.add_parser("info", help="print a bundle's manifest, file sizes and the backends available")
    info.add_argument("bundle", help="bundle folder")
    info.add_argument("--json", action="store_true", help="print everything as JSON")
    info.set_defaults(func=_cmd_info)

    doc = sub.add_parser("doctor", help="what this install can run on, per --device choice, and why not")
    doc.add_argument("bundle", nargs="?", default=None, help="also print this bundle's memory plan (8K/32K/128K)")
    doc.add_argument("--json", action="store_true", help="print the report as JSON")
    doc.set_defaults(func=_cmd_doctor)
    return parser


def _ctx_size(text: str) -> int:
    if text == "auto":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens or auto") from None


def _add_runtime_args(p) -> None:
    """Flags of RuntimeOptions; choices come from its enums."""
    d = RuntimeOptions()
    p.add_argument("--device", choices=Device.values(), default=d.device.value,
                   help="where the decoder runs (auto: GPU offload when this llama.cpp build has it)")
    p.add_argument("--ctx-size", type=_ctx_size, default=None,
                   help=f"context window in tokens (text + media tokens), or auto: the largest the memory plan fits "
                        f"(default {d.ctx_size})")
    p.add_argument("--no-memory-check", dest="no_memory_check", action="store_true",
                   help="load even when the memory plan says an explicit --ctx-size / --kv-type cannot fit")
    p.add_argument("--max-image-tokens", type=int, default=None,
                   help="cap every image's tokens (default: the preprocessor's maximum, as transformers); the "
                        "memory plan counts the largest image allowed")
    p.add_argument("--revision", default=None, help="branch, tag or commit when PATH is a Hub model id")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: serve: all cores but one; chat: all cores)")
    p.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=d.thinking,
                   help="reasoning on by default (a request can still choose)")
    p.add_argument("--parallel", type=int, default=d.parallel,
                   help="generations decoded together in one context (continuous batching; the KV cache of "
                        "--ctx-size is shared by all of them); default: 4 with GPU offload, 2 on a CPU")
    p.add_argument("--prefill-chunk", type=int, default=d.prefill_chunk,
                   help="prompt tokens (or media rows) admitted per step while other generations stream; alone, a "
                        "prompt prefills in full batches; default: 128 on a CPU, --batch-size with GPU offload")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="llama.cpp n_batch")
    p.add_argument("--ubatch-size", type=int, default=d.ubatch_size, help="llama.cpp n_ubatch (at most --batch-size)")
    p.add_argument("--kv-type", choices=KvType.values(), default=None,
                   help=f"KV cache type (default {d.kv_type}; auto: f16, or q8_0 when that fits a longer context)")
    p.add_argument("--flash-attn", choices=FlashAttn.values(), default=d.flash_attn.value)
    p.add_argument("--projector", choices=ProjectorEngine.values(), default=d.projector.value,
                   help="projector engine: ggml from the quantized GGUF (auto/native: least memory) or numpy "
                        "float32 (faster on x86 CPUs, 3.5-5.7x more memory)")
    p.add_argument("--verify", choices=Verify.values(), default=d.verify.value, help="bundle hash check at load")
    p.add_argument("--quant", default="Q4_K_M", type=str.upper,
                   help="decoder type when PATH is an HF checkpoint that must be converted first")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible API and the chat page",
                       description="Serve a bundle (or an HF checkpoint folder, converted once; or, without PATH, "
                                   "the tiny demo model) on an OpenAI-compatible HTTP API.")
    p.add_argument("path", nargs="?", default=None, help="bundle or HF checkpoint folder (default: demo bundle)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or env GLM_EDGE_API_KEY)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow browser requests from this origin (repeatable; default: no CORS)")
    p.add_argument("--media-dir", default=None, help="folder whose files requests may reference by path or file://")
    p.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image URLs (off by default)")
    p.add_argument("--remote-timeout", type=float, default=10.0, help="seconds allowed for one remote image")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="encoded size of one image")
    p.add_argument("--max-document-mb", type=float, default=64.0, help="encoded size of one PDF")
    p.add_argument("--max-video-mb", type=float, default=256.0, help="encoded size of one video")
    p.add_argument("--max-body-mb", type=float, default=96.0, help="request body size (a 64 MB PDF is ~86 MB in base64)")
    p.add_argument("--max-queue", type=int, default=16, help="requests waiting behind the running one (then 429)")
    p.add_argument("--model-name", default="glm-4.6v-flash", help="model id clients send")
    p.add_argument("--no-page", action="store_true", help="do not serve the chat page at /")
    p.add_argument("--mcp-config", default=None, metavar="FILE",
                   help='MCP servers whose tools requests may use ({"mcpServers": {...}}; started at launch)')
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_runtime_args(p)
    p.set_defaults(func=_cmd_serve)


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="chat in the terminal (one prompt, or interactive without one)",
                       description="glm-edge chat [BUNDLE] [PROMPT...] [--image a.png]: the first word is taken as "
                                   "the bundle when it is an existing folder; without a prompt, an interactive session.")
    p.add_argument("words", nargs="*", help="[BUNDLE] PROMPT")
    p.add_argument("--model", default=None, help="bundle or HF checkpoint folder (instead of the first word)")
    p.add_argument("--image", action="append", default=None, help="image file to attach (repeatable)")
    p.add_argument("--video", action="append", default=None, help="video file to attach (repeatable)")
    p.add_argument("--video-fps", type=float, default=None,
                   help="sampled frames per second of video (default: as transformers: 6/2/1 by clip length)")
    p.add_argument("--max-frames", type=int, default=None, help="most sampled frames per video")
    p.add_argument("--max-video-tokens", type=int, default=None, help="video token budget per video")
    p.add_argument("--file", action="append", default=None, help="PDF to attach, read as page images (repeatable)")
    p.add_argument("--pages", default=None, help='pages of each --file to read, e.g. "1-3,5" (default: all)')
    p.add_argument("--page-tokens", type=int, default=None, help="per-page token budget of each --file (default 1280)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--hide-reasoning", action="store_true", help="do not print the reasoning")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats", action="store_true", help="print token counts and speed after each answer")
    p.add_argument("--mcp-config", default=None, metavar="FILE",
                   help="MCP servers the model may call tools of (each call and result is shown)")
    p.add_argument("--media-dir", default=None,
                   help="with --mcp-config: folder whose files tool results may link to (default: none)")
    p.add_argument("--tool-choice", default="auto", metavar="CHOICE",
                   help="with --mcp-config, for the first model turn of each message: auto, required, none or a "
                        "tool's name (that call is forced)")
    p.add_argument("--no-color", action="store_true")
    _add_runtime_args(p)
    p.set_defaults(func=_cmd_chat)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Our own progress lines at INFO; llama.cpp's load/quantize dumps and onnxruntime's quantizer chatter only
    # with --verbose (llama-cpp-python prints llama.cpp's log when its logger's level admits it).
    logging.getLogger("edge").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    keep = None
    if not args.verbose:
        logging.getLogger("gguf").setLevel(logging.WARNING)
        if args.command in ("serve", "chat"):
            from edge.engine.llama import quiet_llama_log

            keep = quiet_llama_log()  # noqa: F841  (the C side holds only a pointer)
    try:
        args.func(args)
    except GlmEdgeError as e:
        print(f"glm-edge: error: {e}", file=sys.stderr)
        return 2
    except FileExistsError as e:
        print(f"glm-edge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
