"""The README's per-quant memory table for the real model depth, planned with edge/memory_plan.py from measured
reduced-depth files (no machine here holds the real 40-layer model).

    python -m benchmarks.memory_table --convert benchmarks/results/convert_memory.json \
        --vision benchmarks/results/convert_memory_vision.json --bundle WIDE_BUNDLE [--text-layers 40]

Decoder file size at `--text-layers` = the measured file's non-layer tensors + that many times the mean measured
layer (llama.cpp's K-quant mixes vary a little by layer, so this is an estimate); vision encoder sizes come from
the real-depth export (`convert_memory --vision-only`); dims (heads, KV heads, FFN, vocabulary) from the
bundle's decoder GGUF with the layer count replaced. Prints a markdown table: per quant, the decoder file and
the planned total at 8K / 32K / 128K with an f16 KV cache, int8 vision encoder, ggml F16 projector, and images
capped at `--image-tokens`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

from edge.memory_plan import GIB, TABLE_CONTEXTS, decoder_dims, plan_memory


def decoder_bytes(row: dict, layers: int) -> int:
    split = row.get("decoder_tensor_bytes")
    if split is None:  # float files: every layer is the same size
        return 0
    per_layer = sum(split["layers"].values()) / len(split["layers"])
    return int(split["other"] + layers * per_layer)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--convert", type=Path, required=True)
    p.add_argument("--vision", type=Path, required=True)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle of the reduced-depth wide checkpoint")
    p.add_argument("--text-layers", type=int, default=40)
    p.add_argument("--vision-dtype", default="int8")
    p.add_argument("--image-tokens", type=int, default=1024)
    args = p.parse_args(argv)
    runs = json.loads(args.convert.read_text())["runs"]
    vision = {r["quant"].removeprefix("vision-"): sum(r["files"].values())
              for r in json.loads(args.vision.read_text())["runs"]}
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    base = decoder_dims(args.bundle / manifest["decoder"]["path"])
    manifest["vision"] = {d: {"files": [{"bytes": b}]} for d, b in vision.items()}
    fake = SimpleNamespace(path=args.bundle, manifest=manifest)
    print(f"| quant | decoder file ({args.text_layers} layers) | " +
          " | ".join(f"{c // 1024}K" for c in TABLE_CONTEXTS) + " |")
    print("|---|---|" + "---|" * len(TABLE_CONTEXTS))
    for row in runs:
        size = decoder_bytes(row, args.text_layers)
        if not size:
            continue
        dims = dataclasses.replace(base, n_layer=args.text_layers, weight_bytes=size)
        totals = [plan_memory(fake, c, "f16", vision_dtype=args.vision_dtype, dims=dims,
                              max_image_tokens=args.image_tokens).total for c in TABLE_CONTEXTS]
        print(f"| {row['quant']} | {size / GIB:.2f} GiB | " + " | ".join(f"{t / GIB:.1f} GiB" for t in totals) + " |")


if __name__ == "__main__":
    main()
