"""Shared benchmark plumbing: start mlxd or mlx_lm.server as subprocesses (both with OpenBLAS
preloaded on Linux, so they run on the same BLAS), and stream one chat request with timings.

Requests go through one long-lived `httpx.Client` per server (thread-safe, pooled connections):
making a client costs ~20-30 ms of the load generator's own time (its TLS context), which a
per-request client would count in every TTFT and serialize across client threads.

`stream_chat` suits one or a few streams; a thread per stream in one process costs ~4-6 ms of
client CPU per request and ~100-130 µs per token, so bursts of many streams go through
bench/loadgen.py (asyncio worker processes) instead."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

# mlx_lm.server started the same way as mlxd: OpenBLAS preloaded before MLX is imported.
_MLX_LM_SERVER = (
    "import sys, runpy; sys.path.insert(0, {root!r}); from engines import blas; "
    "blas.preload_from_env(); sys.argv = ['mlx_lm.server'] + sys.argv[1:]; "
    "runpy.run_module('mlx_lm.server', run_name='__main__')"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client() -> httpx.Client:
    """A client whose pool keeps a connection per concurrent request (up to 256)."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    return httpx.Client(limits=limits, timeout=600)


@dataclass
class Server:
    name: str
    url: str
    model: str  # the model id to put in requests
    process: subprocess.Popen[bytes]
    client: httpx.Client = field(default_factory=_client)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _wait_healthy(process: subprocess.Popen[bytes], url: str, probe: str) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited during start-up ({process.returncode})")
        try:
            if httpx.get(f"{url}{probe}", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not become healthy")


def start_mlxd(model: str, served_name: str, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--model", model, "--port", str(port)]
    env = {**os.environ, "MLXD_LOG_LEVEL": "warning", **(extra_env or {})}
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(process, url, "/health")
    return Server("mlxd", url, served_name, process)


def start_mlx_lm_server(model_dir: str) -> Server:
    port = free_port()
    code = _MLX_LM_SERVER.format(root=str(ROOT))
    command = [sys.executable, "-c", code, "--model", model_dir, "--port", str(port)]
    command += ["--log-level", "WARNING"]
    process = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(process, url, "/v1/models")
    return Server("mlx_lm.server", url, model_dir, process)


@dataclass
class StreamResult:
    ok: bool
    error: str = ""
    ttft_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)  # between consecutive content chunks
    chunk_times: list[float] = field(default_factory=list)  # perf_counter of each content chunk


def chat_body(
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """The streamed chat request every bench sends: greedy, usage in the last chunk."""
    return {
        **(extra or {}),
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def stream_chat(
    server: Server,
    messages: list[dict[str, str]],
    max_tokens: int,
    timeout: float = 600,
    extra: dict[str, object] | None = None,
) -> StreamResult:
    body = chat_body(server.model, messages, max_tokens, extra)
    start = time.perf_counter()
    first = last = 0.0
    chunks = 0
    usage_tokens = 0
    gaps: list[float] = []
    times: list[float] = []
    try:
        with server.client.stream(
            "POST", f"{server.url}/v1/chat/completions", json=body, timeout=timeout
        ) as response:
            if response.status_code != 200:
                return StreamResult(False, f"HTTP {response.status_code}")
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    return StreamResult(False, str(payload["error"]))
                if payload.get("usage"):
                    usage_tokens = payload["usage"]["completion_tokens"]
                choices = payload.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    now = time.perf_counter()
                    if first:
                        gaps.append(now - last)
                    first = first or now
                    last = now
                    chunks += 1
                    times.append(now)
    except httpx.HTTPError as exc:
        return StreamResult(False, f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    if not first:
        return StreamResult(False, "no content")
    return StreamResult(True, "", first - start, end - start, usage_tokens or chunks, gaps, times)


def steady_decode_rate(results: list[StreamResult]) -> float:
    """Content chunks per second while every request was streaming (all past their first token,
    none finished): the batched decode rate, comparable to raw BatchGenerator's decode-only rate.
    Counts chunks, so it is exact only while chunks carry one token each."""
    start = max(r.chunk_times[0] for r in results)
    end = min(r.chunk_times[-1] for r in results)
    if end <= start:
        return float("nan")
    inside = sum(1 for r in results for t in r.chunk_times if start < t <= end)
    return inside / (end - start)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
