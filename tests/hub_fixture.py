"""A Hugging Face hub stand-in on 127.0.0.1, speaking what huggingface_hub 2.4.0 calls
(read from its source: `HfApi.model_info`, `get_hf_file_metadata`, `http_get`):

- `GET /api/models/{repo}/revision/{rev}?blobs=true`: `sha` and `siblings` (rfilename, size,
  blobId, lfs {sha256, size, pointerSize}); errors carry `X-Error-Code` (RepoNotFound,
  RevisionNotFound, GatedRepo), which huggingface_hub turns into its typed errors.
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: small files answer 200 with a git-sha1 `ETag`; LFS
  files (weights) answer 302 to a CDN on another origin (`localhost` rather than `127.0.0.1`, so
  the client does not follow it), with `X-Linked-Etag` (the sha256) and `X-Linked-Size`. Both
  send `X-Repo-Commit`.
- `GET /cdn/{sha256}`: the bytes, honouring `Range: bytes=N-` (206 + Content-Range).

Switches: `gate.clear()` holds CDN downloads until `gate.set()`; `drop_after[name] = n` cuts
the connection after n bytes of that file and answers 500 to later requests for it (the network
went away) until `drop_after` is cleared; `pause_after[name] = n` sends n bytes of that file,
then holds the connection until `gate.set()` and closes it (a download to interrupt mid-file);
`corrupt_once.add(name)` serves flipped bytes once.
`served[name]` counts the body bytes sent.

`mlx_lm_quantized_copy` makes the kind of repo mlx-community publishes: a checkpoint quantized by
mlx-lm's own converter. `serving_hub` runs a stand-in for one test, named where mlxd looks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants

LFS_SUFFIXES = (".safetensors", ".gguf", ".npz", ".bin")
TINY_REPO = "org/tiny"  # where tests/unit/conftest.py's `tiny_hub` serves the tiny model


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = ""
    gated: bool = False

    def __post_init__(self) -> None:
        digest = hashlib.sha1(json.dumps(sorted(self.files)).encode())
        for content in self.files.values():
            digest.update(content)
        self.commit = self.commit or digest.hexdigest()

    @classmethod
    def from_dir(cls, directory: Path, **extra: bytes) -> FakeRepo:
        files = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
        return cls({**files, **extra})


def mlx_lm_quantized_copy(
    source: Path, destination: Path, bits: int = 4, group_size: int = 32
) -> Path:
    """`source` quantized by `mlx_lm.convert` into `destination` (which must not exist)."""
    from mlx_lm.convert import convert

    with contextlib.redirect_stdout(io.StringIO()):  # its [INFO] lines
        convert(str(source), str(destination), quantize=True, q_group_size=group_size, q_bits=bits)
    return destination


def _git_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)
    pause_after: dict[str, int] = field(default_factory=dict)
    corrupt_once: set[str] = field(default_factory=set)
    served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)  # CDN waits for it
    port: int = 0

    def __post_init__(self) -> None:
        self.gate.set()  # open unless a test closes it

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blob(self, sha256: str) -> tuple[str, bytes] | None:
        for repo in self.repos.values():
            for name, content in repo.files.items():
                if hashlib.sha256(content).hexdigest() == sha256:
                    return name, content
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._route(body=False)

    def do_GET(self) -> None:
        self._route(body=True)

    def _route(self, body: bool) -> None:
        self.hub.requests.append(f"{self.command} {self.path} {self.headers.get('Range', '')}")
        path = self.path.split("?")[0]
        if path == "/api/models":  # a search; mlxd doctor's reachability probe
            self._send(200, json.dumps([{"id": repo_id} for repo_id in self.hub.repos]))
        elif match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
            self._model_info(match[1], match[2])
        elif match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            self._resolve(match[1], match[2], match[3], body)
        elif match := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
            self._cdn(match[1], body)
        else:
            self._error(404, "EntryNotFound")

    def _repo(self, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound")  # what the hub answers for missing and private
        elif repo.gated and "authorization" not in {k.lower() for k in self.headers}:
            self._error(403, "GatedRepo")
        elif revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound")
        else:
            return repo
        return None

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        siblings = []
        for name, content in sorted(repo.files.items()):
            sibling: dict[str, Any] = {
                "rfilename": name,
                "size": len(content),
                "blobId": _git_sha1(content),
            }
            if _is_lfs(name):
                sha = hashlib.sha256(content).hexdigest()
                sibling["lfs"] = {"sha256": sha, "size": len(content), "pointerSize": 134}
            siblings.append(sibling)
        self._send(200, json.dumps({"id": repo_id, "sha": repo.commit, "siblings": siblings}))

    def _resolve(self, repo_id: str, revision: str, name: str, body: bool) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if name not in repo.files:
            self._error(404, "EntryNotFound")
            return
        content = repo.files[name]
        headers = {"X-Repo-Commit": repo.commit}
        if _is_lfs(name):
            sha = hashlib.sha256(content).hexdigest()
            headers |= {
                "Location": f"http://localhost:{self.hub.port}/cdn/{sha}",
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(content)),
                "ETag": f'"{_git_sha1(content)}"',
            }
            self._send(302, b"", headers)
            return
        headers["ETag"] = f'"{_git_sha1(content)}"'
        self._send(200, content if body else b"", headers, length=len(content))

    def _cdn(self, sha256: str, body: bool) -> None:
        found = self.hub.blob(sha256)
        if found is None:
            self._send(404, b"")
            return
        name, content = found
        pause = self.hub.pause_after.get(name) if body else None
        if pause is None:
            self.hub.gate.wait(timeout=30)
        limit = self.hub.drop_after.get(name)
        if limit is not None and self.hub.served[name] >= limit:
            self._send(500, b"the network went away")
            return
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
            start = int(match[1])
        part = content[start:]
        if name in self.hub.corrupt_once and body:
            self.hub.corrupt_once.discard(name)
            part = bytes(b ^ 0xFF for b in part)
        headers = {"Content-Range": f"bytes {start}-{len(content) - 1}/{len(content)}"}
        status = 206 if start else 200
        if not body:
            self._send(status, b"", headers if start else {}, length=len(part))
            return
        if pause is not None:
            self._send(status, part[:pause], headers if start else {}, length=len(part))
            self.hub.served[name] += len(part[:pause])
            self.hub.gate.wait(timeout=30)
            self.close_connection = True
            return
        if limit is not None:
            cut = part[: max(limit - self.hub.served[name], 0)]
            self._send(status, cut, headers if start else {}, length=len(part))
            self.hub.served[name] += len(cut)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.hub.served[name] += len(part)
        self._send(status, part, headers if start else {})

    def _error(self, status: int, code: str) -> None:
        self._send(status, json.dumps({"error": code}), {"X-Error-Code": code})

    def _send(
        self,
        status: int,
        content: bytes | str,
        headers: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        data = content.encode() if isinstance(content, str) else content
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if data:
            self.wfile.write(data)
            self.wfile.flush()


class RunningHub:
    """A FakeHub served on a free port until `close`."""

    def __init__(self, hub: FakeHub) -> None:
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        hub.port = self.server.server_address[1]
        self.hub = hub
        # serve_forever checks for shutdown every poll_interval (0.5 s by default): each test
        # would wait that long in its teardown.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def serving_hub(
    repos: dict[str, FakeRepo], home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    """A stand-in serving `repos` for the length of the block, named by HF_ENDPOINT, online
    (HF_HUB_OFFLINE off), with HF_HUB_CACHE (`home`/hf) and MLXD_HOME (`home`/mlxd) in `home`."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub(repos)
    running = RunningHub(fake)
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf"))
    monkeypatch.setenv("MLXD_HOME", str(home / "mlxd"))
    try:
        yield fake
    finally:
        running.close()
