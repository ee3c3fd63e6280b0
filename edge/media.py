"""Where request images may come from: the server's media policy, applied before anything is decoded.

`MediaPolicy.resolve(messages)` replaces every image part (`image_url` or `image`) of OpenAI-shaped message
dicts with `{"type": "image", "image": <bytes>, "min_tokens", "max_tokens"}` (what `edge.chat.template` takes)
and the `file_data` of every file part (a PDF) and the url of every video part (`video_url` or `video`) with
their bytes (what `edge.vision.file_parts` and the template take), enforcing:
- at most `max_images` images per request (400 `too_many_images`) and `max_image_bytes` each (413);
  `max_document_bytes` for each document, `max_video_bytes` for each video;
- `data:` URLs: decoded here (bad base64 -> 400 `invalid_image`);
- local files (a path or `file://` URL): only with a media folder; a relative path is taken inside it; the
  real path (symlinks resolved) must lie inside the folder's real path, so `..` traversal and symlinks
  pointing out are refused alike (403 `media_access_denied`); only regular files are read, opened without
  following a final symlink and without blocking (FIFOs, devices refused);
- `http(s)://`: only with `allow_remote`; fetched with httpx, a total time limit, at most
  `max_image_bytes` (streamed, counted), at most 3 redirects; failures are 400 `media_fetch_failed`;
- any other scheme: 403.
Everything else about the bytes (format, size in pixels, aspect ratio) is checked by `edge.vision.image` later.
"""

from __future__ import annotations

import asyncio
import os
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ImageError, ImageTooLargeError, MediaAccessError, MediaFetchError, TooManyImagesError
from edge.vision.image import read_source
from edge.chat.template import DETAIL_MAX_TOKENS, VIDEO_KNOBS
from edge.vision.file_parts import file_source, is_file_part


@dataclass(frozen=True)
class ImageSpec:
    url: str
    min_tokens: int | None
    max_tokens: int | None


def _video_url(part: dict) -> tuple[str, dict] | None:
    """(url, knobs) of a video part that names its clip by URL (bytes from the Python API pass through)."""
    if part.get("type") == "video_url":
        spec = part.get("video_url") or {}
        spec = {"url": spec} if isinstance(spec, str) else spec
        return spec.get("url") or "", {k: spec[k] for k in VIDEO_KNOBS if spec.get(k) is not None}
    if part.get("type") == "video" and isinstance(part.get("video"), str):
        return part["video"], {k: part[k] for k in VIDEO_KNOBS if part.get(k) is not None}
    return None


def _image_spec(part: dict) -> ImageSpec | None:
    kind = part.get("type")
    if kind == "image_url":
        spec = part.get("image_url") or {}
        detail = spec.get("detail") or "auto"
        max_tokens = spec.get("max_tokens") or DETAIL_MAX_TOKENS.get(detail)
        return ImageSpec(spec.get("url", ""), spec.get("min_tokens"), max_tokens)
    if kind == "image":
        return ImageSpec(part.get("image", ""), part.get("min_tokens"), part.get("max_tokens"))
    return None


@dataclass(frozen=True)
class MediaPolicy:
    media_dir: Path | None = None
    allow_remote: bool = False
    max_images: int = 16
    max_image_bytes: int = 20 << 20
    max_document_bytes: int = 64 << 20
    max_video_bytes: int = 256 << 20
    remote_timeout: float = 10.0
    max_redirects: int = 3

    def count(self, messages: list[dict]) -> int:
        return sum(1 for m in messages if isinstance(m.get("content"), list)
                   for p in m["content"] if _image_spec(p) is not None)

    async def resolve(self, messages: list[dict], http_client: Any = None) -> list[dict]:
        """Messages with every image part replaced by its bytes (see the module doc)."""
        n = self.count(messages)
        if n > self.max_images:
            raise TooManyImagesError(f"the request holds {n} images; this server accepts at most {self.max_images} "
                                     "per request (--max-images)")
        out = []
        for msg in messages:
            content = msg.get("content")
            if not isinstance(content, list):
                out.append(msg)
                continue
            parts = []
            for part in content:
                if is_file_part(part):
                    source, _ = file_source(part)
                    spec = part["file"] if isinstance(part["file"], dict) else {}
                    data = await self.fetch(source, http_client, self.max_document_bytes) if isinstance(source, str) \
                        else bytes(source)
                    parts.append({"type": "file", "file": {**spec, "file_data": data}})
                    continue
                video = _video_url(part)
                if video is not None:
                    data = await self.fetch(video[0], http_client, self.max_video_bytes)
                    parts.append({"type": "video", "video": data, **video[1]})
                    continue
                spec = _image_spec(part)
                if spec is None:
                    parts.append(part)
                    continue
                data = await self.fetch(spec.url, http_client)
                parts.append({"type": "image", "image": data, "min_tokens": spec.min_tokens, "max_tokens": spec.max_tokens})
            out.append({**msg, "content": parts})
        return out

    async def fetch(self, url: str, http_client: Any = None, max_bytes: int | None = None) -> bytes:
        max_bytes = max_bytes or self.max_image_bytes
        scheme = url.split(":", 1)[0].lower() if ":" in url[:12] and not _looks_like_windows_path(url) else ""
        if scheme == "data":
            return await asyncio.to_thread(read_source, url, max_bytes=max_bytes)
        if scheme in ("http", "https"):
            if not self.allow_remote:
                raise MediaAccessError(f"remote image URLs are refused ({url[:80]!r}); send the image as a data: URL, "
                                       "or start the server with --allow-remote-media")
            return await self._fetch_remote(url, http_client, max_bytes)
        if scheme in ("", "file"):
            return await asyncio.to_thread(self.read_local, url, max_bytes)
        raise MediaAccessError(f"image URL scheme {scheme!r} is not supported; use data:, a path under --media-dir, "
                               "or http(s) with --allow-remote-media")

    # --- local files ------------------------------------------------------------------------------

    def local_path(self, url: str) -> Path:
        """The real path a local reference points to, if the policy allows it (else MediaAccessError)."""
        if self.media_dir is None:
            raise MediaAccessError("local image paths are refused: the server has no media folder "
                                   "(start it with --media-dir DIR, or send the image as a data: URL)")
        raw = url
        if url[:7].lower() == "file://":
            parsed = urllib.parse.urlsplit(url)
            if parsed.netloc not in ("", "localhost"):
                raise MediaAccessError(f"file:// URL with host {parsed.netloc!r}; only local files are read")
            raw = urllib.parse.unquote(parsed.path)
        if "\x00" in raw:
            raise MediaAccessError("image path contains a NUL byte")
        root = Path(os.path.realpath(self.media_dir))
        candidate = Path(raw)
        if not candidate.is_absolute():
            candidate = root / candidate
        real = Path(os.path.realpath(candidate))
        if real != root and root not in real.parents:
            raise MediaAccessError(f"image path {raw[:200]!r} resolves outside the media folder; only files under "
                                   "--media-dir are readable (symlinks are followed before this check)")
        return real

    def read_local(self, url: str, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or self.max_image_bytes
        real = self.local_path(url)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as e:
            raise ImageError(f"no image file {url[:200]!r} under the media folder") from e
        except OSError as e:
            raise MediaAccessError(f"cannot open image file {url[:200]!r}: {e.strerror}") from e
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise MediaAccessError(f"{url[:200]!r} is not a regular file")
            if st.st_size > limit:
                raise ImageTooLargeError(f"image file is {st.st_size} bytes; the limit is {limit}")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageTooLargeError(f"image file is over {limit} bytes")
        return data

    # --- remote -----------------------------------------------------------------------------------

    async def _fetch_remote(self, url: str, http_client: Any, max_bytes: int | None = None) -> bytes:
        limit = max_bytes or self.max_image_bytes
        import httpx

        own = http_client is None
        client = http_client or httpx.AsyncClient(follow_redirects=True, max_redirects=self.max_redirects)

        async def download() -> bytes:
            async with client.stream("GET", url, timeout=self.remote_timeout) as resp:
                if resp.status_code != 200:
                    raise MediaFetchError(f"fetching {url[:120]!r} returned HTTP {resp.status_code}")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise ImageTooLargeError(f"{url[:120]!r} is {declared} bytes; the limit is {limit}")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ImageTooLargeError(f"{url[:120]!r} is over {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)

        try:
            return await asyncio.wait_for(download(), self.remote_timeout)
        except asyncio.TimeoutError as e:
            raise MediaFetchError(f"fetching {url[:120]!r} took longer than {self.remote_timeout:g} s") from e
        except httpx.HTTPError as e:
            raise MediaFetchError(f"fetching {url[:120]!r} failed: {type(e).__name__}: {e}") from e
        finally:
            if own:
                await client.aclose()


def _looks_like_windows_path(url: str) -> bool:
    return len(url) > 2 and url[1] == ":" and url[0].isalpha() and url[2] in "\\/"
