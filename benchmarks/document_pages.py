"""`python -m benchmarks.document_pages BUNDLE`: a many-page PDF through the runtime, per KV cache type.

For each `--kv-types` value, one fresh process: renders a `--pages`-page text PDF (made here) at
`--page-tokens` per page with `PdfRenderer`, loads the bundle with a context just large enough, asks one
question about all pages (time to first token, split into render / preprocess / vision / prefill), then
a second question about the same pages (the KV prefix and image-embedding cache should make it cheap),
and reports peak RSS and the KV cache size (from the decoder GGUF's dimensions) at this context and at
the model's full context. Pages enter as image parts with `max_tokens` = the page's tokens, which is
exactly what a PDF `file` part expands to.

    python -m benchmarks.document_pages /path/to/bundle --pages 20 --kv-types f16 q8_0 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

KV_BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def text_pdf(pages: int) -> bytes:
    """A dense text page (55 lines of 10-pt Helvetica with numbers) repeated `pages` times."""
    from benchmarks.pdf_fuzz import build_pdf, stream

    lines = b" ".join(b"(%d. Revenue %d.%02d million in region %d; margin %d.%d%%, up %d bps year on year.) Tj 0 -13 Td"
                      % (i, 100 + i * 7, i * 13 % 100, i % 9, 10 + i % 7, i % 10, 5 * i) for i in range(55))
    kids = b" ".join(b"%d 0 R" % (4 + i) for i in range(pages))
    page = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R /Resources << /Font << /F1 "
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>")
    return build_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
                      stream(b"", b"BT /F1 10 Tf 40 760 Td " + lines + b" ET")] + [page] * pages)


def kv_bytes_per_token(decoder: Path, kv_type: str) -> float:
    """K and V for every layer: 2 * layers * kv_heads * head_dim values per token."""
    import gguf

    reader = gguf.GGUFReader(str(decoder))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def value(key):
        field = reader.fields[f"{arch}.{key}"]
        return int(field.parts[field.data[0]][0])

    layers, heads, kv_heads = value("block_count"), value("attention.head_count"), value("attention.head_count_kv")
    head_dim = value("attention.key_length") if f"{arch}.attention.key_length" in reader.fields \
        else value("embedding_length") // heads
    return 2 * layers * kv_heads * head_dim * KV_BYTES_PER_VALUE[kv_type]


def child(args) -> dict:
    from edge.runtime import Runtime
    from edge.vision.document import DocumentOptions
    from edge.vision.image import ImageConfig
    from edge.vision.pdf_worker import PdfRenderer

    manifest = json.loads((Path(args.bundle) / "manifest.json").read_text())
    config = ImageConfig.from_preprocessor_config(manifest["preprocessor"])
    data = text_pdf(args.pages)
    t0 = time.perf_counter()
    with PdfRenderer(config) as renderer:
        doc = renderer.render(data, DocumentOptions(page_tokens=args.page_tokens))
    render_s = time.perf_counter() - t0
    n_ctx = (doc.n_tokens + 2 * args.pages + 512 + 255) // 256 * 256  # pages + their markers + question + answer
    rt = Runtime.load(args.bundle, device="cpu", vision_dtype=args.vision_dtype, ctx_size=n_ctx,
                      threads=args.threads, kv_type=args.kv_type, flash_attn="on")
    pages = [{"type": "image", "image": p.png, "max_tokens": p.n_tokens} for p in doc.pages]
    turns = []
    for question in ("Summarise the revenue figures across all pages.", "Which region has the highest margin?"):
        messages = [{"role": "user", "content": pages + [{"type": "text", "text": question}]}]
        done = rt.chat(messages, max_tokens=1, temperature=0.0, repetition_penalty=1.0, enable_thinking=False)
        t = done.timings
        turns.append({"first_token_s": round(t.first_token if t.first_token > 0 else
                                             t.preprocess + t.vision + t.prefill, 3),
                      "preprocess_s": round(t.preprocess, 3), "vision_s": round(t.vision, 3),
                      "prefill_s": round(t.prefill, 3), "prompt_tokens": done.usage.prompt_tokens,
                      "image_tokens": done.usage.image_tokens, "cached_tokens": done.usage.cached_tokens})
    decoder = Path(args.bundle) / manifest["decoder"]["path"]
    per_token = kv_bytes_per_token(decoder, args.kv_type)
    rt.close()
    return {"kv_type": args.kv_type, "pages": len(doc.pages), "page_tokens": args.page_tokens,
            "tokens_per_page": [p.n_tokens for p in doc.pages][:3], "image_tokens": doc.n_tokens,
            "render_s": round(render_s, 3), "n_ctx": n_ctx, "turns": turns,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "kv_mib_at_n_ctx": round(per_token * n_ctx / 2**20, 1),
            "kv_gib_at_full_context": round(per_token * manifest["model"]["context_length"] / 2**30, 2),
            "text_layers": manifest["model"]["text_layers"], "threads": args.threads}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--pages", type=int, default=20)
    p.add_argument("--page-tokens", type=int, default=1280)
    p.add_argument("--kv-types", nargs="+", default=["f16", "q8_0"], choices=sorted(KV_BYTES_PER_VALUE))
    p.add_argument("--kv-type", help=argparse.SUPPRESS)  # set in the child process
    p.add_argument("--vision-dtype", default="int8")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    if args.kv_type:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for kv in args.kv_types:
        cmd = [sys.executable, "-m", "benchmarks.document_pages", args.bundle, "--pages", str(args.pages),
               "--page-tokens", str(args.page_tokens), "--kv-type", kv, "--vision-dtype", args.vision_dtype,
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
