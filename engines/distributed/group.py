"""Forming the group: which hosts, which backend, and starting the followers on this machine.

Three ways to start a group, all through MLX's own backends (ring over TCP, JACCL over
Thunderbolt RDMA, NCCL on CUDA, MPI):
- Under `mlx.launch` (any hosts, over ssh): every process already has `MLX_RANK` (and the
  backend's variables); rank 0 serves HTTP, the others run as followers. Nothing is spawned.
- On one machine (every host a loopback address): rank 0 spawns the followers itself
  (`mlxd follower`), with the environment `mlx.launch` would give them (a ring hostfile of free
  loopback ports; NCCL's rendezvous address and one GPU per rank). Tests and the two-GPU
  benchmark use this.
- As a lasting cluster: one service per host (`mlxd service install --distributed B --hosts H
  --rank R`, server/service.py), whose manager gives the process the environment `mlx.launch`
  would (`cluster_environment`) and restarts it after a lost group.

Invariant: `mx.distributed.init` runs once per process, on the engine thread (a group that broke
cannot be formed again in the same process: the process must restart, `restart_process`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlx._distributed_utils.common import Host

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SPAWNABLE = ("ring", "nccl")  # backends whose local environment we know how to set up


RING_PORT = 32323  # mlx.launch's --starting-port: the ring's first port, JACCL's coordinator
NCCL_PORT = 12345  # mlx.launch's --nccl-port


def read_hosts(hosts: str) -> list[Host]:
    """The group's hosts, rank 0 first, read by mlx.launch's own parser: a comma-separated
    list, or a hostfile (a JSON list of {"ssh": name, "ips": [...], "rdma": [...]}, or an
    object with "hosts", as `mlx.distributed_config` writes)."""
    from mlx._distributed_utils.common import Host, Hostfile

    path = Path(hosts)
    try:
        if not path.is_file():
            return list(Hostfile.from_list(",".join(h.strip() for h in hosts.split(","))).hosts)
        # Hostfile.from_file's own reading, without the file handle it leaves open.
        data = json.loads(path.read_text())
        entries = data["hosts"] if isinstance(data, dict) else data
        return [
            Host(rank, entry["ssh"], entry.get("ips", []), entry.get("rdma", []))
            for rank, entry in enumerate(entries)
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--hosts {hosts} is not an mlx.launch hostfile or list: {exc}") from exc


def parse_hosts(hosts: str) -> list[str]:
    """One address per rank, rank 0 first (an IP where the hostfile gives one, else the name)."""
    return [(host.ips or [host.ssh_hostname])[0] for host in read_hosts(hosts)]


def cluster_environment(
    backend: str, hosts: list[Host], rank: int, port: int = RING_PORT
) -> tuple[dict[str, str], dict[str, str]]:
    """What `mlx.launch` gives rank `rank` of `hosts`, for a service manager to give it instead:
    the variables, and the files (variable → text: the caller writes each file and sets the
    variable to its path, as mlx.launch does with MLX_HOSTFILE and MLX_IBV_DEVICES)."""
    if not 0 <= rank < len(hosts):
        raise ValueError(f"--rank {rank} is not in 0..{len(hosts) - 1} (one rank per host)")
    if any(not host.ips for host in hosts):
        names = [host.ssh_hostname for host in hosts if not host.ips]
        raise ValueError(f"a cluster needs each host's IP address, not a name: {names}")
    variables = {"MLX_RANK": str(rank)}
    if backend == "ring":
        # As mlx.launch numbers them: one port per address, counting up across hosts.
        ports = iter(range(port, port + sum(len(host.ips) for host in hosts)))
        ring = [[f"{ip}:{next(ports)}" for ip in host.ips] for host in hosts]
        return variables, {"MLX_HOSTFILE": json.dumps(ring)}
    if backend == "jaccl":
        if any(len(host.rdma) != len(hosts) for host in hosts):
            raise ValueError("a JACCL hostfile lists, for every host, its RDMA device to each host")
        variables["MLX_JACCL_COORDINATOR"] = f"{hosts[0].ips[0]}:{port}"
        return variables, {"MLX_IBV_DEVICES": json.dumps([host.rdma for host in hosts])}
    if backend == "nccl":
        variables |= {"NCCL_HOST_IP": hosts[0].ips[0], "NCCL_PORT": str(NCCL_PORT)}
        return variables | {"MLX_WORLD_SIZE": str(len(hosts))}, {}
    raise ValueError(f"{backend} ranks are started by mpirun: use mlx.launch --backend {backend}")


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
    """Followers this process started (ranks 1..n-1 on this machine), and this process's
    environment from before it became rank 0 (what a restart starts from)."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    environment_before: dict[str, str] | None = None

    def alive(self) -> list[int]:
        return [p.pid for p in self.processes if p.poll() is None]

    def first_exited(self) -> str | None:
        """Which follower has exited, and how (None while all run): rank 0 sees a local
        follower's death at once, without waiting for a collective to notice it (a ring of
        three or more ranks retries a lost peer for seconds, or hands back zeros)."""
        for rank, process in enumerate(self.processes, start=1):
            status = process.poll()
            if status is not None:
                how = f"killed by signal {-status}" if status < 0 else f"exited with {status}"
                return f"follower rank {rank} (pid {process.pid}) {how}"
        return None

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
    followers = LocalFollowers(environment_before=dict(os.environ))
    os.environ.update(environments[0])
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


def restart_process(followers: LocalFollowers) -> None:
    """Start this process over to form its group again (never returns). One that started its
    followers re-executes its own command line with its environment from before (so it spawns
    new followers on new ports); one started by mlx.launch or a service manager exits with
    status 3 (a failure: launchd's KeepAlive and systemd's Restart=on-failure start it again,
    and the followers, which exit when their leader is gone, are restarted by theirs)."""
    followers.stop(timeout_s=0.5)
    for handler in logging.getLogger().handlers:
        handler.flush()
    if followers.environment_before is not None:
        os.execve(sys.executable, sys.orig_argv, followers.environment_before)
    os._exit(3)
