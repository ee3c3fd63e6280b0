"""Hub model ids (`zai-org/GLM-4.6V-Flash`) -> downloaded, verified snapshot -> cached glm-edge bundle.

    bundle_dir = hub_bundle("zai-org/GLM-4.6V-Flash", revision=None, quant="Q4_K_M")

- `is_hub_id(text)`: "owner/name" that is not an existing local path.
- The revision (branch, tag or commit; default `main`) is resolved to a commit with one API call, or from the
  local Hub cache's `refs/` when offline (`HF_HUB_OFFLINE=1`) or when the Hub cannot be reached.
- The bundle cache is keyed by repo, commit, quant and converter version:
  `<cache_root>/hub/<owner>--<name>/<commit>/<QUANT>-c<converter version>-v<bundle format>`. A current bundle
  is used without any download; nothing else of the snapshot is needed then.
- Otherwise huggingface_hub's `snapshot_download` fetches the checkpoint files into the standard Hub cache
  (`HF_HOME` / `HF_HUB_CACHE`; progress bars, `HF_TOKEN`, `HF_ENDPOINT`; a dropped connection resumes with an
  HTTP Range request, and files finished before a failed run are kept for the next one), every
  file is checked against its content hash (the cache names each blob by its ETag: the sha256 of an LFS file,
  the git blob sha1 of a small one), a corrupted blob is deleted and downloaded once more, and the snapshot
  is converted once. Bundles of the same commit at other quants lend their vision encoder and projector.
Errors: HubModelNotFoundError (repo or revision does not exist, or is private without a token),
HubDownloadError (offline and not cached, connection failure, a file that stays corrupted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from edge import __version__
from edge.bundle import FORMAT_VERSION, MANIFEST
from edge.errors import HubDownloadError, HubModelNotFoundError

log = logging.getLogger(__name__)

# What a glm-edge conversion reads from a checkpoint repo; README, images and other formats stay on the Hub.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_hub_id(text: str | os.PathLike | None) -> bool:
    """True for "owner/name" that does not name an existing local path (a local folder always wins)."""
    if text is None or not isinstance(text, str) or not _REPO_ID.match(text) or ".." in text:
        return False
    return not Path(text).expanduser().exists()


def bundle_dir(repo_id: str, commit: str, quant: str, root: Path | None = None) -> Path:
    """Where the bundle of (repo, commit, quant) for this converter version lives."""
    from edge.demo import cache_root

    base = (root or cache_root()) / "hub" / repo_id.replace("/", "--") / commit
    return base / f"{quant.upper()}-c{__version__}-v{FORMAT_VERSION}"


def _is_current(bundle: Path) -> bool:
    try:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("format_version") == FORMAT_VERSION and manifest.get("converter_version") == __version__


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit sha of `revision` (default "main"): asked of the Hub (huggingface_hub's `resolve_revision`,
    which records it in the cache's `refs/`), or read from those refs when offline or the Hub is unreachable."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError, RevisionResolutionError

    revision = revision or "main"
    if _COMMIT.match(revision):
        return revision
    try:
        return HfApi().resolve_revision(repo_id, revision=revision, local_files_only=offline()).resolved
    except RevisionNotFoundError as e:
        raise HubModelNotFoundError(f"{repo_id}: no revision {revision!r} on the Hub (a branch, tag or commit sha)") from e
    except RepositoryNotFoundError as e:
        raise HubModelNotFoundError(
            f"{repo_id}: no such model repo on the Hub (or it is private or gated: set HF_TOKEN to a token with access)"
        ) from e
    except (RevisionResolutionError, OSError) as e:
        hint = ("HF_HUB_OFFLINE is set; run once with network access (unset it) to download the model" if offline()
                else f"the Hub could not be reached ({e})")
        raise HubDownloadError(f"{repo_id}@{revision}: not in the local Hub cache and {hint}") from e


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    return _hash_into(h, path)


def _hash_into(h, path: Path) -> str:
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def corrupted_files(snapshot: Path) -> list[tuple[Path, str, str]]:
    """(snapshot file, expected, actual) for every file whose bytes do not hash to its cache blob's name.

    huggingface_hub stores each file as `blobs/<ETag>` (linked from `snapshots/<commit>/`): the sha256 of an LFS
    file, the git blob sha1 of a small one; the download itself checks only the size."""
    bad = []
    for file in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        blob = file.resolve()
        etag = blob.name
        if _SHA256.match(etag):
            actual = _hash_into(hashlib.sha256(), blob)
        elif _COMMIT.match(etag):
            actual = _git_blob_sha1(blob)
        else:  # no symlinks on this file system: the blob is not named by its hash, nothing to compare
            continue
        if actual != etag:
            bad.append((file, etag, actual))
    return bad


def _download(repo_id: str, commit: str, progress: bool) -> Path:
    import httpx2  # huggingface_hub's HTTP client: its transport errors (a dropped connection) end a download
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    try:
        return Path(snapshot_download(repo_id, revision=commit, allow_patterns=ALLOW_PATTERNS))
    except RevisionNotFoundError as e:
        raise HubModelNotFoundError(f"{repo_id}: no revision {commit!r} on the Hub") from e
    except RepositoryNotFoundError as e:
        raise HubModelNotFoundError(
            f"{repo_id}: no such model repo on the Hub (or it is private or gated: set HF_TOKEN)") from e
    except LocalEntryNotFoundError as e:
        hint = "HF_HUB_OFFLINE is set; unset it to download" if offline() else "check the network and run again"
        raise HubDownloadError(f"{repo_id}@{commit[:12]}: the checkpoint is not (completely) in the local Hub cache; {hint}") from e
    except (HfHubHTTPError, OSError, httpx2.HTTPError) as e:
        raise HubDownloadError(f"{repo_id}@{commit[:12]}: download failed ({e}); run again to resume it") from e
    finally:
        if not progress:
            enable_progress_bars()


def verified_snapshot(repo_id: str, commit: str, progress: bool = True) -> Path:
    """The snapshot folder of (repo, commit), downloaded or resumed as needed and every file hash-checked.

    A corrupted blob is deleted and downloaded once more (not offline); if it is still wrong, or offline,
    HubDownloadError names the file and both hashes."""
    snapshot = _download(repo_id, commit, progress)
    bad = corrupted_files(snapshot)
    if bad and not offline():
        for file, etag, actual in bad:
            log.warning("%s: content sha %s is not the Hub's %s; downloading it again", file.name, actual[:12], etag[:12])
            file.resolve().unlink(missing_ok=True)
            file.unlink(missing_ok=True)
        snapshot = _download(repo_id, commit, progress)
        bad = corrupted_files(snapshot)
    if bad:
        file, etag, actual = bad[0]
        for f, _, _ in bad:
            f.resolve().unlink(missing_ok=True)
            f.unlink(missing_ok=True)
        raise HubDownloadError(
            f"{repo_id}@{commit[:12]}: {file.name} is corrupted (content hash {actual[:16]}..., the Hub says "
            f"{etag[:16]}...); {len(bad)} bad file(s) removed from the cache, run again to download them"
        )
    return snapshot


def hub_bundle(repo_id: str, revision: str | None = None, quant: str = "Q4_K_M", vision_dtypes=("fp32",),
               progress: bool = True, root: Path | None = None) -> Path:
    """The bundle folder for a Hub model id (see the module doc): cached, or downloaded and converted once."""
    from convert.bundle_writer import convert_checkpoint

    commit = resolve_commit(repo_id, revision)
    final = bundle_dir(repo_id, commit, quant, root)
    if _is_current(final):
        return final
    snapshot = verified_snapshot(repo_id, commit, progress)
    final.parent.mkdir(parents=True, exist_ok=True)
    siblings = [p for p in final.parent.iterdir() if p != final and not p.name.startswith(".")]
    log.info("converting %s@%s into %s (%s); this happens once", repo_id, commit[:12], final, quant.upper())
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        convert_checkpoint(snapshot, tmp, quant=quant, vision_dtypes=vision_dtypes, progress=progress,
                           reuse_from=siblings)
        if final.exists():  # stale (an interrupted older publish): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_current(final):
            raise
    return final
