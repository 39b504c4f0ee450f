"""EngineThread: one OS thread that owns an MLX stream and a model for its whole life.

Invariants:
- The thread creates its stream, loads the model and makes every MLX call; nothing else does.
- Other threads talk to it only through `post` (a thread-safe inbox of plain Python messages).
- If a step (or handling a message) raises, every sequence in flight is failed with
  EngineFailed and the loop goes on; requests accepted later are served normally. If the loop
  itself dies (an error while failing requests, a BaseException), it is restarted in place.
- `last_progress` is stamped every loop iteration; a busy engine whose stamp is old is hung.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from typing import Any, cast

from engines.errors import EngineFailed, EngineUnavailable, Overloaded

logger = logging.getLogger(__name__)

_STOP = object()


class EngineThread:
    """Base class: subclasses implement `load`, `handle`, `has_work`, `step`, `fail_all`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._stopped = threading.Event()
        self.last_progress = time.monotonic()  # when the loop last started an iteration
        self.failures = 0  # steps that raised (each failed the requests then in flight)
        self.restarts = 0  # times the step loop itself died and was started again
        self._stopping = False  # a stop order was seen (kept across loop restarts)
        self.weights_bytes = 0  # memory the loaded model's parameters take (set by `load`)
        self._accepted = 0  # requests accepted and not finished (see `accept_request`)
        self._admission = threading.Lock()

    # -- any thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    async def wait_loaded(self) -> None:
        """Wait until the model is loaded; raise EngineUnavailable if loading failed."""
        # Waiting on a threading.Event off the loop is fine: no MLX runs in that helper thread.
        await asyncio.to_thread(self._loaded.wait)
        if self._load_error is not None:
            raise EngineUnavailable(f"model {self.name!r} failed to load: {self._load_error}")

    @property
    def running(self) -> bool:
        return self._loaded.is_set() and self._load_error is None and not self._stopped.is_set()

    def stalled(self, busy: bool, threshold_s: float) -> bool:
        """True when the engine has work (`busy`) but its loop has not moved for `threshold_s`:
        a step is hung (the watchdog behind /health)."""
        return busy and time.monotonic() - self.last_progress > threshold_s

    def post(self, message: Any) -> None:
        self._inbox.put(message)

    @property
    def accepted(self) -> int:
        """Requests accepted (`accept_request`) and not yet finished. Engines that count their
        work this way report it as `active`; the chat engine counts choices in its front."""
        return self._accepted

    def accept_request(self, limit: int, what: str, retry_after_s: int = 1) -> None:
        """Count one more accepted request, or raise Overloaded when `limit` of them (`what`:
        "transcriptions", say) are in progress. Any thread; `finish_request` undoes it."""
        with self._admission:
            if self._accepted >= limit:
                raise Overloaded(
                    f"model '{self.name}' has {self._accepted} {what} in progress, the most it "
                    "accepts; retry shortly",
                    retry_after_s=retry_after_s,
                )
            self._accepted += 1

    def finish_request(self) -> None:
        """One accepted request finished (or failed, or was cancelled)."""
        with self._admission:
            self._accepted -= 1

    def measure_weights(self, model: Any) -> None:
        """Set `weights_bytes` from the model's parameters (engine thread, at load)."""
        from mlx.utils import tree_flatten

        parameters = cast(list[tuple[str, Any]], tree_flatten(model.parameters()))
        self.weights_bytes = sum(int(array.nbytes) for _, array in parameters)

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to finish its work in flight, unload and exit; wait for it."""
        self._inbox.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        import mlx.core as mx

        try:
            stream = mx.new_stream(mx.default_device())
            with mx.stream(stream):
                self.load()
        except BaseException as exc:
            logger.exception("engine %s failed to load", self.name)
            self._load_error = exc
            self._loaded.set()
            self._stopped.set()
            return
        self._loaded.set()
        try:
            with mx.stream(stream):
                self._serve_until_stopped()
        finally:
            self._stopped.set()
            # Anything that arrived with or after the stop order is refused, never left hanging.
            self._drain_inbox(block=False)
            self.fail_all(EngineUnavailable(f"model {self.name!r} is shutting down"))
            self.unload()

    def _serve_until_stopped(self) -> None:
        """The step loop, restarted in place if it ever dies: whatever escapes it (an error
        while failing requests, a BaseException from a step) fails the requests in flight and
        the loop starts again on the same thread, stream and model."""
        while True:
            try:
                self._loop()
                return
            except BaseException as exc:  # the engine must outlive any failure
                logger.exception("engine %s loop died; restarting it", self.name)
                self.restarts += 1
                self.failures += 1
                with contextlib.suppress(Exception):
                    self.fail_all(EngineFailed(f"engine error: {type(exc).__name__}: {exc}"))

    def _loop(self) -> None:
        while not (self._stopping and not self.has_work()):
            self.last_progress = time.monotonic()
            try:
                self._stopping = self._drain_inbox(block=not self.has_work()) or self._stopping
                if self.has_work():
                    self.step()
            except Exception as exc:
                # Only the requests in flight fail; the thread, its stream and the model
                # stay, so the engine goes on serving what comes next.
                logger.exception("engine %s step failed", self.name)
                self.failures += 1  # first, so readers woken by fail_all see it
                self.fail_all(EngineFailed(f"engine error: {type(exc).__name__}: {exc}"))

    def wait_for_message(self, timeout_s: float) -> bool:
        """From a step: wait up to `timeout_s` for a message and handle what has arrived;
        True once a stop was seen."""
        return self._drain_inbox(block=True, timeout_s=timeout_s)

    def _drain_inbox(self, block: bool, timeout_s: float | None = None) -> bool:
        """Handle queued messages (waiting for one, up to `timeout_s`, if `block`); True once a
        stop was seen."""
        stop_seen = False
        while True:
            try:
                message = self._inbox.get(block=block, timeout=timeout_s)
            except queue.Empty:
                return stop_seen
            block = False
            if message is _STOP:
                stop_seen = True
            else:
                self.handle(message)

    def load(self) -> None:
        raise NotImplementedError

    def unload(self) -> None:
        """Release what `load` made; runs on the engine thread when it exits."""

    def handle(self, message: Any) -> None:
        raise NotImplementedError

    def has_work(self) -> bool:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def fail_all(self, error: Exception) -> None:
        raise NotImplementedError
