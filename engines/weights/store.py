"""The model store: MLX model directories under `$MLXD_HOME/models/<name>`.

Invariant: a directory in the store is complete once it holds `IMPORTED` (written last by an
importer, atomically renamed into place); half-written imports are never served.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engines.errors import ModelNotFound

COMPLETE_MARKER = "IMPORTED"
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
        Face repo id already in the HF cache (`HF_HOME`, offline: nothing is downloaded)."""
        candidate = Path(name_or_path).expanduser()
        if (candidate / "config.json").exists():
            return candidate.resolve().name, candidate.resolve()
        if _NAME.match(name_or_path) and self.has(name_or_path):
            return name_or_path, self.path_for(name_or_path)
        cached = hf_cache_snapshot(name_or_path)
        if cached is not None:
            return name_or_path, cached
        raise ModelNotFound(
            f"model {name_or_path!r} is neither an MLX model directory, nor in the store "
            f"({self.models_dir}), nor in the Hugging Face cache; import one with "
            "`mlxd import` (e.g. `mlxd import gguf FILE --name NAME`)",
            param="model",
        )

    def size_bytes(self, directory: Path) -> int:
        """Memory a loaded model takes, estimated by its weight files."""
        return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The newest snapshot of `repo_id` ("org/name") in the Hugging Face cache, if any."""
    if repo_id.count("/") != 1:
        return None
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    snapshots = home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = [p for p in snapshots.iterdir() if (p / "config.json").exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
