"""The model store: MLX model directories under `$MLXD_HOME/models/<name>`.

Invariant: a directory in the store is complete once it holds `IMPORTED` (written last by an
importer, atomically renamed into place); half-written imports are never served. Models pulled
from a hub stay in the Hugging Face cache (engines/weights/hub_cache.py) and are served from
there, except GGUF quants, which are imported here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engines.errors import ModelNotFound
from engines.weights.checkpoint import loaded_bytes
from engines.weights.hub_cache import complete_snapshot, folder_bytes, hub_cache_dir
from engines.weights.hub_files import RepoRef

COMPLETE_MARKER = "IMPORTED"


@contextmanager
def staged(target: Path, provenance: str) -> Iterator[Path]:
    """A scratch directory beside `target` that becomes `target` — marked complete with
    `provenance` — only when the block ends without an error; on any error (Ctrl-C included) it
    is removed and `target` is left as it was. Every importer writes through this, so the
    store's invariant holds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield scratch
        (scratch / COMPLETE_MARKER).write_text(f"{provenance}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_home() -> Path:
    return Path(os.environ.get("MLXD_HOME") or Path.home() / ".cache" / "mlxd")


class ModelStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.models_dir = home / "models"

    def path_for(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'")
        return self.models_dir / name

    def has(self, name: str) -> bool:
        return (self.path_for(name) / COMPLETE_MARKER).exists()

    def names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if (p / COMPLETE_MARKER).exists())

    def resolve(self, name_or_path: str) -> tuple[str, Path]:
        """(served name, directory) for a store name, a local MLX model directory, or a Hugging
        Face repo reference (`ORG/NAME[@REV][:QUANT]`) whose snapshot in the HF cache is
        complete (GGUF quants: once imported into the store). No network call is made."""
        candidate = Path(name_or_path).expanduser()
        if (candidate / "config.json").exists():
            return candidate.resolve().name, candidate.resolve()
        if _NAME.match(name_or_path) and self.has(name_or_path):
            return name_or_path, self.path_for(name_or_path)
        ref = RepoRef.parse(name_or_path)
        if ref is not None:
            if ref.quant is not None and self.has(gguf_store_name(ref)):
                return str(ref), self.path_for(gguf_store_name(ref))
            cached = complete_snapshot(hub_cache_dir(), ref.repo_id, ref.revision)
            if cached is not None and ref.quant is None:
                return str(ref), cached
        raise ModelNotFound(
            f"model {name_or_path!r} is neither an MLX model directory, nor in the store "
            f"({self.models_dir}), nor complete in the Hugging Face cache ({hub_cache_dir()}); "
            "fetch one with `mlxd pull ORG/NAME`, or import one with `mlxd import`",
            param="model",
        )

    def size_bytes(self, directory: Path) -> int:
        """Memory a loaded model takes, estimated by its weight files (float32 for an entry
        dequantized on load)."""
        return loaded_bytes(directory)

    def sizes(self) -> dict[str, int]:
        """Bytes on disk of each complete model in the store."""
        return {name: folder_bytes(self.path_for(name)) for name in self.names()}

    def remove(self, name: str) -> int:
        """Delete a model from the store; the bytes freed (0 when it was not there)."""
        directory = self.path_for(name)
        if not directory.is_dir():
            return 0
        freed = folder_bytes(directory)
        shutil.rmtree(directory)
        return freed


def gguf_store_name(ref: RepoRef) -> str:
    """Where a GGUF repo's quant lives once imported: `ORG--NAME--QUANT` in the store."""
    return f"{ref.repo_id.replace('/', '--')}--{ref.quant}"
