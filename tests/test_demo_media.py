"""`edge.demo` (what `serve`/`chat` run without a bundle) and `edge.media` units (remote fetch limits with
httpx's MockTransport: no network)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from edge.bundle import MANIFEST
from edge.errors import BundleError, ImageTooLargeError, MediaAccessError
from edge.errors import MediaFetchError, TooManyImagesError
from edge.media import MediaPolicy
from tests.conftest import png_bytes

pytestmark = pytest.mark.timeout(300)


def test_demo_bundle_is_built_once(tmp_path, monkeypatch):
    from edge.demo import demo_bundle, resolve_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = resolve_model(None, progress=False)
    assert first.parent == tmp_path / "cache" / "glm-edge" and first.name.startswith("demo-")
    assert (first / MANIFEST).is_file()
    stamp = (first / MANIFEST).stat().st_mtime_ns
    assert demo_bundle(progress=False) == first and (first / MANIFEST).stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folders left behind


def test_hf_checkpoint_converted_once_beside_it(tiny_checkpoint, tmp_path):
    import shutil

    from edge.demo import converted_dir, resolve_model

    ckpt = tmp_path / "my-ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    bundle = resolve_model(ckpt, quant="F16", progress=False)
    assert bundle == converted_dir(ckpt, "F16") == tmp_path / "my-ckpt.glm-edge-F16"
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["decoder"]["quant"] == "F16"
    stamp = (bundle / MANIFEST).stat().st_mtime_ns
    assert resolve_model(ckpt, quant="F16", progress=False) == bundle
    assert (bundle / MANIFEST).stat().st_mtime_ns == stamp  # reused, not reconverted
    assert resolve_model(bundle) == bundle  # a bundle is used as is
    with pytest.raises(BundleError, match="neither"):
        resolve_model(tmp_path)
    with pytest.raises(BundleError, match="no such folder"):
        resolve_model(tmp_path / "missing")


def _run(coro):
    return asyncio.run(coro)


def test_remote_fetch_limits_with_mock_transport():
    png = png_bytes(40, 30)

    def handler(request: httpx.Request):
        if request.url.path == "/ok.png":
            return httpx.Response(200, content=png)
        if request.url.path == "/big.png":
            return httpx.Response(200, content=b"x" * 5000)
        if request.url.path == "/liar.png":
            return httpx.Response(200, headers={"content-length": "99999999"}, content=b"x")
        return httpx.Response(404)

    policy = MediaPolicy(allow_remote=True, max_image_bytes=4096)
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    assert _run(policy.fetch("https://img.test/ok.png", client)) == png
    with pytest.raises(ImageTooLargeError):
        _run(policy.fetch("https://img.test/big.png", client))
    with pytest.raises(ImageTooLargeError):
        _run(policy.fetch("https://img.test/liar.png", client))
    with pytest.raises(MediaFetchError, match="404"):
        _run(policy.fetch("https://img.test/missing.png", client))
    with pytest.raises(MediaAccessError, match="--allow-remote-media"):
        _run(MediaPolicy().fetch("https://img.test/ok.png", client))


def test_remote_fetch_time_limit():
    async def slow(request):
        await asyncio.sleep(5)
        return httpx.Response(200, content=b"late")

    policy = MediaPolicy(allow_remote=True, remote_timeout=0.2)
    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    with pytest.raises(MediaFetchError, match="longer than"):
        _run(policy.fetch("http://img.test/slow.png", client))


def test_resolve_replaces_parts_and_counts(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(30, 30))
    policy = MediaPolicy(media_dir=tmp_path, max_images=2)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "a.png", "detail": "low"}},
        {"type": "image", "image": (tmp_path / "a.png").as_uri(), "max_tokens": 9},
        {"type": "text", "text": "hi"}]}]
    out = _run(policy.resolve(messages))
    parts = out[0]["content"]
    assert parts[0] == {"type": "image", "image": png_bytes(30, 30), "min_tokens": None, "max_tokens": 256}
    assert parts[1]["max_tokens"] == 9 and parts[2] == {"type": "text", "text": "hi"}
    with pytest.raises(TooManyImagesError):
        _run(MediaPolicy(media_dir=tmp_path, max_images=1).resolve(messages))
