"""A load generator light enough that a burst of hundreds of streamed chat requests measures the
server, not the client: the requests of a burst are split round-robin over `procs` worker
processes, each streaming its share from one asyncio event loop over raw sockets (no thread per
stream, no HTTP library per chunk).

bench/harness.py's `stream_chat` (one thread per client, one shared `httpx.Client`) costs ~4-6 ms
of client CPU per request and ~100-130 µs per streamed token (bench/edge_overhead.py), so one
process tops out near 7.5-10k tok/s at 256 streams; here a token costs a few tens of µs, spread
over the workers' cores.

Invariants:
- every request of a burst starts at one shared instant: the workers prepare their payloads,
  report ready, and are then given a start time a little ahead; each sleeps until it and then
  opens all its connections at once. How late each worker actually launched is reported
  (`start_lag_s`);
- all times are `time.perf_counter()` values, which on Linux is CLOCK_MONOTONIC and on macOS
  mach_absolute_time (Python's monotonic clock): one system-wide clock, so the workers' chunk
  times and the shared start compare across processes (`steady_decode_rate` takes the max/min of
  chunk times over all streams); TTFT is measured from the shared start;
- each request gets its own connection (`Connection: close`), read as HTTP/1.1 chunked (mlxd,
  uvicorn) or until EOF (mlx_lm.server's HTTP/1.0); a request fails as `stream_chat` fails it:
  status other than 200, an error frame, or no content;
- the workers import no MLX (only this module and bench/harness.py): they start in a fraction
  of a second and are reused across bursts (one pool per run).

    python bench/loadgen.py worker   # a worker: JSON lines on stdin, JSON lines on stdout
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import StreamResult

ROOT = Path(__file__).resolve().parent.parent
START_AHEAD_S = 0.05  # the shared start is this far after every worker reported ready
TIMEOUT_S = 600.0  # per request, as stream_chat's


def default_procs() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class Burst:
    results: list[StreamResult]  # in the order of the bodies
    start: float  # the shared start (perf_counter)
    wall_s: float  # from the shared start to the end of the last stream
    client_cpu_s: float  # the workers' CPU time over the burst, all together
    start_lag_s: float  # how late the latest worker launched its requests


class LoadGenerator:
    """`procs` worker processes, reused for every burst until `close`."""

    def __init__(self, procs: int) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "worker"]
        self.workers = [
            subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
            )
            for _ in range(max(1, procs))
        ]

    def burst(self, url: str, bodies: list[dict[str, Any]]) -> Burst:
        """POST every body as a streamed request, all at once, and wait for every stream."""
        parts = urlsplit(url)
        target = {"host": parts.hostname, "port": parts.port or 80, "path": parts.path or "/"}
        used = self.workers[: len(bodies)]
        shares = [list(range(w, len(bodies), len(used))) for w in range(len(used))]
        for worker, share in zip(used, shares, strict=True):
            _send(worker, {**target, "bodies": [bodies[i] for i in share]})
        for worker in used:
            _receive(worker)  # {"ready": true}: payloads built, waiting for the start time
        start = time.perf_counter() + START_AHEAD_S
        for worker in used:
            _send(worker, {"start": start})
        results: list[StreamResult | None] = [None] * len(bodies)
        ends, cpu, lag = [start], 0.0, 0.0
        for worker, share in zip(used, shares, strict=True):
            report = _receive(worker)
            cpu += report["cpu_s"]
            lag = max(lag, report["launched"] - start)
            for i, row in zip(share, report["streams"], strict=True):
                results[i] = _result(row, start)
                ends.append(row["end"])
        done = [r for r in results if r is not None]
        return Burst(done, start, max(ends) - start, cpu, lag)

    def close(self) -> None:
        for worker in self.workers:
            if worker.stdin:
                worker.stdin.close()  # EOF: the worker exits
        for worker in self.workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _send(worker: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert worker.stdin is not None
    worker.stdin.write(json.dumps(message).encode() + b"\n")


def _receive(worker: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if not line:
        raise RuntimeError(f"load generator worker exited ({worker.wait()})")
    return dict(json.loads(line))


def _result(row: dict[str, Any], start: float) -> StreamResult:
    """A worker's stream as `stream_chat`'s result, TTFT and total from the shared start."""
    if row["error"]:
        return StreamResult(False, row["error"])
    times = row["chunk_times"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return StreamResult(True, "", times[0] - start, row["end"] - start, row["tokens"], gaps, times)


# -- the worker side ---------------------------------------------------------------------------


async def _body_pieces(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The response body as it arrives: de-chunked (HTTP/1.1 chunked) or raw until EOF."""
    if not chunked:
        while piece := await reader.read(65536):
            yield piece
        return
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            return
        piece = await reader.readexactly(size + 2)
        yield piece[:-2]


async def _stream(host: str, port: int, path: str, payload: bytes) -> dict[str, Any]:
    """One streamed chat request; the same accounting as bench/harness.py's `stream_chat`."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        if status != 200:
            return {"error": f"HTTP {status}", "end": time.perf_counter()}
        chunked = any(
            line.lower().startswith("transfer-encoding:") and "chunked" in line.lower()
            for line in head[1:]
        )
        times: list[float] = []
        usage_tokens = 0
        tail = b""
        async for piece in _body_pieces(reader, chunked):
            now = time.perf_counter()  # every event in this read arrived now
            lines = (tail + piece).split(b"\n")
            tail = lines.pop()
            for line in lines:
                if line.startswith(b"data: [DONE]"):
                    return _finished(times, usage_tokens)
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return {"error": str(event["error"]), "end": time.perf_counter()}
                if event.get("usage"):
                    usage_tokens = event["usage"]["completion_tokens"]
                choices = event.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    times.append(now)
        return _finished(times, usage_tokens)
    finally:
        writer.close()


def _finished(times: list[float], usage_tokens: int) -> dict[str, Any]:
    end = time.perf_counter()
    if not times:
        return {"error": "no content", "end": end}
    return {"error": "", "end": end, "tokens": usage_tokens or len(times), "chunk_times": times}


async def _guarded(host: str, port: int, path: str, payload: bytes) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(_stream(host, port, path, payload), TIMEOUT_S)
    except (TimeoutError, OSError, EOFError, ValueError) as exc:
        # OSError: refused/reset; EOFError: IncompleteReadError; ValueError: LimitOverrun, JSON
        return {"error": f"{type(exc).__name__}: {exc}", "end": time.perf_counter()}


async def _run_share(job: dict[str, Any], start: float) -> dict[str, Any]:
    payloads = job["payloads"]
    await asyncio.sleep(max(0.0, start - time.perf_counter() - 0.002))
    while time.perf_counter() < start:  # the last ~2 ms spun: sleep overshoots by a tick
        pass
    launched = time.perf_counter()
    streams = await asyncio.gather(
        *(_guarded(job["host"], job["port"], job["path"], p) for p in payloads)
    )
    return {"launched": launched, "streams": streams}


def worker() -> None:
    """Serve bursts: a job line (target + bodies), answer ready, a start line, answer results."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while job_line := stdin.readline():
        job = json.loads(job_line)
        job["payloads"] = [json.dumps(body).encode() for body in job.pop("bodies")]
        stdout.write(b'{"ready": true}\n')
        stdout.flush()
        start = json.loads(stdin.readline())["start"]
        cpu = time.process_time()
        report = asyncio.run(_run_share(job, start))
        report["cpu_s"] = time.process_time() - cpu
        stdout.write(json.dumps(report).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    worker()
