"""Hub models pulled and deleted while serving (Ollama's `/api/pull` and `/api/delete`), on mlxd's
own hub path: `hub_download.ModelDownload` (a thread of its own; resumable; each file's hash
checked before it is kept; a GGUF quant imported into the store), as `mlxd pull` fetches them.

A pulled model is served as `mlxd serve --model ORG/NAME` serves it: added to the pool under its
repo reference (lazy, unpinned, marked pulled), and recorded in `$MLXD_HOME/pulled.json`
(`PulledRecord`), so that the next start serves it again (server/app.py) until it is deleted.

Invariants:
- One pull or deletion at a time per repo (they share its files): a second pull of it waits for
  the first, then finds its files present; a deletion while one runs is refused (409). The lock
  is this process's: an `mlxd pull` elsewhere is not seen.
- A pull runs to its end as a task of its own, even when the client that asked goes away: its
  model is served once it is done.
- Only models mlxd pulled are deleted (a cache repo holding mlxd's listing, or a GGUF quant's
  import in the store), never one that a configured model serves; a pulled model that is
  loading or serving requests is refused (409), not stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.errors import EngineError, ModelInUse, ModelNotFound
from engines.pool import EnginePool, ModelSpec
from engines.weights.hub import HubError
from engines.weights.hub_cache import HubConfig, hub_cache_dir, remove_repo, repo_folder
from engines.weights.hub_download import ModelDownload
from engines.weights.hub_files import RepoRef
from engines.weights.hub_progress import PullProgress
from engines.weights.store import ModelStore, gguf_store_name
from server.errors import APIError, from_engine_error

logger = logging.getLogger(__name__)

# What Ollama's clients put before a Hugging Face repo (`ollama pull hf.co/ORG/NAME:QUANT`).
_HUB_PREFIXES = ("https://huggingface.co/", "huggingface.co/", "hf.co/")
_MAX_NAME = 128  # a pool name's limit (server/config.py)

Line = dict[str, Any]
# A pull's queue: its progress lines, then None (it succeeded) or the APIError that ended it.
PullLines = asyncio.Queue[Line | APIError | None]


def hub_reference(name: str | None) -> RepoRef:
    """The hub repo a pull names (400 when it names none mlxd can serve by that name)."""
    if not name:
        raise APIError(400, "model is required", param="model")
    text = _without_prefix(name)
    ref = RepoRef.parse(text)
    if ref is None or len(text) > _MAX_NAME:
        raise APIError(
            400,
            f"{name!r} is not a Hugging Face repo: mlxd pulls ORG/NAME (an MLX or safetensors "
            "checkpoint, e.g. mlx-community/Qwen2.5-0.5B-Instruct-4bit) or ORG/NAME:QUANT (one "
            "quant of a GGUF repo)",
            param="model",
        )
    if ref.revision != "main":
        raise APIError(
            400,
            f"{name!r} names a revision: pull it with `mlxd pull` and serve it from a models "
            "file (its entries name it); /api/pull serves a repo's main revision",
            param="model",
        )
    return ref


def _without_prefix(name: str) -> str:
    return next((name[len(p) :] for p in _HUB_PREFIXES if name.startswith(p)), name)


class PulledRecord:
    """`$MLXD_HOME/pulled.json`: the models pulled over the API, in the order pulled. Written
    whole and renamed into place, one change at a time (pulls of two repos may end together, on
    two threads); unreadable, it records nothing."""

    def __init__(self, home: Path) -> None:
        self.path = home / "pulled.json"
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        try:
            names = json.loads(self.path.read_text())["models"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [name for name in names if isinstance(name, str)]

    def add(self, name: str) -> None:
        with self._lock:
            names = self.names()
            if name not in names:
                self._write([*names, name])

    def remove(self, name: str) -> None:
        with self._lock:
            names = self.names()
            if name in names:
                self._write([n for n in names if n != name])

    def _write(self, names: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.tmp")
        partial.write_text(json.dumps({"models": names}, indent=1))
        partial.replace(self.path)


class HubPulls:
    def __init__(
        self,
        pool: EnginePool,
        store: ModelStore,
        spec_for: Callable[[str], ModelSpec],
        record: PulledRecord,
    ) -> None:
        """`spec_for(name)`: the pool entry serving a pulled repo reference."""
        self._pool, self._store, self._spec_for, self._record = pool, store, spec_for, record
        self._locks: dict[str, asyncio.Lock] = {}  # repo id → held while pulling or deleting
        self._tasks: set[asyncio.Task[None]] = set()  # running pulls (kept from the GC)

    def _lock(self, repo_id: str) -> asyncio.Lock:
        return self._locks.setdefault(repo_id, asyncio.Lock())

    def _served(self, name: str) -> ModelSpec | None:
        try:
            return self._pool.spec(name)
        except ModelNotFound:
            return None

    async def start(self, ref: RepoRef) -> PullLines:
        """Start pulling `ref`; its lines. With HF_HUB_OFFLINE set, only a model already
        complete here can be pulled (404 otherwise)."""
        hub = await asyncio.to_thread(HubConfig.from_env)  # imports huggingface_hub once
        if hub.offline:
            try:
                await asyncio.to_thread(self._store.resolve, str(ref))
            except ModelNotFound:
                raise ModelNotFound(
                    f"model '{ref}' not found: it is not in the Hugging Face cache and "
                    "HF_HUB_OFFLINE is set (mlxd downloads nothing)",
                    param="model",
                ) from None
        lines: PullLines = asyncio.Queue()
        task = asyncio.create_task(self._pull(ref, hub, lines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return lines

    async def _pull(self, ref: RepoRef, hub: HubConfig, lines: PullLines) -> None:
        try:
            async with self._lock(ref.repo_id):
                served = self._served(str(ref))
                if served is not None and served.download is not None:
                    # A configured hub model: its own download (a second one would write the
                    # same partial files).
                    lines.put_nowait({"status": "pulling manifest"})
                    await served.download.wait()
                else:
                    progress = _ProgressLines(str(ref), asyncio.get_running_loop(), lines)
                    try:
                        await ModelDownload(ref, hub, self._store, progress, check_hub=True).wait()
                    finally:
                        progress.stop()
                lines.put_nowait({"status": "verifying sha256 digest"})  # per file, as it landed
                lines.put_nowait({"status": "writing manifest"})
                if served is None:  # its spec reads the checkpoint's files: off the loop
                    self._pool.add(await asyncio.to_thread(self._spec_for, str(ref)))
                    logger.info("pulled %s: served from now on", ref)
                if served is None or served.pulled:
                    await asyncio.to_thread(self._record.add, str(ref))
            lines.put_nowait({"status": "success"})
            lines.put_nowait(None)
        except Exception as exc:
            lines.put_nowait(_pull_error(ref, exc))

    async def delete(self, name: str) -> None:
        """Stop serving a model mlxd pulled and delete its files (see the module docstring)."""
        served = self._served(name) or self._served(_without_prefix(name))
        if served is not None and not served.pulled:
            raise APIError(
                409,
                f"model '{name}' is configured for this server (--model or the models file): "
                "mlxd deletes only hub models it pulled that its configuration does not name",
                param="model",
            )
        ref = RepoRef.parse(_without_prefix(name))
        if ref is None:
            raise ModelNotFound(f"model '{name}' not found", param="model")
        lock = self._lock(ref.repo_id)
        if lock.locked():
            raise ModelInUse(f"model '{name}' is being pulled; delete it when that is done")
        async with lock:
            owned = await asyncio.to_thread(self._owned, ref)
            if served is None and owned is None:
                await asyncio.to_thread(self._record.remove, str(ref))  # its files went otherwise
                raise ModelNotFound(f"model '{name}' not found", param="model")
            holder = next(
                (s for s in self._pool.specs() if s is not served and _holds(s, ref)), None
            )
            if holder is not None:
                raise APIError(
                    409,
                    f"model '{name}' holds the files of '{holder.name}', which this server is "
                    "configured to serve",
                    param="model",
                )
            if served is not None:
                await self._pool.remove(served.name)
            await asyncio.to_thread(self._record.remove, str(ref))
            if owned is not None:
                await asyncio.to_thread(self._remove, ref, owned)

    def _owned(self, ref: RepoRef) -> Path | None:
        """Where mlxd keeps what it pulled of `ref`, or None when it pulled none of it."""
        if ref.quant is not None:
            name = gguf_store_name(ref)
            return self._store.path_for(name) if self._store.has(name) else None
        folder = repo_folder(hub_cache_dir(), ref.repo_id)
        return folder if (folder / "mlxd").is_dir() else None

    def _remove(self, ref: RepoRef, owned: Path) -> None:
        if ref.quant is not None:
            freed = self._store.remove(owned.name)
        else:
            freed = remove_repo(hub_cache_dir(), ref.repo_id)
        logger.info("deleted %s (%.1f MiB freed)", ref, freed / 2**20)


def _holds(spec: ModelSpec, ref: RepoRef) -> bool:
    """Whether `spec` serves files that deleting `ref` removes: its source is that repo (a GGUF
    quant: that quant's import)."""
    source = RepoRef.parse(spec.source) if spec.source else None
    if source is None or source.repo_id != ref.repo_id:
        return False
    return source.quant == ref.quant if ref.quant is not None else source.quant is None


def _pull_error(ref: RepoRef, error: Exception) -> APIError:
    """How a failed pull is answered: the hub unreachable, gated or failing is 502; a repo,
    revision or quant it lacks 404; a checkpoint mlxd cannot serve 400."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, HubError):
        return APIError(502, f"pulling {ref}: {error.message}", "server_error", "model")
    if isinstance(error, EngineError):
        return from_engine_error(error)
    if isinstance(error, ValueError):  # a GGUF that cannot be imported, a bad configuration
        return APIError(400, f"pulling {ref}: {error}", param="model")
    logger.exception("pulling %s failed", ref, exc_info=error)
    return APIError(500, f"pulling {ref} failed: {type(error).__name__}", "server_error")


class _ProgressLines(PullProgress):
    """Ollama's progress lines for one pull: "pulling manifest" once the listing is read, then
    per file `{"status": "pulling FILE", "digest", "total", "completed"}` (the digest is
    `sha256:…` for LFS files, else the file's name), at each file's start and end and at most
    every `every_s` between, the latest count always sent within `every_s` (a download that
    stalls shows how far it got). Zero counts are left out, as Ollama leaves them out.

    Invariant: the download thread only hands plain values to the loop (`call_soon_threadsafe`,
    in order); the lines' state is touched on the loop alone."""

    def __init__(
        self, label: str, loop: asyncio.AbstractEventLoop, lines: PullLines, every_s: float = 0.25
    ) -> None:
        super().__init__(label, bar=False)
        self._loop, self._lines, self._every_s = loop, lines, every_s
        self._file: tuple[str, int, str] | None = None  # (name, size, digest)
        self._completed = 0
        self._sent: tuple[float, Any] = (0.0, None)  # when the last line went, and its counts
        self._flush: asyncio.TimerHandle | None = None  # a line due when `every_s` has passed

    # -- on the download thread --

    def start(self, total_bytes: int) -> None:
        super().start(total_bytes)
        self._call(self._lines.put_nowait, {"status": "pulling manifest"})

    def begin_file(self, name: str, size: int, sha256: str | None) -> None:
        self._call(self._begun, (name, size, f"sha256:{sha256}" if sha256 else name))

    def advance(self, count: int) -> None:
        super().advance(count)
        self._call(self._advanced, count)

    def _call(self, function: Callable[[Any], None], argument: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            self._loop.call_soon_threadsafe(function, argument)

    # -- on the loop --

    def stop(self) -> None:
        """No more lines (the pull ended)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._file = None

    def _begun(self, file: tuple[str, int, str]) -> None:
        self.stop()
        self._file, self._completed = file, 0
        self._send()

    def _advanced(self, count: int) -> None:
        self._completed += count
        if self._file is None:
            return
        due = self._sent[0] + self._every_s - self._loop.time()
        if self._completed >= self._file[1] or due <= 0:
            self._send()
        elif self._flush is None:
            self._flush = self._loop.call_later(due, self._send)

    def _send(self) -> None:
        self._flush = None
        if self._file is None:
            return
        name, total, digest = self._file
        completed = max(self._completed, 0)  # a refetch after a hash mismatch starts again
        if self._sent[1] == (digest, completed):
            return
        line: Line = {"status": f"pulling {name}", "digest": digest}
        line |= {key: value for key, value in (("total", total), ("completed", completed)) if value}
        self._sent = (self._loop.time(), (digest, completed))
        self._lines.put_nowait(line)
