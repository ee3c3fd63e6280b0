"""A local stand-in for the part of the Hugging Face Hub HTTP API that huggingface_hub's `snapshot_download` uses.

    with HubEmulator({"org/model": folder}) as hub:      # serves `folder` at commit hub.commit("org/model")
        env = {"HF_ENDPOINT": hub.url, ...}

Routes (as the Hub answers them): `GET /api/models/<repo>/revision/<rev>` (model info: sha, siblings),
`GET /api/models/<repo>/tree/<rev>[/<path>]` (file listing with git oid and LFS sha256), and `HEAD`/`GET
/<repo>/resolve/<rev>/<file>` (ETag = LFS sha256 for *.safetensors, git blob sha1 otherwise; X-Repo-Commit;
Range requests). Unknown repos answer 404 `X-Error-Code: RepoNotFound`, unknown revisions 404
`X-Error-Code: RevisionNotFound`. Faults for tests: `cut[path] = n` (the next n GETs of a file drop the
connection mid-body: the first after half of what was asked, the others before any byte, as a dead link does), `corrupt` (a file is served with one byte flipped, under
its true hash).
Every request is logged in `requests` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors",)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, folder: Path):
        self.repo_id = repo_id
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.commit = hashlib.sha1(repo_id.encode() + b"".join(hashlib.sha256(d).digest() for d in self.files.values())).hexdigest()
        self.refs = {"main": self.commit}

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else git_blob_sha1(data)


class HubEmulator:
    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo_id: Repo(repo_id, Path(folder)) for repo_id, folder in repos.items()}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut: dict[str, int] = {}  # file path -> how many more GETs of it stop halfway
        self.corrupt: set[str] = set()  # file paths served with a flipped byte
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def commit(self, repo_id: str) -> str:
        return self.repos[repo_id].commit

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def bytes_served(self, path: str) -> int:
        return sum(n for m, p, n in self._served if p.endswith("/" + path))

    def _handler(self):
        hub = self
        hub._served = []
        hub._cut_once = set()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._route(head=True)

            def do_GET(self):
                self._route(head=False)

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _error(self, code: str, head: bool):
                body = json.dumps({"error": code}).encode()
                self._send(404, body, {"X-Error-Code": code, "Content-Type": "application/json"}, head)

            def _route(self, head: bool):
                url = urlparse(self.path)
                path = unquote(url.path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo_id, kind, rev, rest = "/".join(parts[2:4]), parts[4], parts[5], parts[6:]
                    return self._api(repo_id, kind, rev, rest, head)
                if len(parts) >= 5 and parts[2] == "resolve":
                    return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
                self._error("EntryNotFound", head)

            def _repo_rev(self, repo_id: str, rev: str, head: bool):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error("RepoNotFound", head)
                    return None, None
                commit = repo.refs.get(rev, rev if rev == repo.commit else None)
                if commit is None:
                    self._error("RevisionNotFound", head)
                    return None, None
                return repo, commit

            def _api(self, repo_id, kind, rev, rest, head):
                repo, commit = self._repo_rev(repo_id, rev, head)
                if repo is None:
                    return
                if kind == "revision":
                    info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                            "siblings": [{"rfilename": p} for p in repo.files]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                if kind == "tree":
                    prefix = "/".join(rest)
                    entries = []
                    for p, data in repo.files.items():
                        if prefix and not p.startswith(prefix + "/"):
                            continue
                        entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
                        if p.endswith(LFS_SUFFIXES):
                            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                        entries.append(entry)
                    return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)
                self._error("EntryNotFound", head)

            def _resolve(self, repo_id, rev, file, head):
                repo, commit = self._repo_rev(repo_id, rev, head)
                if repo is None:
                    return
                if file not in repo.files:
                    return self._error("EntryNotFound", head)
                data = repo.files[file]
                if file in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                etag = repo.etag(file)
                headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit, "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}
                if file.endswith(LFS_SUFFIXES):
                    headers["X-Linked-Etag"] = f'"{etag}"'
                    headers["X-Linked-Size"] = str(len(data))
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                headers["Content-Length"] = str(len(body))
                if head:
                    return self._send(200, b"", {**headers, "Content-Length": str(len(data))}, head=True)
                if hub.cut.get(file, 0) > 0:  # send half, then drop the connection mid-body
                    hub.cut[file] -= 1
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    half = body[: len(body) // 2] if file not in hub._cut_once else b""
                    hub._cut_once.add(file)
                    self.wfile.write(half)
                    self.wfile.flush()
                    hub._served.append(("GET", self.path, len(half)))
                    self.close_connection = True
                    return
                hub._served.append(("GET", self.path, len(body)))
                self._send(status, body, headers)

        return Handler
