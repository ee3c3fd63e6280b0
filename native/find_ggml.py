"""Print where the installed llama-cpp-python keeps ggml's headers and shared libraries, as make variables.

    $ python native/find_ggml.py
    GGML_INCLUDE := /.../site-packages/include
    GGML_LIBDIR := /.../site-packages/llama_cpp/lib
    GGML_BACKENDS := cpu cuda

Used by native/Makefile; exits 1 with a message on stderr when the package, its `ggml.h` or its `libggml`
cannot be found (a wheel built without headers, for example). Only the standard library is imported, and
llama_cpp itself is located, not imported (importing it loads the libraries).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

LIB_NAMES = ("libggml.so", "libggml.dylib", "ggml.dll")


def find() -> tuple[Path, Path, list[str]]:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise LookupError("llama-cpp-python is not installed in this Python")
    pkg = Path(spec.origin).resolve().parent
    libdirs = [d for d in (pkg / "lib", pkg) if any((d / n).exists() for n in LIB_NAMES)]
    if not libdirs:
        raise LookupError(f"no libggml shared library under {pkg}/lib")
    includes = [d for d in (pkg.parent / "include", pkg / "include", pkg / "lib" / "include") if (d / "gguf.h").is_file()]
    if not includes:
        raise LookupError(f"llama-cpp-python at {pkg} was installed without ggml headers (ggml.h, gguf.h)")
    libdir = libdirs[0]
    backends = sorted({f.name.split(".")[0][len("libggml-"):] for f in libdir.glob("libggml-*")} - {"base"})
    return includes[0], libdir, backends


def main() -> int:
    try:
        include, libdir, backends = find()
    except LookupError as e:
        print(f"find_ggml: {e}", file=sys.stderr)
        return 1
    print(f"GGML_INCLUDE := {include}")
    print(f"GGML_LIBDIR := {libdir}")
    print(f"GGML_BACKENDS := {' '.join(backends)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
