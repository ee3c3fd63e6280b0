"""The projector (downsample + merger: ViT rows -> decoder embeddings) behind one interface, and the choice
of implementation: the native ggml library when it can run, else the numpy reference.

    class ProjectorLike(Protocol): hidden_size; __call__(vision_hidden [N, hidden]) -> [N/4, out_hidden]

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

from typing import Protocol

import numpy as np

from edge.errors import BundleError, NativeUnavailableError
from edge.options import ProjectorEngine
from edge.vision.native import NativeProjector
from edge.vision.numpy_projector import Projector

log = logging.getLogger(__name__)


class ProjectorLike(Protocol):
    hidden_size: int

    def __call__(self, vision_hidden: np.ndarray) -> np.ndarray: ...


def load_projector(path: str | Path, prefer: ProjectorEngine | str = ProjectorEngine.AUTO, device: str = "auto",
                   threads: int | None = None, library: str | Path | None = None) -> ProjectorLike:
    """A projector for `path` (see the module docstring); `library` overrides the native library's path."""
    try:
        prefer = ProjectorEngine(prefer)
    except ValueError:
        raise BundleError(f"projector implementation {prefer!r} is not one of "
                          f"{', '.join(ProjectorEngine.values())}") from None
    if prefer == ProjectorEngine.NUMPY:
        return Projector(path)
    try:
        projector = NativeProjector(path, device=device, threads=threads, library=library)
    except NativeUnavailableError as e:
        if prefer == ProjectorEngine.NATIVE:
            raise
        log.warning("projector: using the numpy fallback on the CPU because %s", e)
        return Projector(path)
    log.info("projector: native ggml on %s (%s), weights %s, %.1f MiB", projector.backend,
             projector.device_description, "/".join(sorted(set(projector.types.values()))),
             projector.weight_bytes / 2**20)
    return projector
