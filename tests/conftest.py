"""Test set-up shared by every tier. OpenBLAS is preloaded before anything imports MLX."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engines import blas

blas.preload_from_env()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefix cache entries spill to MLXD_HOME only in the tests that ask for it (runs stay independent).
os.environ.setdefault("MLXD_PREFIX_DISK_MB", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `optin` (large extra models) run only with MLXD_OPTIN=1."""
    if os.environ.get("MLXD_OPTIN") == "1":
        return
    skip = pytest.mark.skip(reason="opt-in: set MLXD_OPTIN=1 (downloads and runs a larger model)")
    for item in items:
        if "optin" in item.keywords:
            item.add_marker(skip)


def running_children() -> list[int]:
    """This process's child processes that have not exited (zombies left out)."""
    children = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue
            if state != "Z":
                children.append(int(pid))
    return children


@pytest.fixture(scope="module", autouse=True)
def no_process_outlives_its_module() -> Iterator[None]:
    """A module that leaves a child process running fails in its own teardown, and the process
    is killed: left running, it would load the machine and surface later as another module's
    timeout or ResourceWarning. Garbage is collected here too, so that a leaked file or process
    object warns in the module that dropped it. (Linux /proc only; a no-op elsewhere.)"""
    yield
    gc.collect()
    if not Path("/proc/self/task").is_dir():
        return
    deadline = time.monotonic() + 10  # a server being stopped may take a moment to exit
    leaked = running_children()
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)
        leaked = running_children()
    commands = {pid: _command_line(pid) for pid in leaked}
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"child processes left running (now killed): {commands}"


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except FileNotFoundError:
        return "?"
