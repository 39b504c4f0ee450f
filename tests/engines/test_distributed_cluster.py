"""A lasting cluster as `mlxd service install --distributed ring --hosts … --rank R` sets it up,
on loopback: each rank runs the command and environment its service would get
(server/service.py), under a small supervisor that restarts a process that exits unsuccessfully,
as launchd's KeepAlive and systemd's Restart=on-failure do. A follower killed with `kill -9`:
rank 0 fails the group, answers 503, exits with status 3 after MLXD_DISTRIBUTED_RESTART_S; the
supervisor restarts both ranks, they form the group again, and rank 0 serves the same tokens."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.service import ClusterRank, ServiceOptions
from tests.servers import free_port
from tests.tiny import save_model_dir, tiny_model

ROOT = Path(__file__).resolve().parents[2]


class Supervisor:
    """Keeps one service's process running: restarts it after an unsuccessful exit (not after
    a successful one), like Restart=on-failure with RestartSec=0.2."""

    def __init__(self, options: ServiceOptions, log: Path) -> None:
        variables, files = options.environment()
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.command = options.serve_arguments()
        self.env = {**os.environ, **variables, "MLXD_HOME": str(options.mlxd_home)}
        self.env |= {"MLXD_SPEECH_MODEL": "", "MLXD_EMBEDDING_MODEL": ""}
        self.env |= {"MLXD_DISTRIBUTED_RESTART_S": "1", "MLXD_DISTRIBUTED_GRACE_S": "2"}
        self.log = log
        self.exits: list[int] = []
        # Held while a process is started or `_closing` is set: a restart never begins after
        # close() has stopped the last process (it would outlive the test, still running).
        self._lock = threading.Lock()
        self._closing = False
        self.process = self._start()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=log)

    def _watch(self) -> None:
        while True:
            status = self.process.wait()
            if status == 0:
                return
            time.sleep(0.2)
            with self._lock:
                if self._closing:
                    return
                self.exits.append(status)
                self.process = self._start()

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._thread.join(timeout=5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Supervisor, Supervisor, httpx.Client]]:
    model = save_model_dir(tiny_model("llama"), "llama", tmp_path / "llama")
    port, ring_port = free_port(), free_port()
    ranks = []
    for rank in (1, 0):  # the follower first: the order of service starts does not matter
        options = ServiceOptions(
            port=port,
            model=str(model),
            mlxd_home=tmp_path / f"home{rank}",
            cluster=ClusterRank("ring", "127.0.0.1,127.0.0.1", rank, port=ring_port),
        )
        ranks.append(Supervisor(options, tmp_path / f"rank{rank}.log"))
    follower, leader = ranks
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    yield leader, follower, client
    client.close()
    for supervisor in (leader, follower):
        supervisor.close()


def wait_healthy(client: httpx.Client, leader: Supervisor, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if client.get("/health").status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"no healthy cluster: {leader.log.read_text()[-3000:]}")


def complete(client: httpx.Client) -> str:
    body = {"model": "llama", "prompt": [5, 40, 41, 42, 7], "max_tokens": 12, "temperature": 0}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


@pytest.mark.optin  # two group formations of ~5 s each: CI runs it
def test_services_reform_the_group_after_a_follower_is_killed(
    cluster: tuple[Supervisor, Supervisor, httpx.Client],
) -> None:
    leader, follower, client = cluster
    wait_healthy(client, leader, 90.0)
    before = complete(client)
    os.kill(follower.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while client.get("/health").status_code == 200:
        assert time.monotonic() < deadline, "no degraded /health within 2 s"
        time.sleep(0.05)
    refused = client.post(
        "/v1/completions", json={"model": "llama", "prompt": [5], "max_tokens": 2}
    )
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    wait_healthy(client, leader, 90.0)  # rank 0 exited 3; both restarted and formed the group
    assert leader.exits == [3] and follower.exits == [-signal.SIGKILL]
    assert complete(client) == before
