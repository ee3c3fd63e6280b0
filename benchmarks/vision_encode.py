"""Vision encode time and peak memory: our ONNX encoder (fp32 / fp16 / int8) + projector against
transformers' fp32 vision tower, on a real-width reference checkpoint, for 448x448 and 1024x768 images.

    python -m benchmarks.vision_encode [--checkpoint DIR] [--vision-depth 2] [--reps 3] [--threads N]

Each engine runs in its own subprocess (so peak RSS is its own); times are medians of --reps runs after one
warm-up, all in one invocation, and reported as ratios to transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES = {"448x448": (448, 448), "1024x768": (1024, 768)}
ENGINES = ("onnx-fp32", "onnx-fp16", "onnx-int8", "transformers-fp32")


def _image(width: int, height: int) -> bytes:
    from benchmarks.prepare import image_png

    return image_png(width, height, seed=1)


def run_engine(engine: str, checkpoint: Path, export_dir: Path, reps: int, threads: int) -> dict:
    """In this (child) process: load one engine, time it on every image, report medians and peak RSS."""
    from edge.vision.image import ImageConfig, prepare_image

    config = ImageConfig.from_preprocessor_config(json.loads((checkpoint / "preprocessor_config.json").read_text()))
    prepared = {name: prepare_image(_image(*size), config) for name, size in IMAGES.items()}
    if engine.startswith("onnx"):
        from edge.vision.projector import load_projector
        from edge.vision.encoder import VisionEncoder, image_embeddings

        base_rss = _rss_mb()
        encoder = VisionEncoder(export_dir / f"vision-encoder-{engine.split('-')[1]}.onnx", provider="cpu", threads=threads)
        projector = load_projector(export_dir / "projector-F16.gguf", device="cpu", threads=threads)
        encode = lambda im: image_embeddings(encoder, projector, im.pixel_patches, im.grid_thw)  # noqa: E731
    else:
        import torch
        from transformers import Glm4vForConditionalGeneration

        torch.set_num_threads(threads)
        base_rss = _rss_mb()
        model = Glm4vForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()

        def encode(im):
            with torch.no_grad():
                pix = torch.from_numpy(im.pixel_patches.copy())
                return model.model.get_image_features(pix, torch.tensor([list(im.grid_thw)])).pooler_output
    out = {"engine": engine, "images": {}}
    for name, im in prepared.items():
        encode(im)  # warm-up (graph optimisation, caches)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            encode(im)
            times.append(time.perf_counter() - start)
        out["images"][name] = {"patches": int(im.pixel_patches.shape[0]), "median_s": statistics.median(times),
                               "runs_s": times}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["base_rss_mb"] = base_rss
    return out


def export(checkpoint: Path, export_dir: Path) -> None:
    """The ONNX variants and the F16 projector, written before any engine is measured."""
    from convert.checkpoint import Checkpoint
    from convert.projector_gguf import export_projector
    from convert.vision_onnx import export_vision

    ckpt = Checkpoint(checkpoint)
    for engine in ENGINES:
        if engine.startswith("onnx"):
            export_vision(ckpt, export_dir, engine.split("-")[1])
    export_projector(ckpt, export_dir, "F16")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def table(results: list[dict]) -> str:
    ref = next(r for r in results if r["engine"] == "transformers-fp32")
    lines = ["| engine | " + " | ".join(f"{n} (s) | vs transformers" for n in IMAGES) + " | peak RSS (MB) |",
             "|---|" + "---|---|" * len(IMAGES) + "---|"]
    for r in results:
        cells = []
        for name in IMAGES:
            t = r["images"][name]["median_s"]
            cells += [f"{t:.3f}", f"{t / ref['images'][name]['median_s']:.2f}x"]
        lines.append(f"| {r['engine']} | " + " | ".join(cells) + f" | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vision_encode", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="a wide reference checkpoint (made if absent)")
    p.add_argument("--vision-depth", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--child", nargs=2, metavar=("ENGINE", "EXPORT_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_engine(args.child[0], args.checkpoint, Path(args.child[1]), args.reps, args.threads)))
        return 0
    if args.checkpoint is None:
        from convert.reference import write_reference

        args.checkpoint = Path(tempfile.gettempdir()) / f"glm-edge-wide-v{args.vision_depth}"
        if not args.checkpoint.exists():
            write_reference(args.checkpoint, size="wide", text_layers=1, vision_depth=args.vision_depth, progress=True)
    results = []
    with tempfile.TemporaryDirectory() as export_dir:
        export(args.checkpoint, Path(export_dir))
        for engine in ENGINES:
            cmd = [sys.executable, "-m", "benchmarks.vision_encode", "--checkpoint", str(args.checkpoint),
                   "--reps", str(args.reps), "--threads", str(args.threads), "--child", engine, export_dir]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{engine}: " + ", ".join(f"{n} {v['median_s']:.3f}s" for n, v in results[-1]["images"].items()),
                  file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vision_encode.json").write_text(json.dumps(results, indent=2))
    text = table(results)
    (args.out / "vision_encode.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
