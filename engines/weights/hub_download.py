"""A hub model the pool serves before it is in the cache: downloaded on first use, on a thread of
its own, while requests for it get 503 + Retry-After saying how far along it is.

Invariants:
- One download at a time per model; it runs on a dedicated thread (a GGUF quant is imported with
  MLX after the download, so never in a thread pool).
- `check()` and `status` are called on the event loop; the thread publishes only plain values
  (the path, the weights' size, the error) under a lock, and the progress fraction
  (hub_progress.PullProgress).
- A failed download is reported to the request that finds it, then the next request starts a new
  one (which resumes the partial files).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from engines.errors import EngineUnavailable, ModelNotFound
from engines.weights.hub import pull_model
from engines.weights.hub_cache import HubConfig
from engines.weights.hub_files import RepoRef
from engines.weights.hub_progress import PullProgress
from engines.weights.store import ModelStore

RETRY_AFTER_S = 5


class ModelDownloading(EngineUnavailable):
    """The model is being downloaded: retry later (503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message, param="model")
        self.retry_after_s = retry_after_s


class ModelDownload:
    def __init__(
        self,
        ref: RepoRef,
        hub: HubConfig,
        store: ModelStore,
        progress: PullProgress | None = None,
        check_hub: bool = False,
    ) -> None:
        """`progress`: where the download's progress goes (default: log lines); `check_hub`: ask
        the hub even when the snapshot is cached (an explicit pull), as `pull_model` says."""
        self.ref, self._hub, self._store = ref, hub, store
        self._check_hub = check_hub
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._path: Path | None = None
        self._size_bytes = 0
        self._error: Exception | None = None
        self._progress = progress or PullProgress(str(ref), bar=False)
        self._finished = asyncio.Event()

    @property
    def path(self) -> Path:
        """The downloaded model's directory (only once `ready`)."""
        assert self._path is not None, "the download has not finished"
        return self._path

    @property
    def size_bytes(self) -> int:
        """The downloaded model's weights (what it takes loaded): 0 until `ready`."""
        with self._lock:
            return self._size_bytes

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._path is not None

    @property
    def status(self) -> str | None:
        """'downloading 42%' while it runs, None before it starts and once it is ready."""
        running = self._thread is not None and self._thread.is_alive()
        return f"downloading {int(100 * self._progress.fraction)}%" if running else None

    def check(self) -> None:
        """Return when the model is downloaded; else start the download (if it is not running)
        and raise ModelDownloading, or raise the error that ended the last attempt."""
        with self._lock:
            if self._path is not None:
                return
            error, self._error = self._error, None
        if error is not None:
            raise error
        if self._thread is None or not self._thread.is_alive():
            self._start()
        raise ModelDownloading(
            f"The model '{self.ref}' is being downloaded ({self.status or 'starting'}); "
            f"retry in {RETRY_AFTER_S} s"
        )

    async def wait(self) -> None:
        """Start the download if need be and wait for it to end (raising its error)."""
        try:
            self.check()
        except ModelDownloading:
            await self._finished.wait()
            self.check()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._finished.clear()
        self._thread = threading.Thread(
            target=self._run, args=(loop,), name=f"download-{self.ref}", daemon=True
        )
        self._thread.start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            path = pull_model(
                self.ref, self._hub, self._store, self._progress, _on_cpu(), self._check_hub
            )
            size = self._store.size_bytes(path)
        except Exception as exc:  # reported to the next request, which retries
            with self._lock:
                self._error = exc
        else:
            with self._lock:
                self._path, self._size_bytes = path, size
        loop.call_soon_threadsafe(self._finished.set)


def _on_cpu() -> bool:
    """GGUF quants are imported as float32 on CPU (MLX's quantized CPU matmul is no faster)."""
    import mlx.core as mx

    return bool(mx.default_device() == mx.cpu)


def served_name(store: ModelStore, source: str) -> str:
    """The name a source is served under: its store/cache name, or the repo reference of a hub
    model still to download (ModelNotFound when it is neither)."""
    try:
        return store.resolve(source)[0]
    except ModelNotFound:
        ref = RepoRef.parse(source)
        if ref is None or HubConfig.from_env().offline:
            raise
        return str(ref)


def hub_source(store: ModelStore, source: str) -> ModelDownload:
    """A download for a models-file source that is not available locally: a repo reference,
    with the hub reachable (not HF_HUB_OFFLINE); ModelNotFound otherwise."""
    ref = RepoRef.parse(source)
    hub = HubConfig.from_env()
    if ref is None or hub.offline:
        store.resolve(source)  # raises ModelNotFound with the full explanation
        raise ModelNotFound(f"model {source!r} is not available", param="model")
    return ModelDownload(ref, hub, store)
