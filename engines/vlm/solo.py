"""SoloVLMEngine: a vision-language chat model (mlx-vlm) served one request at a time.

The path for families whose language model mlxd does not batch (engines/vlm/engine.py picks:
a family outside `BATCHED_FAMILIES`, e.g. one whose language model takes more than input
embeddings, such as Qwen3-VL's deepstack features); never refused for that.

Per request, on the engine thread: the prompt text (the chat template's rendering, images as the
family's image placeholder) and the images go through the model's own processor (mlx-vlm's
`prepare_inputs`: image-token expansion, pixel values); the vision tower encodes the images once
— kept in `VisionCache`, keyed by the images' digests, so a conversation that resends the same
screenshots skips the tower — and mlx-vlm's `generate_step` decodes, one token per `step`
(cancellation is seen between tokens). Usage counts the expanded prompt (image tokens included).

Text-only requests wait in the same queue (`max_batch` 1).

Invariants: every MLX call is on the engine thread; events are plain values; each accepted
request ends with one FinishEvent or an ErrorEvent; `release` frees its choice and queue place
exactly once.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from engines.bridge import RequestStream
from engines.errors import ContextTooLong, InvalidRequest, Overloaded
from engines.llm.chat_formats import hidden_special_ids, model_formats
from engines.llm.detokenize import TokenBytes
from engines.llm.sequence import Choice, Vocabulary
from engines.llm.templates import supports_tools
from engines.types import (
    AdmittedEvent,
    ChatLimits,
    ChatModelInfo,
    EngineStats,
    ErrorEvent,
    GenerationRequest,
)
from engines.vlm.front import VisionFront
from engines.vlm.prompt import VisionCache
from engines.worker import EngineThread

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Running:
    choice: Choice
    stream: RequestStream
    tokens: Iterator[tuple[Any, Any]]


class SoloVLMEngine(EngineThread, VisionFront):
    kind = "chat"

    def __init__(self, name: str, path: Path, limits: ChatLimits | None = None) -> None:
        EngineThread.__init__(self, name)
        VisionFront.__init__(self, name, limits or ChatLimits())
        self.path = path
        self.model: Any = None
        self.processor: Any = None
        self.vision_cache = VisionCache()
        self.tokens_generated = 0
        self._waiting: deque[tuple[GenerationRequest, RequestStream]] = deque()
        self._running: _Running | None = None

    # -- event loop side ---------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestStream:
        self.admit(request)
        stream = RequestStream(request.request_id, choices=1)
        self.post((request, stream))
        return stream

    def admit(self, request: GenerationRequest) -> None:
        """Refuse what this path cannot serve, before anything is queued."""
        self.check_request(request)
        with self._counts_lock:
            waiting = self.limits.max_waiting
            if self._queued >= (64 if waiting is None else waiting):  # None: the old default
                raise Overloaded(
                    f"model '{self.name}' has {self._queued} requests waiting, the most it queues;"
                    " retry shortly",
                    retry_after_s=1,
                )
            self._queued += 1
            self._active += 1

    def stats(self) -> EngineStats:
        return EngineStats(
            active=self._active,
            queued=self._queued,
            largest_batch=1 if self.tokens_generated else 0,
            tokens_generated=self.tokens_generated,
            prefix_cache_hits=self.vision_cache.hits,
            prefix_cache_misses=self.vision_cache.misses,
            stalled=self.stalled(self._active > 0, self.limits.watchdog_s),
            failures=self.failures,
            weights_bytes=self.weights_bytes,
        )

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        from mlx_vlm.utils import load

        try:
            self.model, self.processor = load(str(self.path))
        except (ValueError, FileNotFoundError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"mlx-vlm cannot load {self.path}: {detail}") from exc
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.measure_weights(self.model)
        # The event loop renders and tokenizes with its own copy: a Rust tokenizer used by two
        # threads at once can panic ("Already borrowed"); the processor's stays on this thread.
        self.tokenizer = copy.deepcopy(tokenizer)
        info = self.info = self.model_info(tokenizer, self._eos_ids(tokenizer))
        hidden = hidden_special_ids(
            tokenizer, info.tool_format, info.think_tags if info.reasoning else None
        )
        self.vocabulary = Vocabulary(tokenizer, TokenBytes(tokenizer), info.eos_token_ids, hidden)
        logger.info("engine %s loaded vision-language model %s", self.name, self.path)

    def _eos_ids(self, tokenizer: Any) -> frozenset[int]:
        ids = self.model.config.eos_token_id or getattr(tokenizer, "eos_token_id", None) or []
        ids = ids if isinstance(ids, list) else [ids]
        return frozenset(int(i) for i in ids)

    def model_info(self, tokenizer: Any, eos: frozenset[int]) -> ChatModelInfo:
        text_config = getattr(self.model.config, "text_config", None)
        context = int(getattr(text_config, "max_position_embeddings", 0) or 4096)
        if self.limits.context_length:
            context = min(context, self.limits.context_length)
        # The family's tool-call format and think tags, as for text models (Gemma 4's are its).
        tool_format, think = model_formats(
            tokenizer, bool(self.limits.chat_template), self.limits.tool_format
        )
        return ChatModelInfo(
            name=self.name,
            path=str(self.path),
            context_length=context,
            eos_token_ids=eos,
            created=int(self.path.stat().st_mtime),
            reasoning=think is not None or tool_format == "harmony",
            think_tags=think or ChatModelInfo.think_tags,
            tool_format=tool_format,
            untagged_tool_calls=self.limits.untagged_tool_calls,
            vision=True,
            tool_images=not supports_tools(tokenizer),
        )

    def unload(self) -> None:
        self.vision_cache = VisionCache()
        self.model = self.processor = None

    def handle(self, message: Any) -> None:
        self._waiting.append(message)

    def has_work(self) -> bool:
        return self._running is not None or bool(self._waiting)

    def fail_all(self, error: Exception) -> None:
        running, self._running = self._running, None
        if running is not None and not running.choice.finished:
            self.release(-1)
            running.stream.push(ErrorEvent(error))
        while self._waiting:
            _, stream = self._waiting.popleft()
            self.release(-1, -1)
            stream.push(ErrorEvent(error))

    def step(self) -> None:
        if self._running is None:
            request, stream = self._waiting.popleft()
            self.release(0, -1)
            self._running = self._start(request, stream)
            if self._running is None:
                return
        running = self._running
        if running.stream.cancelled:
            self._running = None
            running.choice.finish("cancelled", flush=False)
            return
        token, _ = next(running.tokens)
        self.tokens_generated += 1
        if running.choice.accept(int(token), None):
            self._running = None

    def _prompt_text(self, tokens: list[int]) -> str:
        """The prompt text back from its ids (special tokens kept), with this thread's
        tokenizer: the processor's input."""
        return str(
            self.vocabulary.tokenizer.decode(
                tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def _start(self, request: GenerationRequest, stream: RequestStream) -> _Running | None:
        """Process the prompt and its images and begin decoding (None: it failed, reported)."""
        from engines.vlm.generation import start_generation

        try:
            prompt_ids, tokens = start_generation(
                self.model, self.processor, self.vision_cache, request, self._prompt_text
            )
        except (InvalidRequest, ContextTooLong, ValueError) as exc:
            self.release(-1)
            stream.push(ErrorEvent(InvalidRequest(str(exc), param="messages")))
            return None
        assert self.info is not None
        request = request.within(self.info.context_length, len(prompt_ids))
        if len(prompt_ids) + request.max_tokens > self.info.context_length:
            self.release(-1)
            error = ContextTooLong(
                f"This model's maximum context length is {self.info.context_length} tokens; "
                f"the prompt with its images is {len(prompt_ids)} tokens and max_tokens is "
                f"{request.max_tokens}",
                param="messages",
            )
            stream.push(ErrorEvent(error))
            return None
        if request.report_admission:  # no prefix cache on this path: nothing of it is read
            stream.push(AdmittedEvent(len(prompt_ids), 0))
        expanded = dataclasses.replace(request, prompt_tokens=prompt_ids, images=())
        choice = Choice(
            expanded,
            stream,
            0,
            cast(Any, None),  # sampling happens inside mlx-vlm's generate_step
            self.vocabulary,
            lambda: self.release(-1),
        )
        return _Running(choice, stream, tokens)
