"""ctypes binding of the native ggml projector (`native/`, C API in `native/glm_edge_projector.h`).

`NativeProjector(path, device="auto", threads=None)` has the call interface of `edge.vision.numpy_projector.Projector`:
`__call__([N, hidden] float32) -> [N / merge^2, out_hidden] float32`, plus `hidden_size`, `out_hidden_size`,
`intermediate_size`, `merge`, `eps`, `types` and `path`; and `backend` (ggml's name for the device doing
the work: "CPU", "CUDA0", "MTL0", ...), `device_description`, `weight_bytes`, `weight_buffers` (ggml buffer types holding the weights: "CPU",
"CPU,AMX", "CUDA0", ...).

The shared library is `native/build/libglm_edge_projector.{so,dylib}` next to this package (a source or
editable install; `make native` builds it) or the file named by `$GLM_EDGE_NATIVE_LIB`. It links the ggml of
llama-cpp-python; `llama_cpp` is imported first so that both share one loaded ggml. Errors:
`NativeUnavailableError` (no library, wrong ABI, no such ggml device: the selector may fall back),
`BundleError` (the file is missing or wrong), `VisionError` (bad input or a failed computation).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

import numpy as np

from edge.errors import BundleError, NativeUnavailableError, VisionError

ABI_VERSION = 1
ENV_LIBRARY = "GLM_EDGE_NATIVE_LIB"
LIB_NAME = "libglm_edge_projector.dylib" if sys.platform == "darwin" else "libglm_edge_projector.so"
NATIVE_DIR = Path(__file__).resolve().parents[2] / "native"
_ERR_LEN = 1024


def default_library_path() -> Path:
    """$GLM_EDGE_NATIVE_LIB if set, else native/build/<lib> of this source tree."""
    env = os.environ.get(ENV_LIBRARY)
    return Path(env) if env else NATIVE_DIR / "build" / LIB_NAME


_c = ctypes
_SIGNATURES = {  # name: (restype, argtypes)
    "gep_abi_version": (_c.c_int, []),
    "gep_load": (_c.c_void_p, [_c.c_char_p, _c.c_char_p, _c.c_int, _c.c_char_p, _c.c_size_t]),
    "gep_run": (_c.c_int, [_c.c_void_p, _c.POINTER(_c.c_float), _c.c_int64, _c.POINTER(_c.c_float)]),
    "gep_last_error": (_c.c_char_p, [_c.c_void_p]),
    "gep_free": (None, [_c.c_void_p]),
    "gep_backend_name": (_c.c_char_p, [_c.c_void_p]),
    "gep_device_description": (_c.c_char_p, [_c.c_void_p]),
    "gep_hidden_size": (_c.c_int64, [_c.c_void_p]),
    "gep_out_hidden_size": (_c.c_int64, [_c.c_void_p]),
    "gep_intermediate_size": (_c.c_int64, [_c.c_void_p]),
    "gep_merge_size": (_c.c_int64, [_c.c_void_p]),
    "gep_layer_norm_eps": (_c.c_float, [_c.c_void_p]),
    "gep_weight_bytes": (_c.c_size_t, [_c.c_void_p]),
    "gep_weight_buffers": (_c.c_char_p, [_c.c_void_p]),
    "gep_chunk_rows": (_c.c_int64, [_c.c_void_p]),
    "gep_n_tensors": (_c.c_int, [_c.c_void_p]),
    "gep_tensor_name": (_c.c_char_p, [_c.c_void_p, _c.c_int]),
    "gep_tensor_type": (_c.c_char_p, [_c.c_void_p, _c.c_int]),
    "gep_list_devices": (_c.c_int, [_c.c_char_p, _c.c_size_t]),
}
_libs: dict[Path, ctypes.CDLL] = {}
_libs_lock = threading.Lock()


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """The native library with typed functions (loaded once per path); NativeUnavailableError if unusable."""
    lib_path = Path(path) if path is not None else default_library_path()
    with _libs_lock:
        if lib_path in _libs:
            return _libs[lib_path]
        if not lib_path.is_file():
            raise NativeUnavailableError(f"native projector library {lib_path} is not built (run `make native`)")
        try:
            import edge.engine.llama  # noqa: F401  (loads llama.cpp's ggml first: the library must share it)

            lib = ctypes.CDLL(str(lib_path))
        except (OSError, ImportError) as e:
            raise NativeUnavailableError(f"native projector library {lib_path} cannot be loaded: {e}") from e
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise NativeUnavailableError(f"{lib_path} lacks {name}; rebuild it with `make native`") from None
            fn.restype, fn.argtypes = restype, argtypes
        version = lib.gep_abi_version()
        if version != ABI_VERSION:
            raise NativeUnavailableError(f"{lib_path} has ABI version {version}, this binding needs {ABI_VERSION}; "
                                         "rebuild it with `make native`")
        _libs[lib_path] = lib
        return lib


class NativeProjector:
    """The projector graph on a ggml backend; same call interface as `edge.vision.numpy_projector.Projector`."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 library: str | Path | None = None):
        self.path = Path(path)
        self._lib = load_library(library)
        self._handle = None
        self._lock = threading.Lock()
        if not self.path.is_file():
            raise BundleError(f"{self.path}: projector file is missing")
        err = ctypes.create_string_buffer(_ERR_LEN)
        threads = int(threads or os.cpu_count() or 0)  # like the decoder; ggml's own default is 4
        handle = self._lib.gep_load(os.fsencode(self.path), device.encode(), threads, err, _ERR_LEN)
        if not handle:
            message = err.value.decode("utf-8", "replace") or "unknown error"
            if "requested but" in message or "no usable device" in message or "could not initialise" in message:
                raise NativeUnavailableError(f"native projector: {message}")
            raise BundleError(message)
        self._handle = handle
        lib, h = self._lib, handle
        self.device = device
        self.hidden_size = int(lib.gep_hidden_size(h))
        self.out_hidden_size = int(lib.gep_out_hidden_size(h))
        self.intermediate_size = int(lib.gep_intermediate_size(h))
        self.merge = int(lib.gep_merge_size(h))
        self.eps = float(lib.gep_layer_norm_eps(h))
        self.backend = lib.gep_backend_name(h).decode()
        self.device_description = lib.gep_device_description(h).decode()
        self.weight_bytes = int(lib.gep_weight_bytes(h))
        self.weight_buffers = lib.gep_weight_buffers(h).decode()
        self.chunk_rows = int(lib.gep_chunk_rows(h))
        self.types = {lib.gep_tensor_name(h, i).decode(): lib.gep_tensor_type(h, i).decode()
                      for i in range(lib.gep_n_tensors(h))}

    def __call__(self, vision_hidden: np.ndarray) -> np.ndarray:
        """[N, hidden] ViT output (merge-block row order) -> [N / merge^2, out_hidden] float32."""
        x = np.ascontiguousarray(vision_hidden, dtype=np.float32)
        group = self.merge**2
        if x.ndim != 2 or x.shape[1] != self.hidden_size or x.shape[0] % group or x.shape[0] == 0:
            raise VisionError(
                f"projector input has shape {list(x.shape)}, expected [N, {self.hidden_size}] with N a multiple of {group}"
            )
        out = np.empty((x.shape[0] // group, self.out_hidden_size), dtype=np.float32)
        fp = ctypes.POINTER(ctypes.c_float)
        with self._lock:
            if self._handle is None:
                raise VisionError(f"{self.path}: the native projector was closed")
            rc = self._lib.gep_run(self._handle, x.ctypes.data_as(fp), x.shape[0], out.ctypes.data_as(fp))
            if rc != 0:
                raise VisionError(f"native projector ({self.backend}): {self._lib.gep_last_error(self._handle).decode()}")
        return out

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._lib.gep_free(self._handle)
                self._handle = None

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self._lib.gep_free(self._handle)
            self._handle = None

    def __repr__(self) -> str:
        return f"NativeProjector({str(self.path)!r}, backend={self.backend!r}, types={sorted(set(self.types.values()))})"
