"""Forming the group: which hosts, which backend, and starting the followers on this machine.

Two ways to start a group, both through MLX's own backends (ring over TCP, JACCL over
Thunderbolt RDMA, NCCL on CUDA, MPI):
- Under `mlx.launch` (any hosts, over ssh): every process already has `MLX_RANK` (and the
  backend's variables); rank 0 serves HTTP, the others run as followers. Nothing is spawned.
- On one machine (every host a loopback address): rank 0 spawns the followers itself
  (`mlxd follower`), with the environment `mlx.launch` would give them (a ring hostfile of free
  loopback ports; NCCL's rendezvous address and one GPU per rank). Tests and the two-GPU
  benchmark use this.

Invariant: `mx.distributed.init` runs once per process, on the engine thread (a group that broke
cannot be formed again in the same process: the process must restart).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

BACKENDS = ("ring", "jaccl", "nccl", "mpi")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SPAWNABLE = ("ring", "nccl")  # backends whose local environment we know how to set up


def parse_hosts(hosts: str) -> list[str]:
    """One address per rank, rank 0 first: a comma-separated list, or a hostfile in
    `mlx.launch`'s form (a JSON list of {"ssh": name, "ips": [addresses]})."""
    path = Path(hosts)
    if path.is_file():
        try:
            entries = json.loads(path.read_text())
            return [str((entry.get("ips") or [entry["ssh"]])[0]) for entry in entries]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"{hosts} is not an mlx.launch hostfile: {exc}") from exc
    addresses = [h.strip() for h in hosts.split(",") if h.strip()]
    if not addresses:
        raise ValueError("--hosts names no host")
    return addresses


def launched_rank() -> int | None:
    """This process's rank when `mlx.launch` (or our spawner) started it, else None."""
    rank = os.environ.get("MLX_RANK")
    return int(rank) if rank is not None else None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def rank_environments(backend: str, size: int) -> list[dict[str, str]]:
    """The variables each rank of a one-machine group needs, rank 0 first (what mlx.launch
    sets: MLX_RANK, and a ring hostfile or NCCL's rendezvous)."""
    if size == 1:  # a group of one: MLX's singleton group, nothing to rendezvous
        return [{"MLX_RANK": "0"}]
    if backend == "ring":
        ports = _free_ports(size)
        hostfile = json.dumps([[f"127.0.0.1:{port}"] for port in ports])
        handle, name = tempfile.mkstemp(prefix="mlxd-ring-", suffix=".json")
        with os.fdopen(handle, "w") as file:
            file.write(hostfile)
        return [{"MLX_RANK": str(r), "MLX_HOSTFILE": name} for r in range(size)]
    (port,) = _free_ports(1)
    return [
        {
            "MLX_RANK": str(r),
            "MLX_WORLD_SIZE": str(size),
            "NCCL_HOST_IP": "127.0.0.1",
            "NCCL_PORT": str(port),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", str(r))
            if r == 0
            else str(r),
        }
        for r in range(size)
    ]


@dataclass
class LocalFollowers:
    """Followers this process started (ranks 1..n-1 on this machine)."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def alive(self) -> list[int]:
        return [p.pid for p in self.processes if p.poll() is None]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask each follower to exit (SIGTERM), then kill what is left after `timeout_s`."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def spawn_local_followers(
    backend: str, hosts: list[str], follower_command: list[str]
) -> LocalFollowers:
    """Start ranks 1..n-1 of a one-machine group and set this process up as rank 0."""
    if backend not in SPAWNABLE:
        raise ValueError(
            f"backend {backend!r} is started with mlx.launch "
            f"(mlx.launch --backend {backend} --hostfile H -- mlxd serve ...)"
        )
    if any(host not in LOOPBACK for host in hosts):
        raise ValueError(
            "hosts other than this machine are started with mlx.launch: "
            "mlx.launch --backend ring --hosts H1,H2 -- mlxd serve --distributed ring ..."
        )
    environments = rank_environments(backend, len(hosts))
    os.environ.update(environments[0])
    followers = LocalFollowers()
    for environment in environments[1:]:
        env = {**os.environ, **environment}
        # Their own session: a terminal's Ctrl-C (or a supervisor's signal to rank 0's group)
        # reaches rank 0 alone, which stops them with its last plan.
        followers.processes.append(
            subprocess.Popen(follower_command, env=env, start_new_session=True)
        )
    logger.info(
        "started %d follower(s) on this machine over %s: pids %s",
        len(followers.processes),
        backend,
        followers.alive(),
    )
    return followers
