"""One model over several processes on loopback, checked against the one-process server:
`mlxd serve --distributed ring --hosts 127.0.0.1,...` (rank 0 spawns its followers), two ranks
tensor parallel and three pipeline stages.

Each server is a real subprocess (a group cannot be formed twice in one process); requests go
over HTTP. The servers that the comparisons share are started once per module (a group of
processes costs seconds to start); the fault tests break theirs and start their own.

Output is compared token by token (tensor parallel logits agree with one process's within float
tolerance, pipeline ones exactly; followers decode rank 0's sampled tokens, which a group whose
follower draws noise instead shows). A batch of four different requests
(greedy, seeded, n = 2, a JSON schema) runs at once on the group and matches the same requests
on one process. Faults: `kill -9` of a follower mid-stream, or while idle, and SIGSTOP of a
follower (caught by the step watchdog) fail the streams with an error event; /health answers 503
'stalled' with the reason, /metrics names it, new requests get 503 with Retry-After; the group
re-forms by itself after MLXD_DISTRIBUTED_RESTART_S.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
PROMPTS = [[5, 40, 41, 42, 7], [60, 61, 9, 100, 101, 102, 103, 12], [200, 3 + 7, 77], [90, 91]]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


class Server:
    """`python -m server serve` in a subprocess, on a free port, until `close`."""

    def __init__(self, home: Path, model: Path, *flags: str, **settings: float) -> None:
        self.port = free_port()
        self.model = model.name  # a directory is served under its own name
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "MLXD_HOME": str(home),
            "MLXD_SPEECH_MODEL": "",
            "MLXD_EMBEDDING_MODEL": "",
            "MLXD_DISTRIBUTED_GRACE_S": str(settings.get("grace_s", 2.0)),
            "MLXD_DISTRIBUTED_RESTART_S": str(settings.get("restart_s", 0)),
        }
        command = [sys.executable, "-m", "server", "serve", "--model", str(model)]
        command += ["--port", str(self.port), *flags]
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.wait_healthy(90.0)

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds until /health answers 200 (connection refused meanwhile is fine: a restart)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/health").status_code == 200:
                    return time.monotonic() - started
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

    def chat_json(self, **fields: Any) -> dict[str, Any]:
        """A chat completion constrained to SCHEMA (the grammar runs on every rank)."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "a person"}],
            "max_tokens": 120,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": SCHEMA},
            },
            **fields,
        }
        response = self.client.post("/v1/chat/completions", json=body)
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
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.client.close()


def save_deeper_model(arch: str, directory: Path, layers: int, context: int) -> Path:
    """A tiny random model of `arch` with more layers (pipeline stages need at least one each)
    and a longer context (a stream that lasts long enough to interrupt)."""
    config = {
        **tiny_config(arch),
        "max_position_embeddings": context,
        "num_hidden_layers": layers,
    }
    if arch == "llama":
        from mlx_lm.models.llama import Model, ModelArgs
    else:
        from mlx_lm.models.qwen2 import Model, ModelArgs  # type: ignore[assignment]

    mx.random.seed(3)
    model = Model(ModelArgs.from_dict(config))
    head = mx.random.normal(dict(tree_flatten(model.parameters()))["lm_head.weight"].shape)
    head[EOS_ID] = 0.0
    model.load_weights([("lm_head.weight", head)], strict=False)
    save_model_dir(model, arch, directory)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    return {
        "llama": save_model_dir(tiny_model("llama"), "llama", root / "llama"),
        "qwen2": save_deeper_model("qwen2", root / "qwen2", layers=6, context=512),
        "long": save_deeper_model("llama", root / "long", layers=6, context=4096),
        "home": root / "home",
    }


class Servers:
    """Servers started in `home` for a test or a module, all closed at its end; `shared` gives
    the one already started with the same model and flags, if any."""

    def __init__(self, models: dict[str, Path]) -> None:
        self.models = models
        self.all: list[Server] = []
        self.by_key: dict[tuple[str, ...], Server] = {}

    def __call__(self, model: str, *flags: str, **settings: float) -> Server:
        server = Server(self.models["home"], self.models[model], *flags, **settings)
        self.all.append(server)
        return server

    def shared(self, model: str, *flags: str, **settings: float) -> Server:
        key = (model, *flags, *(f"{k}={v}" for k, v in settings.items()))
        if key not in self.by_key:
            self.by_key[key] = self(model, *flags, **settings)
        return self.by_key[key]

    def close(self) -> None:
        for server in self.all:
            server.close()


Launch = Callable[..., Server]


@pytest.fixture
def launch(models: dict[str, Path]) -> Iterator[Launch]:
    """A server of the test's own (for tests that break theirs)."""
    servers = Servers(models)
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def shared(models: dict[str, Path]) -> Iterator[Launch]:
    """Servers the comparisons share, each started on first use and kept for the module."""
    servers = Servers(models)
    yield servers.shared
    servers.close()


def ring(ranks: int) -> tuple[str, ...]:
    return ("--distributed", "ring", "--hosts", ",".join(["127.0.0.1"] * ranks))


def texts(server: Server, **fields: Any) -> list[str]:
    return [server.complete(p, **fields)["choices"][0]["text"] for p in PROMPTS]


def batch_of_four(server: Server) -> list[Any]:
    """Four different requests at once: greedy, seeded, n = 2 seeded, and a JSON schema."""
    requests: list[Callable[[], dict[str, Any]]] = [
        lambda: server.complete(PROMPTS[0], max_tokens=60),
        lambda: server.complete(PROMPTS[1], max_tokens=60, temperature=1.0, seed=5),
        lambda: server.complete(PROMPTS[2], max_tokens=60, temperature=1.0, seed=7, n=2),
        lambda: server.chat_json(temperature=1.0, seed=3),
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(lambda call: call(), requests))
    completions = [[c["text"] for c in r["choices"]] for r in results[:3]]
    document = results[3]["choices"][0]
    assert document["finish_reason"] == "stop"  # the grammar ended it
    parsed = json.loads(document["message"]["content"])
    assert set(parsed) == {"name", "age"} and isinstance(parsed["age"], int)
    return [*completions, parsed]


def prefix_follow_up(server: Server) -> tuple[int, str]:
    """A prompt, then one that extends it: the cached tokens and the follow-up's text."""
    first = PROMPTS[1] * 3
    assert server.complete([*first, 50, 51], max_tokens=8)["usage"] is not None
    follow = server.complete([*first, 50, 51, 52, 53], max_tokens=8)
    cached = follow["usage"]["prompt_tokens_details"]["cached_tokens"]
    return int(cached), str(follow["choices"][0]["text"])


def largest_batch(server: Server) -> int:
    engines = server.client.get("/health").json()["engines"]
    return int(engines[server.model]["largest_batch"])


# -- two ranks, tensor parallel -------------------------------------------------------------


def test_tensor_parallel_equals_one_process(shared: Any) -> None:
    one, group = shared("llama"), shared("llama", *ring(2))
    assert len(group.followers()) == 1
    assert texts(group) == texts(one)
    assert texts(group, temperature=1.0, seed=11) == texts(one, temperature=1.0, seed=11)


@pytest.mark.optin  # more requests on the shared servers: CI runs them
def test_tensor_parallel_batch_of_four_different_requests(shared: Any) -> None:
    one, group = shared("llama"), shared("llama", *ring(2))
    expected = batch_of_four(one)
    assert batch_of_four(group) == expected
    assert len(expected[2]) == 2 and expected[2][0] != expected[2][1]
    assert largest_batch(group) >= 4  # decoded together: 3 completions (one of n = 2) at least


@pytest.mark.optin  # more requests on the shared servers: CI runs them
def test_tensor_parallel_prefix_cached_follow_up(shared: Any) -> None:
    one, group = shared("llama"), shared("llama", *ring(2))
    cached, text = prefix_follow_up(group)
    assert cached > 0  # every rank resumed from its own cache of the same prefix
    assert (
        text == one.complete([*PROMPTS[1] * 3, 50, 51, 52, 53], max_tokens=8)["choices"][0]["text"]
    )


@pytest.mark.optin  # more requests on the shared servers: CI runs them
def test_tensor_parallel_cancel_on_disconnect(shared: Any) -> None:
    group = shared("llama", *ring(2))
    before = [group.complete(prompt)["choices"][0]["text"] for prompt in PROMPTS[:2]]
    body = {"model": "llama", "prompt": PROMPTS[0], "max_tokens": 200, "stream": True}
    with group.client.stream("POST", "/v1/completions", json=body) as response:
        next(line for line in response.iter_lines() if line.startswith("data:"))
    # The client left: its row leaves every rank's batch, and the group goes on serving.
    deadline = time.monotonic() + 5
    while group.client.get("/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group.client.get("/health").json()["active"] == 0
    assert [group.complete(prompt)["choices"][0]["text"] for prompt in PROMPTS[:2]] == before


# -- three ranks, pipeline ------------------------------------------------------------------


@pytest.mark.optin  # two more servers of ~5 s each: CI runs them
def test_three_stage_pipeline_equals_one_process(shared: Any) -> None:
    one = shared("qwen2")
    group = shared("qwen2", *ring(3), "--pipeline", restart_s=1.0)
    assert len(group.followers()) == 2
    assert texts(group) == texts(one)
    cached, text = prefix_follow_up(group)
    assert cached > 0 and text == prefix_follow_up(one)[1]
    assert batch_of_four(group) == batch_of_four(one)  # seeded samples among them
    assert largest_batch(group) >= 4


@pytest.mark.optin  # breaks the shared pipeline group and waits for it to re-form: CI runs it
def test_a_peer_lost_while_idle_is_seen_within_2_s_and_the_group_reforms(shared: Any) -> None:
    one = shared("qwen2")
    group = shared("qwen2", *ring(3), "--pipeline", restart_s=1.0)
    expected = texts(one)
    last = group.followers()[-1]
    os.kill(last, signal.SIGKILL)
    killed = time.monotonic()
    while group.client.get("/health").status_code == 200:
        assert time.monotonic() - killed < 2.0, "no degraded /health within 2 s"
        time.sleep(0.05)
    assert_unavailable(group, "lost a peer")
    metrics = group.client.get("/metrics").text
    assert any(
        line.startswith("mlxd_engine_fault{") and 'model="qwen2"' in line and "lost a peer" in line
        for line in metrics.splitlines()
    ), metrics
    # Rank 0 re-executes itself after MLXD_DISTRIBUTED_RESTART_S and spawns new followers.
    group.wait_healthy(60.0)
    assert last not in group.followers() and len(group.followers()) == 2
    assert texts(group) == expected


# -- faults mid-stream ----------------------------------------------------------------------


def stream_until_error(server: Server, fault: Callable[[], None]) -> tuple[str, float]:
    """Start a long stream, apply `fault` after its third chunk (the first steps have set the
    watchdog's pace); the error message and the seconds from the fault to the error event."""
    body = {"model": "long", "prompt": PROMPTS[0], "max_tokens": 3000, "stream": True}
    with server.client.stream("POST", "/v1/completions", json=body) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        for _ in range(3):
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


def assert_unavailable(server: Server, reason: str) -> None:
    health = server.client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "stalled"
    assert reason in health.json()["engines"][server.model]["fault"]
    body = {"model": server.model, "prompt": PROMPTS[0], "max_tokens": 4}
    refused = server.client.post("/v1/completions", json=body)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "re-form the group" in refused.json()["error"]["message"]


def test_killed_follower_fails_streams_fast(launch: Launch) -> None:
    server = launch("long", *ring(2))  # restart off: it stays up, answering 503
    (follower,) = server.followers()
    message, seconds = stream_until_error(server, lambda: os.kill(follower, signal.SIGKILL))
    assert "lost a peer" in message and seconds < 2.0
    assert_unavailable(server, "lost a peer")
    assert "when mlxd is restarted" in message


@pytest.mark.optin  # one more server of ~5 s: CI runs it
def test_stopped_follower_is_caught_by_the_watchdog(launch: Launch) -> None:
    server = launch("long", *ring(2), grace_s=1.5)
    (follower,) = server.followers()
    try:
        message, seconds = stream_until_error(server, lambda: os.kill(follower, signal.SIGSTOP))
    finally:
        with contextlib.suppress(ProcessLookupError):  # rank 0 killed it; if not, resume it
            os.kill(follower, signal.SIGCONT)
    assert "made no progress" in message and seconds < 6.0
    assert_unavailable(server, "made no progress")


# -- only rank 0 samples --------------------------------------------------------------------

# Imported at start-up by every process of a server started with it on PYTHONPATH; in a follower
# (MLX_RANK > 0) it makes every draw differ from rank 0's: noise on the logits a sampler sees and
# on the batch argmax of plain greedy rows. It leaves a file naming the process, to show it ran.
PERTURB_FOLLOWERS = """
import os
from pathlib import Path

if os.environ.get("MLX_RANK", "0") != "0":
    import mlx.core

    import engines.llm.batch
    from engines.llm.sampling import TokenSampler

    def noisy(logits):
        return logits + 50.0 * mlx.core.random.normal(logits.shape, key=mlx.core.random.key(1))

    sample = TokenSampler.__call__
    TokenSampler.__call__ = lambda self, logits: sample(self, noisy(logits))

    class NoisyArgmax:
        def __getattr__(self, name):
            return getattr(mlx.core, name)

        def argmax(self, logits, axis):
            return mlx.core.argmax(noisy(logits), axis=axis)

    engines.llm.batch.mx = NoisyArgmax()
    Path(os.environ["PERTURBED_MARKS"], str(os.getpid())).touch()
"""


@pytest.mark.optin  # one more server of ~5 s: CI runs it
def test_followers_decode_rank_0s_tokens_whatever_they_draw(
    shared: Any, launch: Launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sitecustomize.py").write_text(PERTURB_FOLLOWERS)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    monkeypatch.setenv("PERTURBED_MARKS", str(marks))
    one, group = shared("llama"), launch("llama", *ring(2))
    assert [int(mark.name) for mark in marks.iterdir()] == group.followers()  # it drew noise
    assert texts(group) == texts(one)
    assert texts(group, temperature=1.0, seed=11) == texts(one, temperature=1.0, seed=11)
    assert batch_of_four(group) == batch_of_four(one)  # n = 2 and a grammar among them
    assert group.client.get("/health").status_code == 200  # no plan found the ranks apart
