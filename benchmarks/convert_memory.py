"""Peak memory (RSS) of a whole bundle conversion per decoder quant, on a real-width checkpoint at the real
vocabulary, asserted under a limit (4 GiB by default).

    python -m benchmarks.convert_memory --checkpoint DIR [--quants F16 Q4_K_M ...] [--vision fp32] [--limit-gib 4]
    (DIR: `glm-edge make-reference DIR --size wide --text-layers 2 --vision-depth 2`)
    python -m benchmarks.convert_memory --checkpoint DIR --vision-only fp32 int8
    (DIR at the real vision depth: `... --text-layers 1 --vision-depth 24`; the vision encoder alone per dtype)

Each conversion runs in its own child process (decoder + projector F16 + vision encoder, no reuse), which
reports its own peak RSS (`VmHWM`: anonymous memory and mapped file pages alike) and wall time; conversions run
one after another. Writes `convert_memory.json` and `convert_memory.md` into --out and exits 1 when any peak
is over the limit. The decoder's per-layer tensors stream one at a time, so its peak does not grow with depth:
the 151552 x 4096 embedding and output tables set it; the vision encoder's graph is built in memory and grows
with --vision-depth (reported separately by `vision_encode`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(checkpoint: str, out: str, quant: str, vision: list[str]) -> None:
    """In the child: one conversion, then one JSON line with its peak RSS, time and file sizes."""
    from convert.bundle_writer import convert_checkpoint

    started = time.perf_counter()
    convert_checkpoint(Path(checkpoint), Path(out), quant=quant, vision_dtypes=vision, projector_quant="F16")
    seconds = time.perf_counter() - started
    files = {p.name: p.stat().st_size for p in Path(out).iterdir() if p.is_file() and not p.name.startswith(".")}
    print(json.dumps({"quant": quant, "peak_rss_bytes": _vm_hwm(), "seconds": round(seconds, 1), "files": files,
                      "decoder_tensor_bytes": _tensor_bytes(Path(out) / f"decoder-{quant}.gguf")}))


def _tensor_bytes(gguf_path: Path) -> dict:
    """Decoder tensor bytes split into per-layer (`blk.*`, by layer) and the rest (embedding, output, norm): what a
    deeper model's file size is extrapolated from."""
    from gguf import GGUFReader

    out: dict = {"other": 0, "layers": {}}
    for t in GGUFReader(str(gguf_path)).tensors:
        if t.name.startswith("blk."):
            layer = t.name.split(".")[1]
            out["layers"][layer] = out["layers"].get(layer, 0) + int(t.n_bytes)
        else:
            out["other"] += int(t.n_bytes)
    return out


def child_vision(checkpoint: str, out: str, dtype: str) -> None:
    """In the child: export the vision encoder alone (`dtype`), then one JSON line as `child` prints."""
    from convert.checkpoint import Checkpoint
    from convert.vision_onnx import export_vision

    started = time.perf_counter()
    files = export_vision(Checkpoint(checkpoint), out, dtype)
    seconds = time.perf_counter() - started
    print(json.dumps({"quant": f"vision-{dtype}", "peak_rss_bytes": _vm_hwm(), "seconds": round(seconds, 1),
                      "files": {f.name: f.stat().st_size for f in files}}))


def measure(checkpoint: Path, quant: str, vision: list[str], work: Path) -> dict:
    out = work / f"bundle-{quant}"
    mode = "--child-vision" if quant.startswith("vision-") else "--child"
    quant_arg = quant.removeprefix("vision-")
    cmd = [sys.executable, "-m", "benchmarks.convert_memory", mode, str(checkpoint), str(out), quant_arg, *vision]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion {quant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] in ("--child", "--child-vision"):
        if sys.argv[1] == "--child":
            child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
        else:
            child_vision(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.convert_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="real-width reference checkpoint (see above)")
    p.add_argument("--quants", nargs="+", default=list(QUANTS))
    p.add_argument("--vision", nargs="+", default=["fp32"])
    p.add_argument("--vision-only", nargs="+", default=None, metavar="DTYPE",
                   help="measure the vision encoder export alone for these dtypes (instead of --quants)")
    p.add_argument("--limit-gib", type=float, default=4.0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for the bundles (default: a temp dir)")
    args = p.parse_args(argv)
    config = json.loads((args.checkpoint / "config.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="convert-memory-", dir=args.work))
    rows = []
    try:
        for quant in [f"vision-{d}" for d in args.vision_only] if args.vision_only else args.quants:
            row = measure(args.checkpoint, quant, args.vision, work)
            rows.append(row)
            print(f"{quant:7s} peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB  {row['seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    limit = args.limit_gib * 2**30
    text = config["text_config"]
    result = {
        "checkpoint": {"text_layers": text["num_hidden_layers"], "hidden": text["hidden_size"],
                       "vocab": text["vocab_size"], "vision_depth": config["vision_config"]["depth"]},
        "vision": args.vision, "limit_bytes": int(limit), "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "convert_memory_vision" if args.vision_only else "convert_memory"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    c = result["checkpoint"]
    lines = [f"Conversion peak RSS ({c['text_layers']} text layers x {c['hidden']}, vocab {c['vocab']}, "
             f"vision depth {c['vision_depth']}, vision {' '.join(args.vision)}, projector F16)", "",
             "| quant | peak RSS | time | file |", "|---|---|---|---|"]
    for r in rows:
        main_file = sum(v for k, v in r["files"].items() if k.startswith(("decoder-", "vision-encoder-")) and
                        (r["quant"].startswith("vision-") or k.startswith("decoder-")))
        lines.append(f"| {r['quant']} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['seconds']:.0f} s | "
                     f"{main_file / 2**30:.2f} GiB |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    over = [r["quant"] for r in rows if r["peak_rss_bytes"] > limit]
    if over:
        print(f"peak RSS over {args.limit_gib} GiB: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
