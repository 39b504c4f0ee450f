"""Ctrl-C during `mlxd pull` (a real process, a real SIGINT, mid-file): one line, exit status 130,
the partial file kept; the next pull fetches only the bytes it lacks."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from engines.weights.hub_cache import complete_snapshot, repo_folder
from server.__main__ import main
from tests.hub_fixture import FakeHub, FakeRepo, RunningHub
from tests.tiny import save_model_dir, tiny_model

REPO, WEIGHTS = "org/tiny", "model.safetensors"
# The pull in a child process, reading 16 KiB at a time (huggingface_hub's 10 MiB default would
# buffer the whole tiny file, leaving nothing written when the signal comes). The hub pauses after
# whole chunks: a part-chunk would wait in the reader until its 10 s timeout, then be retried.
CHUNK = 16 * 1024
PAUSE = 8 * CHUNK
# Ctrl-C's default action first, as a shell gives it. In full suite runs the pull now and then
# never acted on the test's SIGINT (its stacks, below, showed it in the read through the signal
# and the hub's 30 s close) as a process started with SIGINT ignored behaves: a child inherits
# an ignored SIGINT. What in this process ignores it at times is not found (system(), which
# libmlx calls, ignores SIGINT in its caller while it runs; a 20 ms sampler saw nothing).
# SIGUSR1 makes it print every thread's stack (faulthandler): the test's report if it hangs.
PULL = (
    "import faulthandler, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "from huggingface_hub import constants; constants.DOWNLOAD_CHUNK_SIZE = "
    f"{CHUNK}; "
    "from server.__main__ import main; sys.exit(main(['pull', sys.argv[1]]))"
)


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return save_model_dir(tiny_model(), "llama", tmp_path / "tiny")


@pytest.fixture
def hub(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub({REPO: FakeRepo.from_dir(tiny_dir)})
    running = RunningHub(fake)
    for name, value in (
        ("HF_ENDPOINT", fake.endpoint),
        ("HF_HUB_CACHE", str(tmp_path / "hf")),
        ("HF_HUB_OFFLINE", "0"),
        ("MLXD_HOME", str(tmp_path / "mlxd")),
    ):
        monkeypatch.setenv(name, value)
    yield fake
    fake.gate.set()
    running.close()


def _wait_for(folder: Path, size: int) -> Path:
    """The partial file under `folder` once it holds `size` bytes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for partial in folder.glob("blobs/*.incomplete"):
            if partial.stat().st_size >= size:
                return partial
        time.sleep(0.02)
    raise AssertionError(f"no partial file of {size} bytes under {folder}")


def _interrupted(child: subprocess.Popen[str]) -> tuple[str, str]:
    """The child's output once it has exited after the SIGINT already sent; if it has not
    within 30 s, its stacks in the failure."""
    try:
        return child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGUSR1)
        time.sleep(1)
        child.kill()
        _, err = child.communicate()
        raise AssertionError(f"the pull ignored SIGINT; its stacks:\n{err}") from None


def test_ctrl_c_keeps_the_partial_file_and_the_next_pull_resumes(
    hub: FakeHub, tiny_dir: Path, tmp_path: Path
) -> None:
    size = (tiny_dir / WEIGHTS).stat().st_size
    assert size > 2 * PAUSE
    hub.pause_after[WEIGHTS] = PAUSE
    hub.gate.clear()
    # A read timeout well past the test's own waits: on a loaded machine huggingface_hub's 10 s
    # would end the paused read and resume it, fetching past the pause before the signal.
    child = subprocess.Popen(
        [sys.executable, "-c", PULL, REPO],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_DOWNLOAD_TIMEOUT": "120"},
    )
    folder = repo_folder(tmp_path / "hf", REPO)
    with child:  # closes its pipes; killed below if it outlives the test
        try:
            partial = _wait_for(folder, PAUSE)
        finally:
            child.send_signal(signal.SIGINT)
        try:
            _, err = _interrupted(child)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 130, err
    assert err.splitlines()[-1] == f"mlxd: pull of {REPO} interrupted; run it again to resume"
    assert "Traceback" not in err
    assert partial.stat().st_size == PAUSE  # kept, as far as it got
    assert complete_snapshot(tmp_path / "hf", REPO) is None

    hub.pause_after.clear()
    hub.gate.set()
    before = hub.served[WEIGHTS]
    assert main(["pull", REPO]) == 0
    assert hub.served[WEIGHTS] - before == size - PAUSE  # only the bytes it lacked
    snapshot = complete_snapshot(tmp_path / "hf", REPO)
    assert snapshot is not None
    digest = hashlib.sha256((snapshot / WEIGHTS).read_bytes()).hexdigest()
    assert digest == hashlib.sha256((tiny_dir / WEIGHTS).read_bytes()).hexdigest()
