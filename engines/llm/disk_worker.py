"""DiskWorker: the prefix cache's disk work (checksum and write, rename, touch, delete, and
reading and verifying an entry) on a thread of its own, so an entry going to or coming from disk
does not hold up the engine thread and every stream on it. Measured on an H200 with 8 streams of
~550 tokens each: the disk tier's checksums and writes were ~9% of the engine thread's samples,
all of it a stall of every row.

Only plain Python values cross to this thread (bytes, paths, strings) and back (bytes and
metadata through a queue): the engine thread copies an entry's arrays to bytes before it submits
the write and builds arrays from a verified read's bytes; MLX is never called here.

Invariants: operations run one at a time in the order submitted (a delete submitted after a
write of the same file runs after it); `flush` returns once everything submitted before it has
run; at most `max_pending_bytes` of submitted writes wait at once — `submit` blocks the caller
beyond that, so a slow disk slows spilling down to the disk's pace instead of filling memory;
an operation that fails is logged and dropped (a file that was not written is a cache miss, its
reader drops the entry); `close` flushes and ends the thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

logger = logging.getLogger(__name__)

MAX_PENDING_BYTES = 512 * 2**20


class DiskWorker:
    def __init__(self, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._queue: deque[tuple[Callable[[], None], int]] = deque()
        self._pending_bytes = 0
        self._running = False  # an operation taken off the queue and not finished
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="mlxd-prefix-disk", daemon=True)
        self._thread.start()

    def submit(self, operation: Callable[[], None], nbytes: int = 0) -> None:
        """Queue `operation` (holding `nbytes` of data to write); blocks while the queue holds
        more than `max_pending_bytes` (one operation alone is always let in)."""
        with self._changed:
            if self._closed:
                raise RuntimeError("the disk worker is closed")
            while self._queue and self._pending_bytes + nbytes > self.max_pending_bytes:
                self._changed.wait()
            self._queue.append((operation, nbytes))
            self._pending_bytes += nbytes
            self._changed.notify_all()

    def flush(self) -> None:
        """Wait until every operation submitted so far has run."""
        with self._changed:
            while self._queue or self._running:
                self._changed.wait()

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return  # closed and drained
                operation, nbytes = self._queue.popleft()
                self._running = True
            try:
                operation()
            except Exception:  # a cache: a failed write is a later miss, never a crash
                logger.exception("prefix cache: a disk operation failed")
            finally:
                with self._changed:
                    self._running = False
                    self._pending_bytes -= nbytes
                    self._changed.notify_all()
