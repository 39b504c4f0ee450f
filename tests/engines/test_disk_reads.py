"""Prefix cache entries read back from disk on the disk's own thread (PrefixCache.ready,
DiskPrefixCache.start_read): while a waiting request's entry is read, the running rows keep
decoding and an idle scheduler polls instead of spinning; the request then resumes from the entry
with mlx-lm's tokens; an unsound file read there is dropped, not served; files written by MLX's own
`save_safetensors` (earlier versions) read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load

import engines.llm.scheduler as scheduler_module
from engines.llm import disk_cache, entry_file
from engines.llm.disk_cache import DiskPrefixCache
from engines.llm.disk_worker import DiskWorker
from engines.llm.prefix_cache import PrefixCache
from engines.llm.scheduler import Scheduler
from engines.types import GenerationRequest, SamplingParams
from tests.engines.test_disk_worker import Gate
from tests.engines.test_scheduler import ListSink, build

PROMPT = [(7 * j) % 240 + 5 for j in range(40)]
OTHER = [(11 * j) % 230 + 9 for j in range(24)]
WAIT_S = 10


@pytest.fixture(autouse=True)
def short_entries_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_cache, "MIN_TOKENS", 16)
    monkeypatch.setattr(scheduler_module, "ARRIVAL_QUIET_S", 0.0)  # admit at the first step


@pytest.fixture
def worker() -> Any:
    spill = DiskWorker()
    yield spill
    spill.close()


def filled(model: Any, tokens: list[int]) -> list[Any]:
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([tokens]), cache=cache))
    return cache


def greedy(model: Any, prompt: list[int], count: int) -> list[int]:
    return [int(t) for t, _ in generate_step(mx.array(prompt), model, max_tokens=count)]


def with_prompt_on_busy_disk(
    model_dir: Path, directory: Path, worker: DiskWorker
) -> tuple[Scheduler, Any, DiskPrefixCache, Gate]:
    """A scheduler whose prefix cache has PROMPT's entry on disk only, and the disk's thread held
    by a gate (a read waits behind it until the gate opens)."""
    scheduler, model, _ = build(model_dir)
    disk = DiskPrefixCache(directory, "id", max_bytes=2**30, worker=worker)
    disk.save(tuple(PROMPT), filled(model, PROMPT))
    scheduler.prefix_cache = PrefixCache(2**30, disk=disk)
    gate = Gate()
    worker.submit(gate)
    assert gate.entered.wait(WAIT_S)
    return scheduler, model, disk, gate


def test_running_rows_decode_while_an_entry_is_read(
    tiny_model_dir: Path, tmp_path: Path, worker: DiskWorker
) -> None:
    scheduler, model, disk, gate = with_prompt_on_busy_disk(tiny_model_dir, tmp_path, worker)
    running = ListSink()
    scheduler.insert(GenerationRequest("running", OTHER, 30, SamplingParams(0.0)), running)
    scheduler.step()
    resumed = ListSink()
    follow_up = [*PROMPT, 9, 9]
    scheduler.insert(GenerationRequest("resumed", follow_up, 6, SamplingParams(0.0)), resumed)
    before = len(running.tokens)
    for _ in range(5):
        scheduler.step()
    assert len(running.tokens) >= before + 5  # not held up by the read
    assert resumed.events == [] and disk.reading(tuple(PROMPT))
    gate.open()
    for _ in range(200):
        if not scheduler.has_work():
            break
        scheduler.step()
    assert resumed.finish is not None and resumed.finish.usage.cached_tokens == len(PROMPT)
    assert resumed.tokens == greedy(model, follow_up, 6)
    assert running.tokens == greedy(model, OTHER, 30)
    assert disk.hits == 1


def test_an_idle_scheduler_polls_for_the_read_instead_of_spinning(
    tiny_model_dir: Path, tmp_path: Path, worker: DiskWorker
) -> None:
    scheduler, model, _, gate = with_prompt_on_busy_disk(tiny_model_dir, tmp_path, worker)
    sink = ListSink()
    scheduler.insert(GenerationRequest("r", [*PROMPT, 3], 4, SamplingParams(0.0)), sink)
    assert scheduler.step() == scheduler_module.DISK_POLL_S
    assert scheduler.step() == scheduler_module.DISK_POLL_S
    gate.open()
    worker.flush()
    for _ in range(50):
        if not scheduler.has_work():
            break
        scheduler.step()
    assert sink.tokens == greedy(model, [*PROMPT, 3], 4)


def test_an_unsound_file_read_in_the_background_is_dropped(
    tiny_model_dir: Path, tmp_path: Path, worker: DiskWorker
) -> None:
    model = load(str(tiny_model_dir))[0]
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30, worker=worker)
    disk.save(tuple(PROMPT), filled(model, PROMPT))
    worker.flush()
    (file,) = disk.directory.glob("*.safetensors")
    data = bytearray(file.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the arrays
    file.write_bytes(bytes(data))
    memory = PrefixCache(2**30, disk=disk)
    assert not memory.ready([*PROMPT, 9])  # the read starts
    worker.flush()
    assert memory.ready([*PROMPT, 9])  # it failed: nothing better to wait for
    worker.flush()
    assert memory.lookup([*PROMPT, 9]) == (None, 0)
    assert disk.dropped == 1 and not file.exists() and len(disk) == 0


def test_entries_written_by_mlx_itself_read_back(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Files from versions that wrote with `mx.save_safetensors` are served, as before."""
    model = load(str(tiny_model_dir))[0]
    cache = filled(model, PROMPT)
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30)
    flat = tree_flatten([layer.state for layer in cache])
    arrays = {name: value for name, value in flat if isinstance(value, mx.array)}
    text = ",".join(str(t) for t in PROMPT)
    chunks = [(name, entry_file.array_bytes(array)) for name, array in arrays.items()]
    metadata = {
        "format": disk_cache.FORMAT,
        "identity": "id",
        "tokens": text,
        "trimmable": "1",
        "classes": json.dumps([type(layer).__name__ for layer in cache]),
        "scalars": json.dumps({name: v for name, v in flat if not isinstance(v, mx.array)}),
        "checksum": entry_file.checksum(text, chunks),
    }
    mx.save_safetensors(str(disk.directory / "old.safetensors"), arrays, metadata=metadata)
    back = DiskPrefixCache(tmp_path, "id", max_bytes=2**30).load(tuple(PROMPT))
    assert back is not None
    for mine, theirs in zip(back, cache, strict=True):
        assert mx.array_equal(mine.state[0], theirs.state[0])
        assert mx.array_equal(mine.state[1], theirs.state[1])
