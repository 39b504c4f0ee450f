"""The Hugging Face cache as mlxd reads it: where it is, which snapshots are complete, sizes.

Layout (huggingface_hub's own, so `hf`, mlx-lm and transformers share the files):
`<cache>/models--ORG--NAME/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
refs/<revision>}`. mlxd adds one file per pulled commit, `mlxd/<commit>.json`, listing the files
that snapshot needs (written before the first byte is fetched).

Invariants:
- A snapshot is served only when complete: every file its listing names is present (the mlxd
  listing, else huggingface_hub's tree cache `trees/<commit>.json`, else the weights named by
  `model.safetensors.index.json` or at least one weights file). An interrupted download leaves
  `config.json` without weights; such a snapshot is never picked.
- Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engines.weights.hub_files import needed_files

WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf")


@dataclass(frozen=True)
class HubConfig:
    """Where the hub and its cache are, read from the environment when a command starts.

    huggingface_hub reads `HF_ENDPOINT` and `HF_HUB_OFFLINE` once, at import; the cache folder
    and the token are read here, per call, with the same precedence it uses."""

    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool

    @classmethod
    def from_env(cls) -> HubConfig:
        from huggingface_hub import constants, get_token

        return cls(
            endpoint=os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/"),
            cache_dir=hub_cache_dir(),
            token=get_token(),
            offline=constants.is_offline_mode(),
        )


def hub_cache_dir() -> Path:
    """`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub` (read now)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(home).expanduser() / "hub"


def repo_folder(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / f"models--{repo_id.replace('/', '--')}"


def write_listing(folder: Path, commit: str, files: dict[str, int]) -> None:
    """Record which files (name → size) the snapshot `commit` needs, before fetching any."""
    listing = folder / "mlxd" / f"{commit}.json"
    listing.parent.mkdir(parents=True, exist_ok=True)
    partial = listing.with_suffix(".json.tmp")
    partial.write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
    partial.replace(listing)


def _listed_files(folder: Path, commit: str) -> list[str] | None:
    """The files the snapshot needs, from mlxd's listing or huggingface_hub's tree cache."""
    for listing in (folder / "mlxd" / f"{commit}.json", folder / "trees" / f"{commit}.json"):
        try:
            files = json.loads(listing.read_text())["files"]
        except (OSError, ValueError, KeyError):
            continue
        if listing.parent.name == "trees":  # the whole repo: keep what mlxd would fetch
            try:
                return needed_files(list(files), quant=None)
            except ValueError:
                return list(files)
        return list(files)
    return None


def missing_files(snapshot: Path) -> list[str]:
    """What the snapshot still lacks ([] when it is complete and can be served)."""
    listed = _listed_files(snapshot.parent.parent, snapshot.name)
    if listed is None:
        listed = _inferred_files(snapshot)
    return [name for name in listed if not (snapshot / name).is_file()]


def _inferred_files(snapshot: Path) -> list[str]:
    """For snapshots made by other tools: config, plus the weights its index names, or some
    weights file (a sentinel name that is never present when there is none)."""
    index = snapshot / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError):
            shards = ["model.safetensors"]
        return ["config.json", *shards]
    weights = [p.name for p in snapshot.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
    config = [] if any(name.endswith(".gguf") for name in weights) else ["config.json"]
    return [*config, *(weights or ["(weights)"])]


def complete_snapshot(cache_dir: Path, repo_id: str, revision: str = "main") -> Path | None:
    """The complete snapshot for `revision` (a ref such as "main", or a commit), else the newest
    complete snapshot of the repo when the revision is "main"; None when there is none."""
    folder = repo_folder(cache_dir, repo_id)
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    wanted = snapshots / commit
    if wanted.is_dir() and not missing_files(wanted):
        return wanted
    if revision != "main":
        return None
    complete = [p for p in snapshots.iterdir() if p.is_dir() and not missing_files(p)]
    return max(complete, key=lambda p: p.stat().st_mtime) if complete else None


def folder_bytes(folder: Path) -> int:
    """Bytes the files under `folder` take (blobs counted once; links not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total


@dataclass(frozen=True)
class CachedRepo:
    repo_id: str
    size_bytes: int
    complete: bool


def cached_repos(cache_dir: Path) -> list[CachedRepo]:
    """The model repos in the cache, with the bytes each takes and whether one snapshot of it can
    be served."""
    if not cache_dir.is_dir():
        return []
    repos = []
    for folder in sorted(cache_dir.glob("models--*")):
        repo_id = folder.name.removeprefix("models--").replace("--", "/", 1)
        complete = complete_snapshot(cache_dir, repo_id) is not None
        repos.append(CachedRepo(repo_id, folder_bytes(folder), complete))
    return repos


def remove_repo(cache_dir: Path, repo_id: str) -> int:
    """Delete the repo's folder from the cache; the bytes freed (0 when it was not there)."""
    folder = repo_folder(cache_dir, repo_id)
    if not folder.is_dir():
        return 0
    freed = folder_bytes(folder)
    shutil.rmtree(folder)
    return freed
