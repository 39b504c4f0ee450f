"""Host CPU the server process spends around the engine: per request before the engine sees it
(body, schema, chat template, tokenizer, admission) and per streamed token (the engine thread's
detokenizer and stream push, the event loop's chunk JSON, SSE framing, middleware, h11).

The server runs in a subprocess with the real app, the real chat front (SmolLM2's tokenizer and
chat template) and the real engine thread loop, but a scripted decode step instead of a model:
each step pushes one token (from a fixed story's token ids) to every running row through the
real per-choice output code (`engines/llm/sequence.Choice`: detokenizer, stop strings), after
sleeping `--step-ms` (the device's time per step; the sleep releases the GIL, as a GPU wait
does). So everything a real server does on the host except building and launching the model's
graph is here, and the figures count only that work.

A burst of `--clients` streamed chat requests (same prompts as bench/concurrency.py) is sent at
once to `--route`: `chat` (`/v1/chat/completions`), `messages` (Anthropic's `/v1/messages`) or
`responses` (`/v1/responses`, `store: false`), by a raw-socket asyncio client (cheap per chunk, so
it does not itself limit the server), or (chat only) with `--client httpx` by bench/harness.py's
threaded httpx client (the GPU bench's own: shows what that client costs). Each round runs twice:
with 1 output token (per-request work) and with `--tokens` (the difference is per-token work).
Reported per round: server CPU by thread (the event loop, the engine thread, others) from /proc
schedstat, and the load generator's own CPU ("client"), per request and per token; the time until
the engine had received every request ("ingested"), until the last client saw its first token, and
until the last stream ended; tokens per second through the edge. The default step, 30 ms, is the
H200's at 256 rows (~8.5k tok/s); with a step near 0 the engine outruns the loop, tokens merge into
a few frames and the per-token figures measure little.

    python bench/edge_overhead.py [--clients 256] [--tokens 128] [--step-ms 30] [--rounds 3]
        [--route chat|messages|responses] [--client raw|httpx] [--py-spy OUT.txt]
        [--out bench/results/edge_overhead.json]

`--py-spy OUT.txt`: sample the server with py-spy during the rounds (the thread holding the GIL,
collapsed stacks to OUT.txt, summarised by function on stdout); needs py-spy on PATH or in
$PYSPY (`pip install --target /tmp/pyspy py-spy`, then PYSPY=/tmp/pyspy/bin/py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = Path.home() / ".cache/mlxd/models/smollm2-135m-instruct"
MODEL = "bench"
STORY = (
    "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper "
    "named Tom. Every evening he climbed the hundred and twelve steps of the tower, lit the "
    "great lamp and watched the ships pass in the dark. The villagers said he never slept; "
    "the children said he talked to the gulls. "
)


# -- the server side (subprocess) -------------------------------------------------------------


def serve(port: int, step_s: float, max_batch: int) -> None:
    """Serve the real app around a scripted engine on 127.0.0.1:`port` until killed."""
    import uvicorn
    from fastapi import APIRouter

    from engines.pool import EnginePool
    from server.app import create_app, uvicorn_options
    from server.settings import Settings

    engine = scripted_engine(step_s, max_batch)
    settings = Settings(max_connections=4096)
    app = create_app(settings, EnginePool([engine]))
    router = APIRouter()

    @router.get("/bench/arrivals")
    def arrivals() -> dict[str, Any]:
        """When the engine thread received each request since the last call (monotonic)."""
        times, engine.arrivals = engine.arrivals, []
        return {"arrivals": times, "engine_tid": engine.native_id, "loop_tid": os.getpid()}

    app.include_router(router)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(settings)
    )
    uvicorn.Server(config).run()


def _scripted_engine_class() -> type:
    """LLMEngine with a scripted step (imported late: the client side needs no MLX)."""
    from transformers import AutoTokenizer

    from engines.llm.chat_formats import hidden_special_ids
    from engines.llm.detokenize import TokenBytes
    from engines.llm.engine import LLMEngine
    from engines.llm.sequence import Choice, Vocabulary
    from engines.types import ChatLimits

    class Engine(LLMEngine):
        """The real front (template, tokenizer, admission) and engine thread loop; each step
        feeds one scripted token per row through the real `Choice`."""

        def __init__(self, step_s: float, max_batch: int) -> None:
            limits = ChatLimits(max_batch=max_batch, max_waiting=4 * max_batch)
            super().__init__(MODEL, TOKENIZER_DIR, limits=limits)
            self.step_s = step_s
            self.waiting: collections.deque[tuple[Any, Any]] = collections.deque()
            self.rows: list[Any] = []
            self.arrivals: list[float] = []
            self.native_id = 0

        def load(self) -> None:
            from mlx_lm.tokenizer_utils import TokenizerWrapper

            self.native_id = threading.get_native_id()
            config = json.loads((self.path / "config.json").read_text())
            tokenizer = TokenizerWrapper(AutoTokenizer.from_pretrained(self.path))
            self._read_tokenizer(tokenizer, config)
            self.max_batch, self.max_waiting = self.limits.max_batch or 1, 4 * self.max_batch
            self.kv_budget_bytes = 1 << 40
            own = TokenizerWrapper(AutoTokenizer.from_pretrained(self.path))
            assert self.info is not None
            hidden = hidden_special_ids(own, self.info.tool_format, None)
            self.vocabulary = Vocabulary(own, TokenBytes(own), self.info.eos_token_ids, hidden)
            self.script = own.encode(STORY * 8, add_special_tokens=False)

        def kv_bytes(self, choices: int, tokens: int) -> int:
            return 0  # no caches: admission is by queue length only

        def handle(self, message: Any) -> None:
            self.arrivals.append(time.monotonic())
            self.waiting.append(message)

        def has_work(self) -> bool:
            return bool(self.waiting or self.rows)

        def step(self) -> None:
            while self.waiting and len(self.rows) < self.max_batch:
                request, stream = self.waiting.popleft()
                self.release(0, -1)
                self.rows.append(
                    Choice(request, stream, 0, None, self.vocabulary, lambda: self.release(-1))  # type: ignore[arg-type]
                )
            if self.step_s:
                time.sleep(self.step_s)
            running = []
            for choice in self.rows:
                if choice.stream.cancelled:
                    choice.finish("cancelled")
                    continue
                token = self.script[choice.generated % len(self.script)]
                if not choice.accept(token, None):
                    running.append(choice)
            self.rows = running

        def fail_all(self, error: Exception) -> None:
            from engines.types import ErrorEvent

            for choice in self.rows:
                choice.stream.push(ErrorEvent(error))
            for _, stream in self.waiting:
                stream.push(ErrorEvent(error))
            self.rows, self.waiting = [], collections.deque()

    return Engine


def scripted_engine(step_s: float, max_batch: int) -> Any:
    return _scripted_engine_class()(step_s, max_batch)


# -- the client side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A streamed route: its path, the `data:` events before the first token's, and the bytes
    that only its last event holds."""

    path: str
    events_before_first_token: int
    last_event_marks: tuple[bytes, ...]


ROUTES = {
    # The role chunk, then tokens; `[DONE]` last.
    "chat": Route("/v1/chat/completions", 1, (b"data: [DONE]",)),
    # message_start, content_block_start, then text deltas; message_stop last.
    "messages": Route("/v1/messages", 2, (b"event: message_stop",)),
    # created, in_progress, output_item.added, content_part.added, then text deltas; the
    # terminal event (incomplete when max_output_tokens ends it) last.
    "responses": Route(
        "/v1/responses",
        4,
        (b"event: response.completed", b"event: response.incomplete", b"event: response.failed"),
    ),
}


def body(i: int, tokens: int, route: str = "chat") -> dict[str, Any]:
    from bench.concurrency import prompt

    if route == "messages":
        return {
            "model": MODEL,
            "messages": prompt(i),
            "max_tokens": tokens,
            "temperature": 0,
            "stream": True,
        }
    if route == "responses":
        return {
            "model": MODEL,
            "input": prompt(i),
            "max_output_tokens": tokens,
            "temperature": 0,
            "stream": True,
            "store": False,
        }
    return {
        "model": MODEL,
        "messages": prompt(i),
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def raw_stream(port: int, payload: bytes, route: Route) -> tuple[float, float, int]:
    """One streamed request over a raw socket: (first content time, end time, data events).
    The first token's is the `data: {` event after the route's `events_before_first_token`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {route.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()
    writer.write(head + payload)
    events, first, tail = 0, 0.0, b""
    while chunk := await reader.read(65536):
        window = tail + chunk
        events += window.count(b"data: {")
        tail = window[-32:]
        if not first and events > route.events_before_first_token:
            first = time.monotonic()
        if events and any(mark in window for mark in route.last_event_marks):
            break
    writer.close()
    return first, time.monotonic(), events


def burst(port: int, clients: int, tokens: int, client: str, route: str) -> dict[str, Any]:
    """Send `clients` requests at once; wall times relative to the burst's start."""
    start = time.monotonic()
    if client == "raw":
        payloads = [json.dumps(body(i, tokens, route)).encode() for i in range(clients)]

        async def run_all() -> list[tuple[float, float, int]]:
            return await asyncio.gather(*(raw_stream(port, p, ROUTES[route]) for p in payloads))

        start = time.monotonic()
        results = asyncio.run(run_all())
        firsts = [r[0] for r in results]
        ends = [r[1] for r in results]
        failed = sum(1 for r in results if not r[0])
    else:
        from concurrent.futures import ThreadPoolExecutor

        from bench.concurrency import prompt
        from bench.harness import Server, stream_chat

        server = Server("mlxd", f"http://127.0.0.1:{port}", MODEL, None)  # type: ignore[arg-type]
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()  # the clock of stream_chat's chunk times
            streams = list(
                pool.map(lambda i: stream_chat(server, prompt(i), tokens), range(clients))
            )
            ended = time.perf_counter()
        server.client.close()
        firsts = [r.chunk_times[0] for r in streams if r.ok]
        ends = [ended]
        failed = sum(1 for r in streams if not r.ok)
    wall = max(ends) - start
    return {
        "failed": failed,
        "last_first_token_s": max(firsts) - start if firsts else float("nan"),
        "ttft_p50_s": statistics.median(f - start for f in firsts) if firsts else float("nan"),
        "wall_s": wall,
        "start": start,
    }


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """CPU time of each thread of `pid` so far (ns, from schedstat)."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue
    return times


def measured(
    port: int, pid: int, clients: int, tokens: int, client: str, route: str
) -> dict[str, Any]:
    """One burst with the server's CPU split by thread, and when the engine had every request."""
    import httpx

    httpx.get(f"http://127.0.0.1:{port}/bench/arrivals")  # clears the list
    before, client_before = thread_cpu_ns(pid), time.process_time()
    result = burst(port, clients, tokens, client, route)
    after, client_cpu = thread_cpu_ns(pid), time.process_time() - client_before
    info = httpx.get(f"http://127.0.0.1:{port}/bench/arrivals").json()
    cpu = {tid: (after[tid] - before.get(tid, 0)) / 1e9 for tid in after}
    loop, engine = cpu.pop(info["loop_tid"], 0.0), cpu.pop(info["engine_tid"], 0.0)
    arrivals = info["arrivals"]
    result.update(
        cpu_loop_s=loop,
        cpu_engine_s=engine,
        cpu_other_s=sum(cpu.values()),
        cpu_client_s=client_cpu,
        ingested_s=max(arrivals) - result["start"] if arrivals else float("nan"),
    )
    del result["start"]
    return result


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "serve", "--port", str(port)]
    command += ["--step-ms", str(args.step_ms), "--max-batch", str(args.max_batch)]
    env = {**os.environ, "MLXD_LOG_LEVEL": "warning"}
    return subprocess.Popen(command, cwd=ROOT, env=env)


def start_profiler(path: Path, pid: int) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` until interrupted (SIGINT), then writing `path`. Only samples of
    the thread holding the GIL are kept: the host work that serializes the loop and the engine."""
    spy = os.environ.get("PYSPY", "py-spy")
    command = [spy, "record", "-r", "200", "-f", "raw", "--gil", "-o", str(path), "--pid", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def wait_healthy(process: subprocess.Popen[bytes], port: int) -> int:
    """Wait until the server answers; its pid."""
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/bench/arrivals", timeout=5)
            if response.status_code == 200:
                return int(response.json()["loop_tid"])
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def summarise(rows: list[dict[str, Any]], clients: int, tokens: int) -> dict[str, Any]:
    """Medians over rounds; per-request CPU from the 1-token bursts, per-token from the
    difference between the long and the 1-token bursts."""
    short = [r for r in rows if r["tokens"] == 1]
    long = [r for r in rows if r["tokens"] == tokens]

    def med(which: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in which)

    extra_tokens = clients * (tokens - 1)
    summary: dict[str, Any] = {}
    for part in ("loop", "engine", "other", "client"):
        key = f"cpu_{part}_s"
        summary[f"per_request_{part}_us"] = med(short, key) / clients * 1e6
        summary[f"per_token_{part}_us"] = (med(long, key) - med(short, key)) / extra_tokens * 1e6
    for key in ("ingested_s", "last_first_token_s", "ttft_p50_s", "wall_s"):
        summary[f"{key}"] = med(long, key)
    summary["edge_tok_s"] = clients * tokens / med(long, "wall_s")
    return summary


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        parser = argparse.ArgumentParser()
        parser.add_argument("mode")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--step-ms", type=float, default=0.0)
        parser.add_argument("--max-batch", type=int, default=256)
        serve_args = parser.parse_args()
        serve(serve_args.port, serve_args.step_ms / 1000, serve_args.max_batch)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--step-ms", type=float, default=30.0)
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--route", choices=sorted(ROUTES), default="chat")
    parser.add_argument("--py-spy", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results/edge_overhead.json"))
    args = parser.parse_args()
    if args.client == "httpx" and args.route != "chat":
        parser.error("--client httpx streams chat completions only")
    from bench.harness import free_port

    port = free_port()
    process = start_server(args, port)
    rows = []
    profiler = None
    try:
        pid = wait_healthy(process, port)
        # Warm-up: first-use costs (template compile…).
        burst(port, args.clients, 4, "raw", args.route)
        if args.py_spy:
            profiler = start_profiler(args.py_spy, pid)
            time.sleep(1)  # attached
        for round_number in range(args.rounds):
            for tokens in (1, args.tokens):
                row = {"round": round_number, "tokens": tokens}
                row.update(measured(port, pid, args.clients, tokens, args.client, args.route))
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        process.terminate()
        process.wait(timeout=60)
    summary = summarise(rows, args.clients, args.tokens)
    print(json.dumps(summary, indent=2))
    if args.py_spy:
        print_profile(args.py_spy)
    report = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores",
        "clients": args.clients,
        "tokens": args.tokens,
        "step_ms": args.step_ms,
        "client": args.client,
        "route": args.route,
        "rounds": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def print_profile(path: Path, top: int = 45) -> None:
    """Self and total samples per function (line numbers dropped) from py-spy's collapsed
    stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.rsplit(":", 1)[0] + ")" for frame in stack.split(";")]
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    print(f"py-spy: {samples} samples; self / total share, by function")
    for frame, n in own.most_common(top):
        print(
            f"  self {100 * n / samples:5.1f}%  total {100 * total[frame] / samples:5.1f}%  {frame}"
        )


if __name__ == "__main__":
    main()
