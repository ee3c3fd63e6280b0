"""`python -m benchmarks.pdf_fuzz`: feed PDFium a few hundred mutated PDFs through `PdfRenderer`.

Shows what untrusted PDF bytes do to the renderer: how many mutants render, how many are refused with
which DocumentError class, how many crash or hang the worker process, and that this process (the
stand-in for the server) survives all of them and still renders an intact PDF afterwards.

    python -m benchmarks.pdf_fuzz --count 300 --seed 0 --timeout 10 [--json out.json]

Seeds are made here: a Pillow PDF (JPEG pages of three sizes) and a hand-written PDF with text in a
standard font, curves, a Flate-compressed content stream, an RGB image XObject, an axial shading, soft-mask
transparency, a rotated page and an annotation with an appearance stream. Mutations: byte flips, numbers
replaced by extreme values, chunks deleted/duplicated, truncation, splices of two seeds, and shuffled
content-stream operators (recompressed, so they reach the renderer rather than the parser).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import random
import re
import sys
import time
import zlib

from PIL import Image, ImageDraw

from edge.vision.document import DocumentOptions
from edge.vision.image import ImageConfig
from edge.vision.pdf_worker import PdfRenderer

CONTENT = b"""q 0.9 0 0 0.9 30 30 cm
BT /F1 24 Tf 72 700 Td (Quarterly report: revenue 1,234) Tj 0 -30 Td /F2 12 Tf (x^2 + y^2 = r^2) Tj ET
1 0 0 RG 4 w 72 600 m 200 650 300 550 400 600 c S
0 0 1 rg 100 400 150 100 re f
/GS1 gs /Sh1 sh
q 120 0 0 120 300 300 cm /Im1 Do Q
[3 2] 0 d 0.5 g 72 200 m 500 200 l S
Q
"""


def build_pdf(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF from numbered object bodies (object i+1 = objects[i]; 1 is the catalog); `trailer` adds
    entries to the trailer dictionary (/Encrypt, /ID)."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


def stream(dictionary: bytes, data: bytes, compress: bool = True) -> bytes:
    if compress:
        data = zlib.compress(data)
        dictionary += b" /Filter /FlateDecode"
    return b"<< %s /Length %d >>\nstream\n" % (dictionary, len(data)) + data + b"\nendstream"


def handmade_pdf(content: bytes = CONTENT) -> bytes:
    pixels = bytes(v for y in range(64) for x in range(64) for v in (x * 4 % 256, y * 4 % 256, (x ^ y) * 4 % 256))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 /MediaBox [0 0 612 792] >>",
        b"<< /Type /Page /Parent 2 0 R /Contents 5 0 R /Resources 6 0 R /Annots [10 0 R] >>",
        b"<< /Type /Page /Parent 2 0 R /Contents 5 0 R /Resources 6 0 R /Rotate 90 /MediaBox [0 0 400 300] >>",
        stream(b"", content),
        (b"<< /Font << /F1 7 0 R /F2 8 0 R >> /XObject << /Im1 9 0 R >> /ExtGState << /GS1 12 0 R >> "
         b"/Shading << /Sh1 13 0 R >> >>"),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Times-Italic >>",
        stream(b"/Type /XObject /Subtype /Image /Width 64 /Height 64 /ColorSpace /DeviceRGB /BitsPerComponent 8",
               pixels),
        b"<< /Type /Annot /Subtype /Square /Rect [400 700 500 760] /AP << /N 11 0 R >> >>",
        stream(b"/Type /XObject /Subtype /Form /BBox [0 0 100 60]", b"0 1 0 RG 3 w 2 2 96 56 re S"),
        b"<< /Type /ExtGState /CA 0.5 /ca 0.5 /BM /Multiply >>",
        (b"<< /ShadingType 2 /ColorSpace /DeviceRGB /Coords [0 0 612 0] /Function << /FunctionType 2 "
         b"/Domain [0 1] /C0 [1 1 0] /C1 [0 1 1] /N 1 >> /Extend [false false] >>"),
    ]
    return build_pdf(objects)


def pillow_pdf() -> bytes:
    pages = []
    for (w, h), colour in (((612, 792), "white"), ((842, 595), "lightyellow"), ((300, 900), "lightblue")):
        im = Image.new("RGB", (w, h), colour)
        draw = ImageDraw.Draw(im)
        draw.text((20, 20), f"{w}x{h}", fill="black")
        draw.ellipse((40, 60, w - 40, h // 2), outline="red", width=5)
        pages.append(im)
    buf = io.BytesIO()
    pages[0].save(buf, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buf.getvalue()


EXTREME = [b"0", b"-1", b"2147483647", b"-2147483648", b"4294967296", b"99999999999999999999", b"1e308", b"0.0000001",
           b"65535", b"-0"]


def mutate(rng: random.Random, seeds: list[bytes]) -> tuple[str, bytes]:
    data = bytearray(rng.choice(seeds))
    kind = rng.choice(["flip", "number", "delete", "duplicate", "truncate", "splice", "content"])
    if kind == "flip":
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "number":
        spans = [m.span() for m in re.finditer(rb"-?\d+(?:\.\d+)?", bytes(data))]
        for a, b in sorted(rng.sample(spans, min(len(spans), rng.randint(1, 5))), reverse=True):
            data[a:b] = rng.choice(EXTREME)
    elif kind == "delete":
        a = rng.randrange(len(data))
        del data[a:a + rng.randint(1, 200)]
    elif kind == "duplicate":
        a = rng.randrange(len(data))
        chunk = data[a:a + rng.randint(1, 400)]
        b = rng.randrange(len(data))
        data[b:b] = chunk * rng.randint(1, 20)
    elif kind == "truncate":
        del data[rng.randint(20, len(data) - 1):]
    elif kind == "splice":
        other = rng.choice(seeds)
        a, b = rng.randrange(len(data)), rng.randrange(len(other))
        data = data[:a] + other[b:]
    else:
        tokens = CONTENT.split()
        for _ in range(rng.randint(1, 12)):
            i = rng.randrange(len(tokens))
            tokens[i] = rng.choice(EXTREME + tokens + [b"/Sh1", b"sh", b"Do", b"/Im1", b"q", b"Q", b"BI", b"ID", b"EI"])
        data = bytearray(handmade_pdf(b" ".join(tokens)))
    return kind, bytes(data)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="per-PDF render limit in the worker (s)")
    p.add_argument("--page-tokens", type=int, default=256)
    p.add_argument("--json", help="write the counts here")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    seeds = [handmade_pdf(), pillow_pdf()]
    options = DocumentOptions(page_tokens=args.page_tokens)
    outcomes: collections.Counter = collections.Counter()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    slowest = 0.0
    t0 = time.perf_counter()
    with PdfRenderer(ImageConfig(), timeout_s=args.timeout, cache_bytes=0) as renderer:
        baseline = renderer.render(seeds[0], options)
        for _ in range(args.count):
            kind, data = mutate(rng, seeds)
            start = time.perf_counter()
            try:
                doc = renderer.render(data, options)
                outcome = f"rendered ({len(doc.pages)} pages)" if doc.pages else "rendered"
            except Exception as e:  # noqa: BLE001 - a fuzz report counts every outcome, expected or not
                outcome = f"{type(e).__name__}: {str(e)[:60]}" if type(e).__name__ == "PdfRenderError" \
                    else type(e).__name__
            slowest = max(slowest, time.perf_counter() - start)
            outcomes[outcome.split(" (")[0] if outcome.startswith("rendered") else outcome] += 1
            by_kind[kind][outcome.split(":")[0].split(" (")[0]] += 1
        after = renderer.render(seeds[0], options)
        result = {
            "count": args.count, "seed": args.seed, "seconds": round(time.perf_counter() - t0, 1),
            "slowest_s": round(slowest, 2), "worker_crashes_or_timeouts": renderer.crashes,
            "outcomes": dict(outcomes.most_common()), "by_mutation": {k: dict(v) for k, v in sorted(by_kind.items())},
            "intact_pdf_after": [p.png for p in after.pages] == [p.png for p in baseline.pages],
        }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["intact_pdf_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
