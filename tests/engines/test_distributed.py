"""One model over two processes: `mlxd serve --distributed ring --hosts 127.0.0.1,127.0.0.1`
(rank 0 spawns its follower) on loopback, checked against the one-process server.

Each server is a real subprocess (a group cannot be formed twice in one process); requests go
over HTTP. Tensor parallel output is compared token by token (logits agree within float
tolerance, so greedy tokens agree); pipeline output is exact. Faults: `kill -9` of the follower
mid-stream and SIGSTOP of the follower (caught by the step watchdog) end the stream with an
error event, /health turns 503 'stalled' and new requests get 503 with Retry-After.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from tests.servers import free_port
from tests.tiny import EOS_ID, save_model_dir, tiny_config, tiny_model

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[5, 40, 41, 42, 7], [60, 61, 9, 100, 101, 102, 103, 12], [200, 3 + 7, 77]]


class Server:
    """`python -m server serve` in a subprocess, on a free port, until `close`."""

    def __init__(self, home: Path, model: Path, *flags: str, grace_s: float = 2.0) -> None:
        self.port = free_port()
        self.model = model.name  # a directory is served under its own name
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "MLXD_HOME": str(home),
            "MLXD_SPEECH_MODEL": "",
            "MLXD_EMBEDDING_MODEL": "",
            "MLXD_DISTRIBUTED_GRACE_S": str(grace_s),
        }
        command = [sys.executable, "-m", "server", "serve", "--model", str(model)]
        command += ["--port", str(self.port), *flags]
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self._wait_healthy(90.0)

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not healthy: {self.log.read_text()[-3000:]}")

    def followers(self) -> list[int]:
        """Rank 0's child processes (its engine thread spawned them: read every thread's)."""
        tasks = Path(f"/proc/{self.process.pid}/task").glob("*/children")
        return [int(child) for task in tasks for child in task.read_text().split()]

    def complete(self, prompt: list[int], **fields: Any) -> dict[str, Any]:
        body = {"model": self.model, "prompt": prompt, "max_tokens": 12, "temperature": 0, **fields}
        response = self.client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def close(self) -> None:
        followers = self.followers() if self.process.poll() is None else []
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in followers:  # none should be left; make sure
            with_suppressed_kill(pid)
        self.client.close()


def with_suppressed_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def save_long_model(directory: Path) -> Path:
    """The tiny llama with a context of 4096 tokens (a stream that lasts long enough to
    interrupt) and a few more layers."""
    config = {**tiny_config("llama"), "max_position_embeddings": 4096, "num_hidden_layers": 6}
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(3)
    model = Model(ModelArgs.from_dict(config))
    head = mx.random.normal(dict(tree_flatten(model.parameters()))["lm_head.weight"].shape)
    head[EOS_ID] = 0.0
    model.load_weights([("lm_head.weight", head)], strict=False)
    save_model_dir(model, "llama", directory)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    return {
        "llama": save_model_dir(tiny_model("llama"), "llama", root / "llama"),
        "qwen2": save_model_dir(tiny_model("qwen2"), "qwen2", root / "qwen2"),
        "long": save_long_model(root / "long"),
        "home": root / "home",
    }


@pytest.fixture
def launch(models: dict[str, Path]) -> Iterator[Any]:
    servers: list[Server] = []

    def start(model: str, *flags: str, grace_s: float = 2.0) -> Server:
        server = Server(models["home"], models[model], *flags, grace_s=grace_s)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


RING = ("--distributed", "ring", "--hosts", "127.0.0.1,127.0.0.1")


def texts(server: Server, **fields: Any) -> list[str]:
    return [server.complete(p, **fields)["choices"][0]["text"] for p in PROMPTS]


def test_tensor_parallel_equals_one_process(launch: Any) -> None:
    one = launch("llama")
    single, seeded_single = texts(one), texts(one, temperature=1.0, seed=11)
    sharded = launch("llama", *RING)
    assert len(sharded.followers()) == 1
    assert texts(sharded) == single
    assert texts(sharded, temperature=1.0, seed=11) == seeded_single
    # A follow-up that extends a served prompt resumes from the prefix cache on every rank.
    first = PROMPTS[1] * 3
    again = sharded.complete([*first, 50, 51], max_tokens=8)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    follow = sharded.complete([*first, 50, 51, 52, 53], max_tokens=8)
    assert follow["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    expected = one.complete([*first, 50, 51, 52, 53], max_tokens=8)
    assert follow["choices"][0]["text"] == expected["choices"][0]["text"]


@pytest.mark.optin  # three more servers of ~4 s each: CI runs them
def test_pipeline_equals_one_process(launch: Any) -> None:
    single = texts(launch("qwen2"))
    assert texts(launch("qwen2", *RING, "--pipeline")) == single


@pytest.mark.optin  # three more servers of ~4 s each: CI runs them
def test_concurrent_requests_batch_and_cancel(launch: Any) -> None:
    single = texts(launch("llama"), max_tokens=40)
    sharded = launch("llama", *RING)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda p: sharded.complete(p, max_tokens=40), PROMPTS))
    assert [r["choices"][0]["text"] for r in results] == single
    assert sharded.client.get("/health").json()["engines"]["llama"]["largest_batch"] >= 2
    # A stream cancelled by its client leaves every rank's batch; the group goes on serving.
    body = {"model": "llama", "prompt": PROMPTS[0], "max_tokens": 200, "stream": True}
    with sharded.client.stream("POST", "/v1/completions", json=body) as response:
        next(line for line in response.iter_lines() if line.startswith("data:"))
    deadline = time.monotonic() + 5
    while sharded.client.get("/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sharded.client.get("/health").json()["active"] == 0
    assert texts(sharded, max_tokens=40) == single


def stream_until_error(server: Server, fault: Any) -> tuple[str, float]:
    """Start a long stream, apply `fault` after its first chunk; the error message and the
    seconds from the fault to the error event."""
    body = {"model": "long", "prompt": PROMPTS[0], "max_tokens": 3000, "stream": True}
    with server.client.stream("POST", "/v1/completions", json=body) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        next(lines)
        fault()
        started = time.monotonic()
        for line in lines:
            if line == "data: [DONE]":
                break
            chunk = json.loads(line[len("data:") :])
            if "error" in chunk:
                return str(chunk["error"]["message"]), time.monotonic() - started
    raise AssertionError("the stream ended without an error")


def assert_unavailable(server: Server) -> None:
    health = server.client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "stalled"
    body = {"model": "long", "prompt": PROMPTS[0], "max_tokens": 4}
    refused = server.client.post("/v1/completions", json=body)
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert "re-form the group" in refused.json()["error"]["message"]


def test_killed_follower_fails_streams_fast(launch: Any) -> None:
    server = launch("long", *RING)
    (follower,) = server.followers()
    message, seconds = stream_until_error(server, lambda: os.kill(follower, signal.SIGKILL))
    assert "lost a peer" in message and seconds < 2.0
    assert_unavailable(server)


@pytest.mark.optin  # three more servers of ~4 s each: CI runs them
def test_stopped_follower_is_caught_by_the_watchdog(launch: Any) -> None:
    server = launch("long", *RING, grace_s=1.5)
    (follower,) = server.followers()
    try:
        message, seconds = stream_until_error(server, lambda: os.kill(follower, signal.SIGSTOP))
    finally:
        with contextlib.suppress(ProcessLookupError):  # rank 0 killed it; if not, resume it
            os.kill(follower, signal.SIGCONT)
    assert "made no progress" in message and seconds < 6.0
    assert_unavailable(server)
