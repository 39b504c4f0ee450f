"""The prefix cache's disk work on a worker thread (engines/llm/disk_worker.py, and
engines/llm/disk_cache.py given a DiskWorker): operations run in order, `save` returns without
waiting for the disk, a read waits for the writes before it, an entry evicted before its write ran
leaves no file, the files are the safetensors MLX itself reads (byte layout, dtypes, metadata),
their sizes are counted exactly, and a slow disk holds spilling to `max_pending_bytes`."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import KVCache

from engines.llm import disk_cache, entry_file
from engines.llm.disk_cache import DiskPrefixCache
from engines.llm.disk_worker import DiskWorker
from engines.llm.quantized_cache import QuantizedKV

TOKENS = tuple(range(5, 45))
WAIT_S = 10  # a bound for waits that must end: a hang fails the test instead of the suite


@pytest.fixture(autouse=True)
def short_entries_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_cache, "MIN_TOKENS", 16)


@pytest.fixture
def worker() -> Any:
    spill = DiskWorker()
    yield spill
    spill.close()


def layer(dtype: mx.Dtype = mx.bfloat16, seed: int = 0) -> KVCache:
    cache = KVCache()
    keys = mx.random.normal((1, 2, len(TOKENS), 8), key=mx.random.key(seed)).astype(dtype)
    cache.update_and_fetch(keys, keys * 3)
    return cache


class Gate:
    """An operation that holds the worker until `open` is called."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.opened.wait(WAIT_S)

    def open(self) -> None:
        self.opened.set()


def test_operations_run_in_order_and_a_failure_does_not_stop_the_rest(worker: DiskWorker) -> None:
    done: list[int] = []

    def fail() -> None:
        raise OSError("disk full")

    worker.submit(lambda: done.append(1))
    worker.submit(fail)
    worker.submit(lambda: done.append(2), nbytes=10)
    worker.flush()
    assert done == [1, 2]


def test_a_full_queue_holds_the_submitter_until_the_disk_catches_up() -> None:
    worker = DiskWorker(max_pending_bytes=100)
    gate = Gate()
    worker.submit(gate, nbytes=60)
    assert gate.entered.wait(WAIT_S)
    worker.submit(lambda: None, nbytes=60)  # queued behind the gate: 120 pending, let in alone
    third_in = threading.Event()
    submitter = threading.Thread(
        target=lambda: (worker.submit(lambda: None, nbytes=60), third_in.set())
    )
    submitter.start()
    time.sleep(0.2)
    assert not third_in.is_set()  # over the bound: waits
    gate.open()
    assert third_in.wait(WAIT_S)
    submitter.join(WAIT_S)
    worker.close()


def test_save_returns_before_the_write_and_a_load_waits_for_it(
    worker: DiskWorker, tmp_path: Path
) -> None:
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30, worker=worker)
    gate = Gate()
    worker.submit(gate)
    assert gate.entered.wait(WAIT_S)
    original = layer()
    disk.save(TOKENS, [original])  # returns while the worker is held
    assert len(disk) == 1 and not list(disk.directory.glob("*.safetensors"))
    threading.Timer(0.2, gate.open).start()
    (back,) = disk.load(TOKENS) or [None]  # waits for the write, then reads it
    assert isinstance(back, KVCache) and back.offset == len(TOKENS)
    assert mx.array_equal(back.state[0], original.state[0])
    assert mx.array_equal(back.state[1], original.state[1])
    (file,) = disk.directory.glob("*.safetensors")
    assert disk.nbytes == file.stat().st_size  # counted exactly before it was written


def test_an_entry_evicted_before_its_write_leaves_no_file(
    worker: DiskWorker, tmp_path: Path
) -> None:
    probe = DiskPrefixCache(tmp_path / "probe", "id", max_bytes=2**30)
    probe.save(TOKENS, [layer()])
    size = probe.nbytes
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=size + size // 2, worker=worker)
    gate = Gate()
    worker.submit(gate)
    assert gate.entered.wait(WAIT_S)
    disk.save(TOKENS, [layer()])
    later = tuple(t + 100 for t in TOKENS)
    disk.save(later, [layer(seed=1)])  # evicts the first while neither is written
    gate.open()
    worker.flush()
    (file,) = disk.directory.glob("*.safetensors")
    assert len(disk) == 1 and disk.nbytes == file.stat().st_size
    assert disk.best([*later, 1], len(later)) == (later, len(later))
    assert disk.best([*TOKENS, 1], len(TOKENS)) == (None, 0)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
def test_the_files_are_the_safetensors_mlx_reads(
    worker: DiskWorker, tmp_path: Path, dtype: mx.Dtype
) -> None:
    """Written by hand off the engine thread, read back by `mx.load`: the same arrays (dtype,
    shape, bytes) and metadata as MLX's own worker gives for the same entry."""
    quantized = QuantizedKV(group_size=32, bits=8)
    keys = mx.random.normal((1, 2, len(TOKENS), 32), key=mx.random.key(2)).astype(dtype)
    quantized.update_and_fetch(keys, keys * 2)
    cache = [layer(dtype), quantized]
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30, worker=worker)
    disk.save(TOKENS, cache)
    worker.flush()
    (file,) = disk.directory.glob("*.safetensors")
    loaded: Any = mx.load(str(file), return_metadata=True)
    arrays, metadata = loaded
    reference = tmp_path / "reference.safetensors"
    mx.save_safetensors(str(reference), arrays, metadata=metadata)
    again: Any = mx.load(str(reference), return_metadata=True)
    assert metadata == again[1] and metadata["checksum"] != entry_file.CHECKSUM_PLACEHOLDER
    assert sorted(arrays) == sorted(again[0])
    for name, array in arrays.items():
        assert array.dtype == again[0][name].dtype and mx.array_equal(array, again[0][name])
    back = DiskPrefixCache(tmp_path, "id", max_bytes=2**30).load(TOKENS)
    assert back is not None and isinstance(back[1], QuantizedKV)
    assert back[0].state[0].dtype == dtype
    assert mx.array_equal(back[0].state[0], cache[0].state[0])


def test_close_finishes_the_writes(tmp_path: Path) -> None:
    worker = DiskWorker()
    disk = DiskPrefixCache(tmp_path, "id", max_bytes=2**30, worker=worker)
    gate = Gate()
    worker.submit(gate)
    assert gate.entered.wait(WAIT_S)
    disk.save(TOKENS, [layer()])
    threading.Timer(0.2, gate.open).start()
    disk.close()
    assert len(list(disk.directory.glob("*.safetensors"))) == 1
    with pytest.raises(RuntimeError):
        worker.submit(lambda: None)
