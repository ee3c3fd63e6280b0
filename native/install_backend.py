"""Make this venv's llama-cpp-python and onnxruntime match a backend: default, cpu, cuda, metal or vulkan.

    python native/install_backend.py --backend cuda --cuda-archs "86;87;89" [--ort-package onnxruntime-gpu]

Called by `make serve/test BACKEND=...` (see native/README.md). It first looks at what is installed (the
ggml backend libraries inside llama_cpp/lib, the onnxruntime distribution) and does nothing when that
already matches, so the default path costs one Python start. Otherwise it rebuilds llama-cpp-python at the
installed (pinned) version from source with the backend's CMake flags, without pip's wheel cache (the cache
keys on the version, not on CMAKE_ARGS: a cached CPU wheel would silently come back), and swaps the
onnxruntime package (onnxruntime-gpu for cuda; the plain package elsewhere, which has CoreML on macOS).

  default  whatever pip builds for the pinned version: CPU on Linux, Metal on Apple Silicon; never rebuilds
  cpu      CPU only (on macOS: rebuilt with -DGGML_METAL=off)
  cuda     -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=<archs>; needs nvcc (CUDA toolkit)
  metal    -DGGML_METAL=on; macOS only
  vulkan   -DGGML_VULKAN=on; needs the Vulkan SDK (glslc, headers)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from find_ggml import find  # noqa: E402

GPU_LIBS = {"cuda", "metal", "vulkan"}  # ggml backend library suffixes that mean GPU support
ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-silicon", "onnxruntime-directml", "onnxruntime-openvino")


def installed_ggml_backends() -> set[str]:
    try:
        return set(find()[2])
    except LookupError:
        return set()


def installed_ort() -> str | None:
    for name in ORT_PACKAGES:
        try:
            md.version(name)
            return name
        except md.PackageNotFoundError:
            continue
    return None


def dist_name(spec: str) -> str:
    """Distribution name of a requirement or wheel path: 'onnxruntime_gpu-1.20-...whl' -> 'onnxruntime-gpu'."""
    if spec.endswith(".whl"):
        return Path(spec).name.split("-")[0].replace("_", "-").lower()
    for sep in "<>=!~[; ":
        spec = spec.split(sep)[0]
    return spec.strip().lower()


def wanted(backend: str, cuda_archs: str) -> tuple[set[str] | None, str | None]:
    """(GPU backend libraries llama_cpp/lib must hold, CMAKE_ARGS to rebuild with); None: keep what is there."""
    darwin = sys.platform == "darwin"
    if backend == "default":
        return None, None
    if backend == "cpu":
        return set(), "-DGGML_METAL=off" if darwin else ""
    if backend == "cuda":
        if darwin:
            raise SystemExit("install_backend: CUDA is not available on macOS; use BACKEND=metal")
        return {"cuda"}, f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={cuda_archs}"
    if backend == "metal":
        if not darwin:
            raise SystemExit("install_backend: Metal exists only on macOS; use BACKEND=cuda, vulkan or cpu")
        return {"metal"}, "-DGGML_METAL=on"
    if backend == "vulkan":
        return {"vulkan"}, "-DGGML_VULKAN=on"
    raise SystemExit(f"install_backend: unknown BACKEND {backend!r}; use default, cpu, cuda, metal or vulkan")


def check_toolchain(backend: str) -> None:
    if backend == "cuda" and not (os.environ.get("CUDACXX") or shutil.which("nvcc")):
        raise SystemExit("install_backend: BACKEND=cuda needs the CUDA toolkit: nvcc is not on PATH and CUDACXX is "
                         "unset (Jetson: export PATH=/usr/local/cuda/bin:$PATH)")
    if backend == "vulkan" and not shutil.which("glslc"):
        raise SystemExit("install_backend: BACKEND=vulkan needs the Vulkan SDK: glslc is not on PATH")


def pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="default")
    ap.add_argument("--cuda-archs", default="86;87;89")
    ap.add_argument("--ort-package", default="", help="onnxruntime distribution or wheel to install instead")
    ap.add_argument("--force", action="store_true", help="rebuild llama-cpp-python even when it looks right")
    args = ap.parse_args(argv)

    libs, cmake_args = wanted(args.backend, args.cuda_archs)
    have = installed_ggml_backends()
    if libs is not None and (args.force or (have & GPU_LIBS) != libs):
        check_toolchain(args.backend)
        version = md.version("llama-cpp-python")
        env = dict(os.environ, CMAKE_ARGS=cmake_args, FORCE_CMAKE="1")
        print(f"install_backend: rebuilding llama-cpp-python {version} for {args.backend} "
              f"(has {sorted(have & GPU_LIBS) or 'no GPU backend'}; CMAKE_ARGS={cmake_args!r})", flush=True)
        try:
            pip("install", "--force-reinstall", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
                f"llama-cpp-python=={version}", env=env)
        except subprocess.CalledProcessError:
            raise SystemExit(f"install_backend: building llama-cpp-python for {args.backend} failed (see the CMake "
                             "output above); the previously installed build is unchanged") from None
        have = installed_ggml_backends()
        if (have & GPU_LIBS) != libs:
            raise SystemExit(f"install_backend: llama-cpp-python was rebuilt but its ggml backends are {sorted(have)}")

    if args.backend == "default":
        return 0
    ort_spec = args.ort_package or ("onnxruntime-gpu" if args.backend == "cuda" else "onnxruntime")
    if args.backend == "cuda" and not args.ort_package and platform.machine() == "aarch64":
        print("install_backend: PyPI has no onnxruntime-gpu wheel for Linux aarch64 (Jetson); keeping the CPU "
              "onnxruntime. Install NVIDIA's Jetson wheel with ORT_PACKAGE=/path/to/onnxruntime_gpu-*.whl", flush=True)
        ort_spec = "onnxruntime"
    ort_name = dist_name(ort_spec)
    ort_have = installed_ort()
    if ort_name != ort_have:
        if ort_have:  # two onnxruntime distributions would overwrite each other's files
            pip("uninstall", "-y", ort_have)
        pip("install", ort_spec if ort_spec != ort_name else f"{ort_spec}>=1.18")
    print(f"install_backend: {args.backend}: ggml backends {sorted(installed_ggml_backends())}, "
          f"onnxruntime package {installed_ort()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
