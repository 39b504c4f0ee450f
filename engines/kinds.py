"""Engine kinds: what a configured model can be, and how the pool builds its engine.

A kind is a name (the one word used in models files, `/v1/models`, metrics and errors), the
interface its engines offer the HTTP edge (a Protocol), and a builder that makes a fresh engine
from a model path and plain option mappings. Adding a kind is one engine package plus one entry
in `KINDS` (docs/architecture.md, "Adding an engine kind").

Invariants:
- Importing this module imports no MLX: builders import their engine package when called, which
  happens only when the pool loads a model (the engine then starts its own thread).
- Options cross as plain mappings (the server's settings and the models-file entry, dumped): the
  engines never see a server type.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from engines.bridge import RequestStream
from engines.types import (
    ChatLimits,
    ChatModelInfo,
    EmbeddingLimits,
    EmbeddingModelInfo,
    EmbeddingRequest,
    EngineStats,
    GenerationRequest,
    SpeechLimits,
    SpeechModelInfo,
    SynthesisRequest,
    TranscriptionRequest,
    TTSLimits,
    TTSModelInfo,
)


class Engine(Protocol):
    """What every engine offers the pool: a name, its kind, a thread to start and stop,
    counters."""

    name: str
    kind: str  # a name in KINDS

    @property
    def active(self) -> int: ...

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    async def wait_loaded(self) -> None: ...

    def stop(self, timeout: float | None = ...) -> None: ...

    def stats(self) -> EngineStats: ...


class ChatEngine(Engine, Protocol):
    """What the HTTP edge may call on a chat engine (LLMEngine, or a scripted fake in tests)."""

    info: ChatModelInfo | None
    vocab_size: int

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = ...,
        template_kwargs: dict[str, Any] | None = ...,
    ) -> list[int]: ...

    def check_grammar(self, grammar: str, param: str) -> None: ...

    def encode_text(self, text: str) -> list[int]: ...

    def encode_output(self, text: str) -> list[int]: ...

    def encode_fim(self, prefix: str, suffix: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def check_fits(self, prompt_tokens: int, max_tokens: int | None, param: str = ...) -> int: ...

    def submit(self, request: GenerationRequest) -> RequestStream: ...


class SpeechEngine(Engine, Protocol):
    """What the HTTP edge may call on a speech-to-text engine (ASREngine, or a fake in tests)."""

    info: SpeechModelInfo | None

    def check_language(self, language: str | None, task: str) -> str | None: ...

    def submit(self, request: TranscriptionRequest) -> RequestStream: ...


class TTSEngine(Engine, Protocol):
    """What the HTTP edge may call on a text-to-speech engine (engines/tts, or a fake in tests)."""

    info: TTSModelInfo | None

    def check_voice(self, voice: str) -> str: ...

    def submit(self, request: SynthesisRequest) -> RequestStream: ...


class EmbeddingEngine(Engine, Protocol):
    """What the HTTP edge may call on an embedding model or cross-encoder (engines/embed, or a
    fake in tests). Tokenizing is plain Rust tokenizer work, callable off the engine thread."""

    info: EmbeddingModelInfo | None

    def tokenize(self, texts: list[str]) -> list[list[int]]: ...

    def tokenize_pairs(
        self, query: str, documents: list[str], max_tokens: int
    ) -> list[tuple[list[int], list[int]]]: ...

    def submit(self, request: EmbeddingRequest) -> RequestStream: ...


E = TypeVar("E", bound=Engine, covariant=True)

# (model name, model path, the models-file entry's options, the server's settings) → engine
Builder = Callable[[str, Path, Mapping[str, Any], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class EngineKind(Generic[E]):
    """One kind of model. `builder` is "module:function", imported when a model is loaded."""

    name: str
    noun: str  # what a model of this kind is, for messages: "a chat model"
    builder: str
    detector: str = ""  # "module:function(path) -> bool": the checkpoint is of this kind

    def detects(self, path: Path) -> bool:
        """Whether the checkpoint at `path` says it is of this kind (never imports MLX)."""
        if not self.detector:
            return False
        module, function = self.detector.split(":")
        detect: Callable[[Path], bool] = getattr(importlib.import_module(module), function)
        return detect(path)

    def factory(
        self, name: str, path: Path, entry: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> Callable[[], E]:
        """A function that builds a fresh, unstarted engine for this model (once per load)."""

        def build() -> E:
            module, function = self.builder.split(":")
            make: Builder = getattr(importlib.import_module(module), function)
            engine: E = make(name, path, entry, settings)
            return engine

        return build


def build_chat(
    name: str, path: Path, entry: Mapping[str, Any], settings: Mapping[str, Any]
) -> ChatEngine:
    from engines.llm.engine import LLMEngine

    limits = ChatLimits(
        max_batch=entry.get("max_batch") or settings["max_batch"],
        max_waiting=settings["max_waiting"],
        kv_budget_bytes=_mib(settings.get("kv_budget_mb")),
        prefix_cache_bytes=settings["prefix_cache_mb"] * 2**20,
        watchdog_s=settings["watchdog_s"],
        warmup_rows=settings.get("warmup_rows"),
        fuse_projections=settings.get("fuse_projections"),
        context_length=entry.get("context_length"),
        chat_template=entry.get("chat_template"),
        untagged_tool_calls=entry.get("untagged_tool_calls", True),
        tool_format=entry.get("tool_format"),
        speculative=entry.get("speculative"),
        speculative_tokens=entry.get("speculative_tokens") or 0,
        kv_bits=entry.get("kv_bits"),
        kv_group_size=entry.get("kv_group_size") or 64,
        **_prefix_disk(settings),
    )
    distributed = settings.get("distributed") and entry.get("source") == settings.get("model")
    if has_vision_tower(path):
        if distributed:  # its followers would wait for a group that never forms
            raise ValueError(f"{name} is a vision-language model: not served with --distributed")
        from engines.vlm.engine import vision_engine

        return vision_engine(name, path, limits)
    if distributed:
        from engines.llm.distributed import build_distributed

        return build_distributed(name, path, limits, settings)
    return LLMEngine(name, path, settings.get("prefill_chunk"), limits)


def has_vision_tower(path: Path) -> bool:
    """Whether a chat checkpoint is vision-language (its config.json has a `vision_config`):
    such models are served by engines/vlm through mlx-vlm."""
    import json

    try:
        return "vision_config" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def build_speech(
    name: str, path: Path, entry: Mapping[str, Any], settings: Mapping[str, Any]
) -> SpeechEngine:
    from engines.asr.engine import ASREngine

    limits = SpeechLimits(
        max_batch=entry.get("max_batch") or settings["asr_max_batch"],
        max_waiting=_waiting(settings),
        watchdog_s=settings["watchdog_s"],
    )
    return ASREngine(name, path, limits)


def build_tts(
    name: str, path: Path, entry: Mapping[str, Any], settings: Mapping[str, Any]
) -> TTSEngine:
    from engines.tts.engine import KokoroEngine

    limits = TTSLimits(max_waiting=_waiting(settings), watchdog_s=settings["watchdog_s"])
    return KokoroEngine(name, path, limits)


def build_embedding(
    name: str, path: Path, entry: Mapping[str, Any], settings: Mapping[str, Any]
) -> EmbeddingEngine:
    from engines.embed.engine import EmbedEngine

    limits = EmbeddingLimits(
        max_batch=entry.get("max_batch") or settings["embed_max_batch"],
        max_batch_tokens=settings["embed_batch_tokens"],
        max_waiting=_waiting(settings),
        watchdog_s=settings["watchdog_s"],
    )
    return EmbedEngine(name, path, limits)


def _prefix_disk(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Where prefix cache entries spill (MLXD_HOME/prefix-cache), and the bytes they may take."""
    megabytes = settings.get("prefix_disk_mb") or 0
    if not megabytes or not settings.get("home") or not settings.get("prefix_cache_mb"):
        return {}
    directory = str(Path(settings["home"]) / "prefix-cache")
    return {"prefix_disk_dir": directory, "prefix_disk_bytes": int(megabytes) * 2**20}


def _waiting(settings: Mapping[str, Any]) -> int:
    """Other kinds' queue: MLXD_MAX_WAITING, else 64 (chat sizes its own to the device)."""
    waiting = settings.get("max_waiting")
    return 64 if waiting is None else int(waiting)


def detect_kind(path: Path, default: str = "chat") -> str:
    """The kind a checkpoint says it is (the first kind whose detector accepts it), else
    `default`: a models-file entry may leave `kind` out."""
    return next((kind.name for kind in KINDS.values() if kind.detects(path)), default)


def _mib(value: int | None) -> int | None:
    return value * 2**20 if value else None


CHAT: EngineKind[ChatEngine] = EngineKind("chat", "a chat model", "engines.kinds:build_chat")
SPEECH: EngineKind[SpeechEngine] = EngineKind(
    "speech",
    "a speech-to-text model",
    "engines.kinds:build_speech",
    detector="engines.weights.ct2:is_whisper_checkpoint",
)
TTS: EngineKind[TTSEngine] = EngineKind(
    "tts",
    "a text-to-speech model",
    "engines.kinds:build_tts",
    detector="engines.weights.kokoro:is_kokoro_checkpoint",
)

EMBEDDING: EngineKind[EmbeddingEngine] = EngineKind(
    "embedding",
    "an embedding model",
    "engines.kinds:build_embedding",
    detector="engines.embed.checkpoint:is_embedding_checkpoint",
)

KINDS: dict[str, EngineKind[Any]] = {kind.name: kind for kind in (CHAT, SPEECH, TTS, EMBEDDING)}
