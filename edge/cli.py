"""`glm-edge` command line: serve, chat, info, convert, make-reference.

Each subcommand parses its arguments here and calls one function elsewhere; errors of the glm-edge tree
are printed as one line (`glm-edge: error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.errors import GlmEdgeError


def _cmd_make_reference(args) -> None:
    from convert.reference import write_reference

    path = write_reference(
        args.out, size=args.size, seed=args.seed, text_layers=args.text_layers,
        vision_depth=args.vision_depth, progress=not args.quiet,
    )
    print(path)


def _cmd_convert(args) -> None:
    from convert.bundle_writer import convert_checkpoint

    path = convert_checkpoint(
        Path(args.hf_dir), Path(args.out_dir), quant=args.quant, vision_dtypes=args.vision,
        projector_quant=args.projector_quant, progress=not args.quiet,
    )
    print(path)


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
    conv.add_argument("hf_dir")
    conv.add_argument("out_dir")
    conv.add_argument("--quant", default="Q4_K_M", type=str.upper, help=f"decoder type: {', '.join(ALL_QUANTS)}")
    conv.add_argument("--vision", nargs="+", default=["fp32"], help="vision encoder variants: fp32 fp16 int8")
    conv.add_argument("--projector-quant", default="F16", type=str.upper, help="projector type: F32, F16, Q8_0")
    conv.add_argument("--quiet", action="store_true")
    conv.set_defaults(func=_cmd_convert)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
