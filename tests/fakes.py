"""Scripted fake engines (chat and speech): the HTTP contract without MLX.

It follows the real engine's contract — one thread pushes events into RequestStreams, cancellation
is seen at the next step, `active` counts live sequences — but "generates" a scripted reply, one
character per token, at a configurable pace.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from engines.asr.vocab import LANGUAGES, decoding_language
from engines.bridge import RequestStream
from engines.errors import EngineFailed, InvalidRequest
from engines.types import (
    AdmittedEvent,
    ChatModelInfo,
    EngineStats,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    PromptEvent,
    Segment,
    SpeechModelInfo,
    TokenEvent,
    TokenLogprob,
    TranscriptionDone,
    TranscriptionRequest,
    Usage,
)


class FakeLifecycle:
    """What every fake engine shares with a real one's lifecycle: `start` makes its model info
    (`loaded_info`), `stop` drops it, `active` counts accepted work under `_lock`."""

    info: Any = None

    def __init__(self) -> None:
        self._active = 0
        self._lock = threading.Lock()

    def loaded_info(self) -> Any:
        raise NotImplementedError

    @property
    def active(self) -> int:
        return self._active

    @property
    def running(self) -> bool:
        return self.info is not None

    def start(self) -> None:
        self.info = self.loaded_info()

    async def wait_loaded(self) -> None:
        return None

    def stop(self, timeout: float | None = None) -> None:
        self.info = None

    def stats(self) -> EngineStats:
        return EngineStats(self._active, 0, 0, 0)


class FakeEngine(FakeLifecycle):
    kind = "chat"

    def __init__(
        self,
        name: str = "fake",
        reply: str = "Hello there!",
        token_delay_s: float = 0.0,
        context_length: int = 64,
        fail_after: int | None = None,
        prefill_delay_s: float = 0.0,
        fim_tokens: tuple[str, str, str] | None = None,
        refuse_with: Exception | None = None,
        reasoning: bool = False,
        cached_tokens: int = 0,
        queued_s: float = 0.0,
    ) -> None:
        self.reasoning = reasoning
        self.cached_tokens = cached_tokens  # of each prompt, served by a "prefix cache"
        self.queued_s = queued_s  # how long each request waits to be admitted
        self.template_kwargs_seen: dict[str, Any] | None = None
        self.refuse_with = refuse_with
        super().__init__()
        self.fim_tokens = fim_tokens
        self.prefill_delay_s = prefill_delay_s
        self.name = name
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.fail_after = fail_after
        self.info: ChatModelInfo | None = None
        self._context_length = context_length
        self.requests: list[GenerationRequest] = []
        self.tokens_generated = 0
        self.tools_seen: list[dict[str, Any]] | None = None
        self.grammars_checked: list[str] = []

    def loaded_info(self) -> ChatModelInfo:
        return ChatModelInfo(
            self.name,
            "/fake",
            self._context_length,
            frozenset({0}),
            1700000000,
            self.fim_tokens,
            reasoning=self.reasoning,
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        text = "".join(f"<{m['role']}>{m.get('content') or ''}" for m in messages)
        if self.reasoning and (template_kwargs or {}).get("enable_thinking") is not False:
            text += "<think>"  # like templates that open the reasoning block themselves
        self.tools_seen = tools
        self.template_kwargs_seen = template_kwargs
        return [ord(c) for c in text]

    def check_grammar(self, grammar: str, param: str) -> None:
        """Grammars are not enforced here (the reply is scripted); bad ones are still refused."""
        self.grammars_checked.append(grammar)
        if "x-unsupported" in grammar:
            raise InvalidRequest(f"{param} cannot be enforced: x-unsupported", param=param)

    def stats(self) -> EngineStats:
        return EngineStats(self._active, 0, 0, self.tokens_generated)

    def encode_text(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_output(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        if self.fim_tokens is None:
            raise InvalidRequest("fake has no fill-in-the-middle tokens", param="suffix")
        pre, suf, mid = self.fim_tokens
        return self.encode_text(f"{pre}{prefix}{suf}{suffix}{mid}")

    def decode(self, tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens)

    @property
    def vocab_size(self) -> int:
        return 0x110000

    def check_fits(
        self, prompt_tokens: int, max_tokens: int | None, param: str = "messages"
    ) -> int:
        assert self.info is not None
        return self.info.fit(prompt_tokens, max_tokens, param)

    def submit(self, request: GenerationRequest) -> RequestStream:
        if self.refuse_with is not None:
            raise self.refuse_with
        stream = RequestStream(request.request_id, choices=request.n)
        self.requests.append(request)
        with self._lock:
            self._active += request.n
        threading.Thread(target=self._generate, args=(request, stream), daemon=True).start()
        return stream

    def _generate(self, request: GenerationRequest, stream: RequestStream) -> None:
        """Choices take turns, one character each, like sequences sharing an engine step."""
        time.sleep(self.queued_s)
        cached = min(self.cached_tokens, len(request.prompt_tokens))
        if request.report_admission:
            stream.push(AdmittedEvent(len(request.prompt_tokens), cached))
        time.sleep(self.prefill_delay_s)
        if request.prompt_logprobs:
            first = TokenLogprob(request.prompt_tokens[0], chr(request.prompt_tokens[0]), b"", None)
            rest = [
                TokenLogprob(t, chr(t), chr(t).encode(), -2.0) for t in request.prompt_tokens[1:]
            ]
            stream.push(PromptEvent([first, *rest]))
        produced = [0] * request.n
        done = [False] * request.n
        while not all(done):
            for index in range(request.n):
                if done[index]:
                    continue
                reason = None
                if stream.cancelled:
                    reason = "cancelled"
                elif produced[index] >= len(self.reply):
                    reason = "stop"
                elif produced[index] >= request.max_tokens:
                    reason = "length"
                elif self.fail_after is not None and produced[index] == self.fail_after:
                    self._end(stream, request.n, ErrorEvent(EngineFailed("scripted failure")))
                    return
                if reason is not None:
                    done[index] = True
                    kept = _kept(request.prediction, self.reply[: produced[index]])
                    usage = Usage(len(request.prompt_tokens), produced[index], cached, kept)
                    self._end(stream, 1, FinishEvent(reason, usage, index))  # type: ignore[arg-type]
                    continue
                time.sleep(self.token_delay_s)
                char = self.reply[produced[index]]
                produced[index] += 1
                self.tokens_generated += 1
                logprobs = []
                if request.logprobs is not None:
                    top = tuple(
                        (ord(c), c, -1.0 - i) for i, c in enumerate("xyz"[: request.logprobs])
                    )
                    logprobs = [TokenLogprob(ord(char), char, char.encode(), -0.5, top)]
                stream.push(TokenEvent(char, [ord(char)], index, logprobs))

    def _end(self, stream: RequestStream, choices: int, event: FinishEvent | ErrorEvent) -> None:
        with self._lock:
            self._active -= choices
        stream.push(event)


def _kept(prediction: tuple[int, ...], reply: str) -> int:
    """A scripted drafter's kept prediction: as far as it matches the reply."""
    kept = 0
    while kept < min(len(prediction), len(reply)) and prediction[kept] == ord(reply[kept]):
        kept += 1
    return kept


class FakeSpeechEngine(FakeLifecycle):
    """Transcribes any audio as the scripted `segments` ((start, end, text) each), one segment per
    `segment_delay_s`, from its own thread; English-only unless `multilingual`, when a request
    naming no language is heard as `detected`."""

    kind = "speech"

    def __init__(
        self,
        name: str = "fake-whisper",
        segments: tuple[tuple[float, float, str], ...] = (
            (0.0, 1.5, " Hello there."),
            (1.5, 3.25, " General Kenobi."),
        ),
        segment_delay_s: float = 0.0,
        multilingual: bool = False,
        fail: bool = False,
        detected: str = "en",
    ) -> None:
        super().__init__()
        self.name = name
        self.segments = segments
        self.segment_delay_s = segment_delay_s
        self.multilingual = multilingual
        self.detected = detected
        self.fail = fail
        self.info: SpeechModelInfo | None = None
        self.requests: list[TranscriptionRequest] = []
        self._vocab = None

    def loaded_info(self) -> SpeechModelInfo:
        return SpeechModelInfo(self.name, "/fake", 1700000000, self.multilingual, 80)

    def check_language(self, language: str | None, task: str) -> str | None:
        assert self.info is not None
        return decoding_language(self.info, language, task, None)

    def submit(self, request: TranscriptionRequest) -> RequestStream:
        stream = RequestStream(request.request_id)
        self.requests.append(request)
        with self._lock:
            self._active += 1
        threading.Thread(target=self._transcribe, args=(request, stream), daemon=True).start()
        return stream

    def _transcribe(self, request: TranscriptionRequest, stream: RequestStream) -> None:
        final: ErrorEvent | TranscriptionDone
        heard = LANGUAGES[request.language or self.detected]
        final = TranscriptionDone(heard, request.content_frames / 100)
        for number, (start, end, text) in enumerate(self.segments):
            time.sleep(self.segment_delay_s)
            if stream.cancelled:
                break
            if self.fail:
                final = ErrorEvent(EngineFailed("scripted failure"))
                break
            tokens = [50363, *(ord(c) for c in text), 50363 + int(end * 50)]
            stream.push(Segment(number, 0, start, end, text, tokens, 0.0, -0.2, 1.1, 0.01))
        with self._lock:
            self._active -= 1
        stream.push(final)
