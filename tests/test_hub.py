"""Hub model id -> bundle (edge/hub.py) against a local Hub emulator (tests/hub_emulator.py): fresh download and
conversion, reuse without network, a download cut halfway and resumed, a failed run whose finished files are
kept, corrupted files (served and on disk),
offline with and without a cache, wrong revision / repo, and a second quant reusing the vision encoder.

Each scenario runs `hub_bundle` in a child process: huggingface_hub reads HF_ENDPOINT / HF_HOME /
HF_HUB_OFFLINE when imported. The child lowers huggingface_hub's 10 MB download chunk to 64 KB so that the
tiny checkpoint's 3 MB shards are written (and resumable) in several pieces, as the real 5 GB shards are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.bundle import load_bundle
from edge.hub import is_hub_id
from tests.hub_emulator import HubEmulator

REPO = "zai-org/GLM-Tiny"
SHARD = "model-00001-of-00002.safetensors"
ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys
import huggingface_hub.constants as c
c.DOWNLOAD_CHUNK_SIZE = 64 << 10
from edge.errors import GlmEdgeError
from edge.hub import hub_bundle
try:
    print(hub_bundle(sys.argv[1], revision=sys.argv[2] or None, quant=sys.argv[3], progress=False))
except GlmEdgeError as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)
"""

RESOLVE = """
import sys
from edge.demo import resolve_model
print(resolve_model(sys.argv[1], quant=sys.argv[3], progress=False, revision=sys.argv[2] or None))
"""


@pytest.fixture(scope="module")
def source(tiny_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub-src") / "GLM-Tiny"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "README.md").write_text("a model card; not downloaded\n")
    return folder


@pytest.fixture
def hub(source):
    with HubEmulator({REPO: source}) as emulator:
        yield emulator


@pytest.fixture
def env(tmp_path):
    return {"HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def run(hub, env, repo=REPO, revision="", quant="F32", offline=False, endpoint=None, child=CHILD):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    full.update(env, PYTHONPATH=str(ROOT), HF_ENDPOINT=endpoint or hub.url, HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        full["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", child, repo, revision, quant], env=full, capture_output=True,
                          text=True, timeout=300)


def ok(proc) -> Path:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def snapshot(env, hub) -> Path:
    return Path(env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / hub.commit(REPO)


def gets(hub, name):
    return [(m, p, r) for m, p, r in hub.requests if m == "GET" and p.endswith("/" + name)]


def test_hub_ids():
    assert is_hub_id("zai-org/GLM-4.6V-Flash") and is_hub_id("a/b.c_d-e")
    for text in ("./bundle", "/abs/path", "one-word", "a/b/c", "../x", "a/..", "", None, "owner/"):
        assert not is_hub_id(text), text


def test_fresh_download_converts_once_then_runs_without_network(hub, env, source):
    bundle = ok(run(hub, env))
    assert bundle.parent.name == hub.commit(REPO) and bundle.name.startswith("F32-c")
    loaded = load_bundle(bundle, verify="full")
    assert loaded.manifest["decoder"]["quant"] == "F32"
    snap = snapshot(env, hub)
    for f in ("config.json", "tokenizer.json", SHARD, "model.safetensors.index.json", "chat_template.jinja"):
        assert (snap / f).read_bytes() == (source / f).read_bytes(), f
    assert not (snap / "README.md").exists()  # only what conversion reads
    assert hub.requests[0] == ("GET", f"/api/models/{REPO}/revision/main", None)

    hub.requests.clear()
    assert ok(run(hub, env, offline=True)) == bundle  # HF_HUB_OFFLINE: the cached ref and bundle, no request
    assert ok(run(hub, env, offline=True, child=RESOLVE)) == bundle  # what `serve` / `chat` call with a Hub id
    assert hub.requests == []
    shutil.rmtree(snap)  # the bundle alone is enough; the Hub unreachable falls back to the cached ref
    assert ok(run(hub, env, endpoint="http://127.0.0.1:9")) == bundle
    assert ok(run(hub, env, revision=hub.commit(REPO))) == bundle
    assert hub.requests == []


def test_cut_download_resumes_where_it_stopped(hub, env, source):
    size = (source / SHARD).stat().st_size
    hub.cut[SHARD] = 1  # the connection drops halfway through the shard
    bundle = ok(run(hub, env))
    first, again = gets(hub, SHARD)
    assert first[2] is None and again[2].startswith("bytes=")
    kept = int(again[2][6:-1])
    assert 0 < kept < size and kept % (64 << 10) == 0  # asked only for what was not written yet
    assert hub.bytes_served(SHARD) < 1.5 * size  # never restarted from zero
    assert (snapshot(env, hub) / SHARD).read_bytes() == (source / SHARD).read_bytes()
    load_bundle(bundle, verify="full")


def test_failed_run_keeps_finished_files(hub, env, source):
    """A run that fails (the link dies for good) keeps every finished file: the next run fetches the rest only.
    (huggingface_hub 2.x resumes a file within one run; a file cut off for good restarts in the next run.)"""
    hub.cut[SHARD] = 6  # half, then a dead link for all of huggingface_hub's 5 in-process retries
    failed = run(hub, env)
    assert failed.returncode == 2 and "HubDownloadError" in failed.stderr and "run again" in failed.stderr
    finished = {p.rsplit("/", 1)[1] for m, p, n in hub._served if n == len(hub.repos[REPO].files[p.rsplit("/", 1)[1]])}
    assert SHARD not in finished and "config.json" in finished and len(finished) >= 5
    hub.requests.clear()
    bundle = ok(run(hub, env))
    fetched = {p.rsplit("/", 1)[1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}
    assert SHARD in fetched and not fetched & finished
    load_bundle(bundle, verify="full")


def test_corrupted_download_is_refused_and_removed(hub, env):
    hub.corrupt.add(SHARD)
    proc = run(hub, env)
    assert proc.returncode == 2 and "HubDownloadError" in proc.stderr
    assert SHARD in proc.stderr and "corrupted" in proc.stderr
    assert len(gets(hub, SHARD)) == 2  # downloaded once more before giving up
    assert not (snapshot(env, hub) / SHARD).exists()  # nothing corrupted left in the cache
    assert not list((Path(env["XDG_CACHE_HOME"]) / "glm-edge" / "hub").rglob("manifest.json"))
    hub.corrupt.clear()
    load_bundle(ok(run(hub, env)), verify="full")


def test_corrupted_cache_file_is_downloaded_again(hub, env, source):
    bundle = ok(run(hub, env))
    shutil.rmtree(bundle)  # force a conversion, which re-checks the snapshot
    blob = (snapshot(env, hub) / SHARD).resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    before = len(gets(hub, SHARD))
    assert ok(run(hub, env)) == bundle
    assert len(gets(hub, SHARD)) == before + 1
    assert hashlib.sha256(blob.read_bytes()).digest() == hashlib.sha256((source / SHARD).read_bytes()).digest()


def test_offline_without_cache_says_how_to_fix(hub, env):
    proc = run(hub, env, offline=True)
    assert proc.returncode == 2 and "HubDownloadError" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert hub.requests == []


def test_wrong_revision_and_unknown_repo(hub, env):
    proc = run(hub, env, revision="no-such-branch")
    assert proc.returncode == 2 and "HubModelNotFoundError" in proc.stderr and "'no-such-branch'" in proc.stderr
    proc = run(hub, env, repo="zai-org/Nope")
    assert proc.returncode == 2 and "HubModelNotFoundError" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert not (Path(env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots").exists()


def test_second_quant_reuses_vision_encoder_and_projector(hub, env):
    first = ok(run(hub, env, quant="F32"))
    second = ok(run(hub, env, quant="Q8_0"))
    assert second.parent == first.parent and second != first
    m1, m2 = (json.loads((b / "manifest.json").read_text()) for b in (first, second))
    assert m2["decoder"]["quant"] == "Q8_0"
    assert m2["vision"] == m1["vision"] and m2["projector"] == m1["projector"]
    for rec in m1["vision"]["fp32"]["files"] + [m1["projector"]]:
        assert (first / rec["path"]).stat().st_ino == (second / rec["path"]).stat().st_ino  # hard link, not a re-export
    load_bundle(second, verify="full")
