"""Progress of one pull: a bar on a terminal, a log line every few seconds otherwise, and a
fraction the pool shows ("downloading 42%").

Invariant: `advance` may be called from the downloading thread while `fraction` is read from the
event loop; both touch only ints under a lock.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)


class PullProgress:
    def __init__(self, label: str, bar: bool | None = None, log_every_s: float = 5.0) -> None:
        """`bar`: draw a tqdm bar (default: when stderr is a terminal); else log lines."""
        self.label = label
        self._bar_wanted = sys.stderr.isatty() if bar is None else bar
        self._log_every_s = log_every_s
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._last_log = 0.0
        self._bar: Any = None

    def start(self, total_bytes: int) -> None:
        with self._lock:
            self._total, self._done = total_bytes, 0
        if self._bar_wanted:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=self.label
            )
        else:
            logger.info("pulling %s: %s", self.label, _size(total_bytes))

    def begin_file(self, name: str, size: int, sha256: str | None) -> None:
        """A file of the pull starts: the `advance`s until the next one are its bytes (`sha256`:
        its LFS hash, None for a small file). Shown by subclasses (Ollama's per-file lines)."""

    def advance(self, count: int) -> None:
        with self._lock:
            self._done += count
            done, total = self._done, self._total
        if self._bar is not None:
            self._bar.update(count)
        elif time.monotonic() - self._last_log >= self._log_every_s and total:
            self._last_log = time.monotonic()
            logger.info(
                "pulling %s: %d%% (%s of %s)", self.label, 100 * done // total, _size(done),
                _size(total),
            )  # fmt: skip

    def finish(self, interrupted: bool = False) -> None:
        """Close the bar; log the pull's size unless it was `interrupted`."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not interrupted:
            logger.info("pulled %s (%s)", self.label, _size(self._total))

    @property
    def fraction(self) -> float:
        """0.0 … 1.0 of the bytes the pull needs (0.0 until the listing is known)."""
        with self._lock:
            return min(self._done / self._total, 1.0) if self._total else 0.0


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"
