"""What `glm-edge serve [PATH]` / `glm-edge chat [PATH]` run: a bundle, an HF checkpoint, or the demo.

`resolve_model(path)`:
- no path: the demo bundle, built once from the built-in tiny reference checkpoint (random weights:
  gibberish text, but the whole pipeline runs) into `$XDG_CACHE_HOME/glm-edge/demo-<version>`
  (`~/.cache/...` without XDG_CACHE_HOME);
- a folder with `manifest.json`: that bundle;
- a folder with `config.json` and no manifest: an HF checkpoint, converted once (with progress) into
  `<folder>.glm-edge-<QUANT>` beside it, or under the cache folder when its parent is not writable; a
  conversion whose source config or converter version changed is redone; conversions at other quants beside
  it lend their vision encoder and projector;
- a Hub model id (`owner/name`, not an existing path): downloaded and converted once (edge/hub.py).
Builds happen in a temporary folder renamed into place when complete, so an interrupted build is never
taken for a finished one and two processes racing build twice at worst.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from glob import escape as glob_escape
from pathlib import Path

from edge import __version__
from edge.bundle import FORMAT_VERSION, MANIFEST
from edge.errors import BundleError

log = logging.getLogger(__name__)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glm-edge"


def _publish(tmp: Path, final: Path) -> Path:
    """Rename a finished build into place; if another process finished first, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / MANIFEST).is_file():
            raise BundleError(f"{final}: cannot move the finished build into place ({e})") from e
    return final


def demo_bundle(root: Path | None = None, progress: bool = True) -> Path:
    """The demo bundle's folder, built on first use."""
    from convert.bundle_writer import convert_checkpoint
    from convert.reference import write_reference

    root = Path(root) if root is not None else cache_root()
    final = root / f"demo-{__version__}-v{FORMAT_VERSION}"
    if (final / MANIFEST).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    log.info("building the demo bundle (tiny random-weight model) in %s", final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        ckpt = write_reference(tmp / "checkpoint", size="tiny", seed=0, progress=progress)
        bundle = tmp / "bundle"
        convert_checkpoint(ckpt, bundle, quant="F32", vision_dtypes=("fp32",), projector_quant="F32", progress=progress)
        staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        staged.rmdir()
        bundle.rename(staged)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _publish(staged, final)


def _checkpoint_fingerprint(hf_dir: Path) -> str:
    return hashlib.sha256((hf_dir / "config.json").read_bytes()).hexdigest()


def _is_current(bundle: Path, hf_dir: Path) -> bool:
    try:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (manifest.get("format_version") == FORMAT_VERSION
            and manifest.get("converter_version") == __version__
            and (manifest.get("source") or {}).get("config_sha256") == _checkpoint_fingerprint(hf_dir))


def converted_dir(hf_dir: Path, quant: str) -> Path:
    hf_dir = hf_dir.resolve()
    beside = hf_dir.parent / f"{hf_dir.name}.glm-edge-{quant.upper()}"
    if os.access(hf_dir.parent, os.W_OK) or beside.exists():
        return beside
    digest = hashlib.sha256(str(hf_dir).encode()).hexdigest()[:12]
    return cache_root() / "converted" / f"{hf_dir.name}-{digest}-{quant.upper()}"


def converted_bundle(hf_dir: Path, quant: str = "Q4_K_M", vision_dtypes=("fp32",), progress: bool = True) -> Path:
    """The bundle converted from `hf_dir`, converting (again) when missing or stale."""
    from convert.bundle_writer import convert_checkpoint

    final = converted_dir(hf_dir, quant)
    if _is_current(final, hf_dir):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s into %s (%s); this happens once", hf_dir, final, quant.upper())
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    siblings = [p for p in final.parent.glob(f"{glob_escape(hf_dir.resolve().name)}.glm-edge-*") if p != final]
    try:
        convert_checkpoint(hf_dir, tmp, quant=quant, vision_dtypes=vision_dtypes, progress=progress,
                           reuse_from=siblings)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # stale: replace it
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    return _publish(tmp, final)


def resolve_model(path: str | os.PathLike | None, quant: str = "Q4_K_M", progress: bool = True,
                  revision: str | None = None) -> Path:
    """A bundle folder for `path` (see the module doc); `revision` applies to a Hub model id."""
    from edge.hub import hub_bundle, is_hub_id

    if path is None:
        return demo_bundle(progress=progress)
    if is_hub_id(path):
        return hub_bundle(str(path), revision=revision, quant=quant, progress=progress)
    p = Path(path).expanduser()
    if (p / MANIFEST).is_file():
        return p
    if (p / "config.json").is_file():
        return converted_bundle(p, quant=quant, progress=progress)
    if not p.exists():
        raise BundleError(f"{p}: no such folder; give a glm-edge bundle, an HF checkpoint folder, a Hub model id "
                      "(owner/name) or nothing for the demo")
    raise BundleError(f"{p}: neither a glm-edge bundle (manifest.json) nor an HF checkpoint folder (config.json)")
