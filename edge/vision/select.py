"""Pick the projector implementation: the native ggml library when it can run, else the numpy reference.

    projector = load_projector(bundle.projector_path, prefer="auto", device="auto", threads=None)

prefer: "auto" (native when usable, otherwise numpy with exactly one warning that says why), "native"
(native or `NativeUnavailableError`), "numpy" (always the numpy reference). device: the runtime's
--device choice (auto|cpu|metal|cuda, or another ggml backend family such as vulkan); it picks the ggml
backend the projector runs on. Both implementations have the same call interface. A broken projector
file raises `BundleError` either way: falling back would only fail again later.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge.errors import BundleError
from edge.vision.native import NativeProjector, NativeUnavailableError
from edge.vision.projector import Projector

log = logging.getLogger(__name__)

PREFER = ("auto", "native", "numpy")


def load_projector(path: str | Path, prefer: str = "auto", device: str = "auto", threads: int | None = None,
                   library: str | Path | None = None) -> Projector | NativeProjector:
    """A projector for `path` (see the module docstring); `library` overrides the native library's path."""
    if prefer not in PREFER:
        raise BundleError(f"projector implementation {prefer!r} is not one of {', '.join(PREFER)}")
    if prefer == "numpy":
        return Projector(path)
    try:
        projector = NativeProjector(path, device=device, threads=threads, library=library)
    except NativeUnavailableError as e:
        if prefer == "native":
            raise
        log.warning("projector: using the numpy fallback on the CPU because %s", e)
        return Projector(path)
    log.info("projector: native ggml on %s (%s), weights %s, %.1f MiB", projector.backend,
             projector.device_description, "/".join(sorted(set(projector.types.values()))),
             projector.weight_bytes / 2**20)
    return projector
