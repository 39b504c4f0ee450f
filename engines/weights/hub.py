"""`mlxd pull`: fetch a model from a Hugging Face hub into its cache, resuming across runs.

huggingface_hub's own downloads resume only within one process (its partial files have random
names and are deleted on failure), so the loop is ours, over its primitives: the repo listing
(`HfApi.model_info`), each file's metadata (`get_hf_file_metadata`: etag, size, redirect
location), then a ranged GET (`http_get(resume_size=...)`) appending to a fixed-name partial
file `blobs/<etag>.incomplete`, then a hash check (sha256 for LFS files, git's blob sha1 for the
rest) before the blob is renamed into place and linked from the snapshot.

Invariants:
- A blob exists only once its hash matched; a snapshot file exists only once its blob does.
- The partial file is kept on any failure (dropped connection, full disk, Ctrl-C): the next pull
  asks for the remaining bytes only. A partial file whose bytes hash wrong is fetched afresh.
- With `HF_HUB_OFFLINE` set, or a complete snapshot of a commit id already cached, no network
  call is made.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from engines.errors import EngineUnavailable, ModelNotFound
from engines.weights.hub_cache import (
    HubConfig,
    complete_snapshot,
    repo_folder,
    write_listing,
)
from engines.weights.hub_files import RepoRef, needed_files
from engines.weights.hub_progress import PullProgress
from engines.weights.store import ModelStore, gguf_store_name

logger = logging.getLogger(__name__)

_TIMEOUT_S = 10.0


class HubError(EngineUnavailable):
    """The hub could not give the model (unreachable, gated, disk full, corrupt download)."""


class RepoNotFound(ModelNotFound):
    """No such repo (or revision, or quant) on the hub."""


def cached_or_none(ref: RepoRef, hub: HubConfig) -> Path | None:
    """The complete cached snapshot for `ref` (no network call), or None."""
    return complete_snapshot(hub.cache_dir, ref.repo_id, ref.revision)


def pull(ref: RepoRef, hub: HubConfig, progress: PullProgress | None = None) -> Path:
    """Fetch what `ref` needs that the cache lacks; the complete snapshot directory."""
    progress = progress or PullProgress(str(ref))
    if hub.offline:
        cached = cached_or_none(ref, hub)
        if cached is None:
            raise HubError(f"{ref} is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
        return cached
    commit, sizes, hashes = _listing(ref, hub)
    folder = repo_folder(hub.cache_dir, ref.repo_id)
    write_listing(folder, commit, sizes)
    if ref.revision != commit:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref.revision).write_text(commit)
    progress.start(sum(sizes.values()))
    for name in sorted(sizes):
        progress.begin_file(name, sizes[name], hashes.get(name))
        _fetch_file(ref, hub, folder, commit, name, hashes.get(name), progress)
    progress.finish()
    return folder / "snapshots" / commit


def pull_model(
    ref: RepoRef,
    hub: HubConfig,
    store: ModelStore,
    progress: PullProgress | None = None,
    dequantize: bool = False,
    check_hub: bool = False,
) -> Path:
    """The directory to serve `ref` from: its complete cached snapshot (no network call), else
    pulled; for a GGUF quant, the store directory our importer made of the pulled file (imported
    once; `dequantize` as for `mlxd import gguf`). `check_hub`: pull even a cached snapshot (the
    revision may have moved on; what `mlxd pull` does). Imports run MLX: call this on a thread of
    its own (the CLI's, or a dedicated one), never in a thread pool."""
    if ref.quant is None:
        cached = None if check_hub else cached_or_none(ref, hub)
        return cached if cached is not None else pull(ref, hub, progress)
    destination = store.path_for(gguf_store_name(ref))
    if store.has(destination.name):
        return destination
    snapshot = pull(ref, hub, progress)
    from engines.weights.gguf import import_gguf

    (gguf,) = snapshot.glob("*.gguf")
    destination.parent.mkdir(parents=True, exist_ok=True)
    return import_gguf(gguf, destination, dequantize=dequantize)


def _listing(ref: RepoRef, hub: HubConfig) -> tuple[str, dict[str, int], dict[str, str]]:
    """(commit, needed file → size, needed LFS file → sha256), from one API call."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=hub.endpoint, token=hub.token).model_info(
            ref.repo_id, revision=ref.revision, files_metadata=True, timeout=_TIMEOUT_S
        )
    except Exception as exc:
        raise _hub_error(ref, hub, exc) from exc
    siblings = info.siblings or []
    try:
        names = needed_files([s.rfilename for s in siblings], ref.quant)
    except ValueError as exc:
        raise RepoNotFound(f"{ref}: {exc}", param="model") from exc
    by_name = {s.rfilename: s for s in siblings}
    sizes = {name: int(by_name[name].size or 0) for name in names}
    lfs = (by_name[name].lfs for name in names)
    hashes = {name: entry.sha256 for name, entry in zip(names, lfs, strict=True) if entry}
    assert info.sha is not None, "the hub names the commit of every revision"
    return info.sha, sizes, hashes


def _hub_error(ref: RepoRef, hub: HubConfig, exc: Exception) -> Exception:
    """One sentence for what went wrong talking to the hub."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return HubError(
            f"{ref.repo_id} is gated: accept its terms on the hub's page for it, then set "
            "HF_TOKEN to a token of that account"
        )
    if isinstance(exc, RevisionNotFoundError):
        return RepoNotFound(f"{ref.repo_id} has no revision {ref.revision!r}", param="model")
    if isinstance(exc, RepositoryNotFoundError):
        hint = "" if hub.token else " (if it is private or gated, set HF_TOKEN)"
        return RepoNotFound(f"no model repo {ref.repo_id!r} at {hub.endpoint}{hint}", "model")
    if isinstance(exc, HfHubHTTPError):
        return HubError(f"{hub.endpoint} answered {exc.response.status_code} for {ref.repo_id}")
    return HubError(f"cannot reach {hub.endpoint} ({type(exc).__name__}: {exc})".rstrip())


def _fetch_file(
    ref: RepoRef,
    hub: HubConfig,
    folder: Path,
    commit: str,
    name: str,
    sha256: str | None,
    progress: PullProgress,
) -> None:
    """Make `snapshots/<commit>/<name>` present and verified, fetching what is missing."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    pointer = folder / "snapshots" / commit / name
    url = hf_hub_url(ref.repo_id, name, revision=commit, endpoint=hub.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=hub.token, timeout=_TIMEOUT_S)
    except Exception as exc:
        raise _hub_error(ref, hub, exc) from exc
    etag, size = meta.etag, meta.size
    if etag is None or size is None:
        raise HubError(f"{hub.endpoint} gave no etag or size for {ref.repo_id}/{name}")
    blob = folder / "blobs" / etag
    if blob.is_file() and _verified(blob, sha256 or etag, lfs=sha256 is not None):
        progress.advance(size)
    else:
        blob.unlink(missing_ok=True)
        _download_blob(hub, meta, blob, size, sha256, name, progress)
    if not pointer.is_file():
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.unlink(missing_ok=True)  # a dangling link from an older blob
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)


def _download_blob(
    hub: HubConfig,
    meta: Any,
    blob: Path,
    size: int,
    sha256: str | None,
    name: str,
    progress: PullProgress,
) -> None:
    """Fetch the blob through `<etag>.incomplete` (resuming it), verify it, rename it in place.
    A verification failure refetches once from the first byte."""
    partial = blob.with_name(blob.name + ".incomplete")
    blob.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        _ranged_get(hub, meta, partial, size, name, progress)
        if _verified(partial, sha256 or meta.etag, lfs=sha256 is not None):
            partial.replace(blob)
            return
        logger.warning("%s: hash mismatch (attempt %d); fetching it again", name, attempt)
        progress.advance(-size)
        partial.unlink()
    raise HubError(f"{name}: the bytes fetched do not match the hub's hash, twice")


def _ranged_get(
    hub: HubConfig, meta: Any, partial: Path, size: int, name: str, progress: PullProgress
) -> None:
    """Append the bytes `partial` lacks (a Range request from its current length)."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    free = shutil.disk_usage(partial.parent).free
    if size - have > free:
        raise HubError(
            f"{name} needs {(size - have) / 2**20:.0f} MiB more and {partial.parent} has "
            f"{free / 2**20:.0f} MiB free"
        )
    progress.advance(have)
    headers = build_hf_headers(token=hub.token if _on_hub(meta.location, hub) else False)
    try:
        with partial.open("ab") as sink:
            http_get(
                meta.location,
                _Counted(sink, progress),  # type: ignore[arg-type]
                resume_size=have,
                headers=headers,
                expected_size=size,
                displayed_filename=name,
            )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise HubError(f"disk full while fetching {name} into {partial.parent}") from exc
        raise HubError(f"fetching {name} failed ({exc}); run the pull again to resume") from exc
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise HubError(f"fetching {name} stopped ({reason}); run the pull again to resume") from exc


def _on_hub(location: str, hub: HubConfig) -> bool:
    """Whether the download URL is the hub's own (the token must not go to a CDN)."""
    return location.startswith(hub.endpoint + "/")


class _Counted:
    """A file wrapper that reports every write to the progress (http_get writes, seeks back on a
    server that ignored the Range header, and truncates)."""

    def __init__(self, sink: BinaryIO, progress: PullProgress) -> None:
        self._sink, self._progress = sink, progress

    def write(self, chunk: bytes) -> int:
        written = self._sink.write(chunk)
        self._progress.advance(written)
        return written

    def tell(self) -> int:
        return self._sink.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        before = self._sink.tell()
        after = self._sink.seek(offset, whence)
        self._progress.advance(after - before)
        return after

    def truncate(self, size: int | None = None) -> int:
        return self._sink.truncate(size)


def _verified(path: Path, expected: str, lfs: bool) -> bool:
    """sha256 (LFS files) or git's blob sha1 (small files) of `path` equals `expected`."""
    digest: Any = hashlib.sha256() if lfs else hashlib.sha1()
    if not lfs:
        digest.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return bool(digest.hexdigest() == expected)
