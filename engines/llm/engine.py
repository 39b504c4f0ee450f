"""LLMEngine: serves one mlx-lm model from its engine thread, continuously batched.

Step loop (one call of `step`; docs/architecture.md has the long form):
1. Requests whose client went away leave at once, wherever they are.
2. Admission: waiting requests start prefill while the batch has rows free and the projected KV
   memory (dense, left-padded batch cache) fits the budget; a full queue is refused at `submit`.
3. Prefill, at most `prefill_chunk` tokens per step: fresh prompts together in one padded pass,
   the others one at a time (resuming from the prefix cache when they can). A request with n > 1
   is prefilled once; its n choices fork the prompt's KV cache.
4. Decode: one pass for every row of the DecodeBatch; step n+1 is scheduled before step n's
   tokens are read back, so the device works while the host detokenizes.
5. Finished rows leave; their KV goes to the prefix cache.

Invariants: all MLX work happens on the engine thread; only plain values reach RequestStreams;
each choice's events end with exactly one FinishEvent, or the request's with an ErrorEvent.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, cast

from mlx.utils import tree_flatten

from engines.bridge import RequestStream
from engines.errors import InvalidRequest, KVBudgetExceeded, Overloaded
from engines.llm.batch import DecodeBatch, StepOutput
from engines.llm.constrain import GrammarCompiler
from engines.llm.cpu_decode import install as install_cpu_decode
from engines.llm.detokenize import TokenBytes
from engines.llm.prefill import (
    Prefill,
    choose_group,
    choose_resumed_group,
    prefill_resumed,
    prefill_together,
)
from engines.llm.prefix_cache import PrefixCache
from engines.llm.sampling import Sampled, TokenSampler, choice_seed
from engines.llm.sequence import Choice, Vocabulary
from engines.llm.templates import render_chat
from engines.llm.tools import tool_call_format
from engines.types import (
    FIM_TOKEN_SETS,
    ChatLimits,
    ChatModelInfo,
    EngineStats,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    PromptEvent,
    Usage,
)
from engines.worker import EngineThread

logger = logging.getLogger(__name__)

# How often (in decode steps) MLX's buffer cache is trimmed, as mlx-lm does.
_CLEAR_CACHE_EVERY = 256
# Arrivals close together are prefilled together: waiting requests are admitted once none has
# arrived for ARRIVAL_QUIET_S, or once the oldest has waited ARRIVAL_WAIT_MAX_S. A burst of
# clients then costs one prefill pass instead of one per arrival, and an idle engine sleeping
# meanwhile leaves the GIL to the event loop that is parsing the rest of the burst.
ARRIVAL_QUIET_S = 0.002
ARRIVAL_WAIT_MAX_S = 0.02


class LLMEngine(EngineThread):
    """One model, one thread. `submit` and the properties are called from the event loop."""

    kind = "chat"

    def __init__(
        self,
        name: str,
        path: Path,
        prefill_chunk: int | None = None,
        limits: ChatLimits | None = None,
        prefill_bucket: int | None = None,
    ) -> None:
        super().__init__(name)
        self.path = path
        self.prefill_chunk = prefill_chunk or 0  # 0: chosen for the device at load
        self.prefill_bucket = prefill_bucket or 0  # 0: chosen for the device at load
        self.limits = limits or ChatLimits()
        self.info: ChatModelInfo | None = None
        self.tokenizer: Any = None
        self.vocab_size = 0
        self.kv_bytes_per_token = 0
        self.kv_budget_bytes = 0
        self.prefix_cache: PrefixCache | None = None
        self._grammars: GrammarCompiler | None = None
        self._grammar_lock = threading.Lock()
        self.weights_bytes = 0
        self._model: Any = None
        self._vocabulary: Vocabulary | None = None
        self._waiting: deque[tuple[GenerationRequest, RequestStream]] = deque()
        self._prefilling: list[Prefill] = []
        self._batch: DecodeBatch | None = None
        self._pipelined = True  # launch step n+1 before reading step n (set for the device)
        self._layers = 0
        self._counts_lock = threading.Lock()
        self._active = 0  # choices accepted and not finished
        self._queued = 0  # requests accepted and not yet admitted to prefill
        self._steps = 0
        self._last_arrival = self._waiting_since = 0.0  # monotonic times (see handle)
        self.tokens_generated = 0
        self.largest_batch = 0  # most rows decoded together so far (for tests and metrics)
        self.prefilled_together = 0  # prompts prefilled in shared forward passes

    # -- event loop side ---------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Choices accepted and not yet finished (waiting, prefilling or decoding)."""
        return self._active

    @property
    def queued(self) -> int:
        """Requests waiting for admission (the queue that overflows into 429s)."""
        return self._queued

    def stats(self) -> EngineStats:
        cache = self.prefix_cache
        return EngineStats(
            active=self._active,
            queued=self._queued,
            largest_batch=self.largest_batch,
            tokens_generated=self.tokens_generated,
            prefix_cache_hits=cache.hits if cache else 0,
            prefix_cache_misses=cache.misses if cache else 0,
            prefix_cache_entries=len(cache) if cache else 0,
            prefix_cache_bytes=cache.nbytes if cache else 0,
            stalled=self.stalled(self._active > 0, self.limits.watchdog_s),
            failures=self.failures,
            weights_bytes=self.weights_bytes,
        )

    def grammar_compiler(self) -> GrammarCompiler:
        """The model's tokenizer for llguidance, built on first use (~0.5 s; no MLX: any
        thread). Lazy, so engines that never constrain need no llguidance at all."""
        with self._grammar_lock:  # its own lock: building takes ~0.5 s
            if self._grammars is None:
                eos = sorted(self.info.eos_token_ids) if self.info else []
                hf_tokenizer = getattr(self.tokenizer, "_tokenizer", self.tokenizer)
                self._grammars = GrammarCompiler(hf_tokenizer, self.vocab_size, eos)
            return self._grammars

    def check_grammar(self, grammar: str, param: str) -> None:
        """Raise InvalidRequest (naming `param`) unless `grammar` can be enforced."""
        self.grammar_compiler().check(grammar, param)

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Render the model's chat template and tokenize; pure Python (no MLX), any thread."""
        text = render_chat(self.tokenizer, messages, tools, template_kwargs)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_text(self, text: str) -> list[int]:
        """Tokenize a raw prompt as the model expects it (BOS added if the model wants one)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def encode_fim(self, prefix: str, suffix: str) -> list[int]:
        """A fill-in-the-middle prompt, or InvalidRequest if the model has no FIM tokens."""
        assert self.info is not None
        if self.info.fim_tokens is None:
            raise InvalidRequest(
                f"model '{self.name}' has no fill-in-the-middle tokens, so 'suffix' cannot be used",
                param="suffix",
            )
        pre, suf, mid = self.info.fim_tokens
        text = f"{pre}{prefix}{suf}{suffix}{mid}"
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens))

    def check_fits(
        self, prompt_tokens: int, max_tokens: int | None, param: str = "messages"
    ) -> int:
        """Return the max_tokens to use, or raise ContextTooLong (before any model work)."""
        assert self.info is not None
        return self.info.fit(prompt_tokens, max_tokens, param)

    def kv_bytes(self, choices: int, tokens: int) -> int:
        """KV memory of `choices` rows of a dense batch cache `tokens` long (256-token steps)."""
        rounded = -(-tokens // 256) * 256
        return choices * rounded * self.kv_bytes_per_token

    def submit(self, request: GenerationRequest) -> RequestStream:
        """Queue a request; its events arrive on the returned stream (on the calling loop).

        Raises before anything is queued: InvalidRequest (cannot be served as asked),
        KVBudgetExceeded (could never fit in memory on its own), Overloaded (queue full).
        """
        if not request.prompt_tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if request.n > self.limits.max_batch:
            raise InvalidRequest(
                f"n={request.n} exceeds this engine's batch of {self.limits.max_batch}", param="n"
            )
        bad = [t for t, _ in request.sampling.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"logit_bias names token ids outside the vocabulary (0..{self.vocab_size - 1}): "
                f"{bad[:5]}",
                param="logit_bias",
            )
        need = self.kv_bytes(request.n, len(request.prompt_tokens) + request.max_tokens)
        if need > self.kv_budget_bytes:
            raise KVBudgetExceeded(
                f"This request needs {need / 2**20:.0f} MiB of KV cache ({request.n} × "
                f"{len(request.prompt_tokens) + request.max_tokens} tokens), more than the "
                f"engine's budget of {self.kv_budget_bytes / 2**20:.0f} MiB; lower max_tokens "
                "or n",
                param="max_tokens",
            )
        with self._counts_lock:
            if self._queued >= self.limits.max_waiting:
                raise Overloaded(
                    f"model '{self.name}' has {self._queued} requests waiting, the most it queues;"
                    " retry shortly",
                    retry_after_s=1,
                )
            self._queued += 1
            self._active += request.n
        stream = RequestStream(request.request_id, choices=request.n)
        self.post((request, stream))
        return stream

    # -- engine thread -----------------------------------------------------------------------

    def load(self) -> None:
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache, make_prompt_cache
        from mlx_lm.utils import load

        model, tokenizer, config = load(str(self.path), return_config=True)  # type: ignore[misc]
        self._model = model
        self.tokenizer = tokenizer
        self.vocab_size = int(config.get("vocab_size") or len(tokenizer.vocab))
        context = int(
            config.get("max_position_embeddings")
            or getattr(tokenizer, "model_max_length", 0)
            or 4096
        )
        if self.limits.context_length:
            context = min(context, self.limits.context_length)
        if self.limits.chat_template:
            tokenizer.chat_template = self.limits.chat_template
        vocab = tokenizer.vocab
        fim = next((s for s in FIM_TOKEN_SETS if all(t in vocab for t in s)), None)
        eos = frozenset(int(t) for t in tokenizer.eos_token_ids)
        self.info = ChatModelInfo(
            name=self.name,
            path=str(self.path),
            context_length=context,
            eos_token_ids=eos,
            created=int(self.path.stat().st_mtime),
            fim_tokens=fim,
            reasoning="<think>" in str(getattr(tokenizer, "chat_template", None) or ""),
            tool_format=tool_call_format(getattr(tokenizer, "chat_template", None)),
        )
        self._vocabulary = Vocabulary(tokenizer, TokenBytes(tokenizer), eos)
        # Warm up (compile kernels, allocate buffers) and measure the KV bytes per token.
        probe = make_prompt_cache(model)
        if any(type(cache) is not KVCache for cache in probe):
            kinds = sorted({type(cache).__name__ for cache in probe})
            raise ValueError(f"unsupported model: its KV caches ({kinds}) cannot be batched")
        self._layers = len(probe)
        mx.eval(model(mx.array([[0, 1]]), cache=probe))
        self.kv_bytes_per_token = sum(
            (c.keys.nbytes + c.values.nbytes) // c.keys.shape[2] for c in probe
        )
        parameters = cast(list[tuple[str, Any]], tree_flatten(model.parameters()))
        weights = sum(int(array.nbytes) for _, array in parameters)
        self.weights_bytes = weights
        self.kv_budget_bytes = self.limits.kv_budget_bytes or default_kv_budget(weights)
        if self.limits.prefix_cache_bytes > 0:
            self.prefix_cache = PrefixCache(self.limits.prefix_cache_bytes)
        # MLX's CPU backend composes rotary embeddings and attention from small operations;
        # cpu_decode does the same math in fewer (decode steps 4-12% faster; docs/benchmarks.md).
        on_cpu = mx.default_device() == mx.cpu
        self._batch = DecodeBatch(model, cpu_decode=on_cpu and install_cpu_decode(model))
        if not self.prefill_chunk:
            # Bounds how long one step's prefill delays running streams: a few hundred tokens
            # take ~1 s on a laptop CPU, while a GPU does thousands in a few milliseconds.
            self.prefill_chunk = 512 if on_cpu else 2048
        if not self.prefill_bucket:
            self.prefill_bucket = default_prefill_bucket()
        # MLX's CPU backend computes a launched step before `async_eval` returns (measured: the
        # launch took the whole ~115 ms step, the read after it nothing), so launching step n+1
        # before reading step n only delays every token by a step; reading first decodes as fast
        # (8 requests in-process, interleaved: 62.7 vs 61.7 tok/s). GPUs overlap the two.
        self._pipelined = not on_cpu
        logger.info(
            "engine %s loaded %s (context %d, %d KiB KV per token, KV budget %d MiB)",
            self.name,
            self.path,
            context,
            self.kv_bytes_per_token // 1024,
            self.kv_budget_bytes // 2**20,
        )

    def unload(self) -> None:
        self._model = None
        self._batch = None
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def handle(self, message: Any) -> None:
        now = time.monotonic()
        if not self._waiting:
            self._waiting_since = now
        self._last_arrival = now
        self._waiting.append(message)

    def _arrivals_pending_s(self) -> float:
        """How long admission should still wait for the rest of a burst (0: admit now)."""
        if not self._waiting:
            return 0.0
        now = time.monotonic()
        quiet = self._last_arrival + ARRIVAL_QUIET_S - now
        return max(0.0, min(quiet, self._waiting_since + ARRIVAL_WAIT_MAX_S - now))

    def has_work(self) -> bool:
        return bool(self._waiting or self._prefilling or self._batch)

    def fail_all(self, error: Exception) -> None:
        streams: dict[int, RequestStream] = {}
        for request, stream in self._waiting:
            self._count(-request.n, -1)
            streams[id(stream)] = stream
        for prefill in self._prefilling:
            self._count(-prefill.request.n)
            streams[id(prefill.stream)] = prefill.stream
        if self._batch is not None:
            for choice in self._batch.choices:
                self._count(-1)
                streams[id(choice.stream)] = choice.stream
            self._batch.keep([])
        self._waiting.clear()
        self._prefilling.clear()
        for stream in streams.values():
            stream.push(ErrorEvent(error))

    def step(self) -> None:
        import mlx.core as mx

        assert self._batch is not None
        batch = self._batch
        self._drop_cancelled()
        gathering = self._arrivals_pending_s()
        if not gathering:
            self._admit()
        elif not (self._batch or self._prefilling):  # idle: wait for the rest of the burst
            self._stopping = self.wait_for_message(gathering) or self._stopping
            return
        budget = self._prefill_together(self.prefill_chunk)
        batch.join(self._prefill_some(budget))
        self.largest_batch = max(self.largest_batch, len(batch))
        # Pipelined, step n+1 computes while step n is read; otherwise it is launched after.
        current = batch.schedule() if self._pipelined else batch.pending
        if current is None:
            if not self.has_work():
                mx.clear_cache()
            return
        self._emit(current)
        if not self._pipelined:
            batch.schedule()
        self._steps += 1
        if self._steps % _CLEAR_CACHE_EVERY == 0 or not self.has_work():
            # Idle (or every few hundred steps): hand MLX's cached buffers back, so memory
            # returns to the weights + prefix cache between bursts instead of creeping up.
            mx.clear_cache()

    def _emit(self, current: StepOutput) -> None:
        """Read one step's tokens, hand each to its choice, retire the finished rows."""
        assert self._batch is not None
        batch = self._batch
        finished: list[int] = []
        for row, token in enumerate(batch.read(current)):
            choice = batch.choices[row]
            self.tokens_generated += 1
            if choice.accept(token, current.extras[row]):
                finished.append(row)
        if finished:
            self._retire(finished)

    def _retire(self, rows: list[int]) -> None:
        """Finished rows leave the batch; their KV goes to the prefix cache."""
        assert self._batch is not None
        batch = self._batch
        for row in rows:
            choice = batch.choices[row]
            if self.prefix_cache is not None and choice.index == 0:
                # The row holds the prompt and every accepted token (the last one was fed into
                # the step scheduled after it), i.e. exactly prompt + choice.tokens.
                tokens = choice.request.prompt_tokens + choice.tokens
                self.prefix_cache.insert(tokens, batch.extract(row))
        finished = set(rows)
        batch.keep([i for i in range(len(batch)) if i not in finished])

    def _admit(self) -> None:
        """Move waiting requests to prefill while the batch has room and the KV budget allows."""
        assert self._batch is not None
        while self._waiting:
            request, stream = self._waiting[0]
            rows = len(self._batch) + sum(p.request.n for p in self._prefilling)
            if rows and rows + request.n > self.limits.max_batch:
                return
            longest = max(
                [
                    self._batch.longest,
                    *(
                        p.request.max_tokens + len(p.request.prompt_tokens)
                        for p in self._prefilling
                    ),
                ]
            )
            needed = len(request.prompt_tokens) + request.max_tokens
            if (
                rows
                and self.kv_bytes(rows + request.n, max(longest, needed)) > self.kv_budget_bytes
            ):
                return  # waits until running choices finish and free their rows
            self._waiting.popleft()
            self._count(0, -1)
            self._prefilling.append(self._start_prefill(request, stream))

    def _start_prefill(self, request: GenerationRequest, stream: RequestStream) -> Prefill:
        from mlx_lm.models.cache import make_prompt_cache

        constraint = None
        if request.grammar is not None:
            constraint = self.grammar_compiler().constraint(request.grammar)
        sampler = TokenSampler(
            request.sampling,
            choice_seed(request.sampling.seed, 0),
            self.vocab_size,
            request.prompt_tokens,
            request.logprobs,
            constraint,
        )
        cache, reused = None, 0
        if self.prefix_cache is not None and not request.prompt_logprobs:
            cache, reused = self.prefix_cache.lookup(request.prompt_tokens)
        if cache is None:
            cache = make_prompt_cache(self._model)
        remaining = list(request.prompt_tokens[reused:])
        return Prefill(request, stream, cache, sampler, remaining, cached_tokens=reused)

    def _prefill_together(self, budget: int) -> int:
        """Prefill fresh single-choice prompts that fit the budget in one left-padded forward
        pass, then prompts resuming from the prefix cache with equal suffixes in another, and
        join them to the batch; return the budget left. (Prompts with n > 1, scoring their
        prompt, or too long go one at a time.)"""
        group, width = choose_group(self._prefilling, budget)
        if len(group) >= 2:
            caches, logits = prefill_together(
                self._model, group, width, self._layers, self.prefill_bucket
            )
            self._join_prefilled(group, caches, logits)
            budget -= len(group) * width
        resumed = choose_resumed_group(self._prefilling, budget)
        if resumed:
            caches, logits = prefill_resumed(
                self._model, resumed, self._layers, self.prefill_bucket
            )
            self._join_prefilled(resumed, caches, logits)
            budget -= len(resumed) * len(resumed[0].to_prefill)
        return budget

    def _join_prefilled(self, group: list[Prefill], caches: list[Any], logits: Any) -> None:
        """Prompts prefilled in one pass (`logits`: their last positions) join the batch."""
        import mlx.core as mx

        assert self._batch is not None
        choices: list[Choice] = []
        first: list[Sampled] = []
        for row, prefill in enumerate(group):
            self._prefilling.remove(prefill)
            choices.append(self._choice(prefill, 0, prefill.sampler))
            first.append(prefill.sampler(logits[row : row + 1]))
        mx.async_eval(*(a for s in first for a in s.arrays()), [c.state for c in caches])
        self._batch.join_group(choices, caches, first)
        self.prefilled_together += len(group)

    def _choice(self, prefill: Prefill, index: int, sampler: TokenSampler) -> Choice:
        assert self._vocabulary is not None
        return Choice(
            prefill.request,
            prefill.stream,
            index,
            sampler,
            self._vocabulary,
            on_finish=lambda: self._count(-1),
            cached_tokens=prefill.cached_tokens,
        )

    def _prefill_some(self, budget: int) -> list[tuple[Choice, list[Any], Sampled]]:
        """Feed up to `budget` prompt tokens, one request at a time; return the choices whose
        prompt is done (ready to decode)."""
        ready: list[tuple[Choice, list[Any], Sampled]] = []
        while self._prefilling and budget > 0:
            prefill = self._prefilling[0]
            budget -= prefill.feed(self._model, budget, self.prefill_bucket)
            if len(prefill.to_prefill) == 1 and budget > 0:
                budget -= 1
                self._prefilling.pop(0)
                ready.extend(self._start_choices(prefill))
        return ready

    def _start_choices(self, prefill: Prefill) -> list[tuple[Choice, list[Any], Sampled]]:
        """Run the last prompt token, then fork the cache and sampler into n choices."""
        import mlx.core as mx

        assert self._vocabulary is not None
        request = prefill.request
        if request.prompt_logprobs:
            prefill.stream.push(PromptEvent(prefill.prompt_logprobs(self._vocabulary)))
        if request.max_tokens == 0:  # scoring only (completions' echo with max_tokens 0)
            usage = Usage(len(request.prompt_tokens), 0)
            self._count(-request.n)
            for index in range(request.n):
                prefill.stream.push(FinishEvent("length", usage, index))
            return []
        last = mx.array(prefill.to_prefill)
        logits = self._model(last[None], cache=prefill.cache)[:, -1, :]
        mx.eval(logits, [c.state for c in prefill.cache])
        # Fork every sampler before any samples: a fork copies penalty and grammar state.
        samplers = [prefill.sampler] + [
            prefill.sampler.fork(choice_seed(request.sampling.seed, index))
            for index in range(1, request.n)
        ]
        ready = []
        for index, sampler in enumerate(samplers):
            cache = prefill.cache if index == 0 else copy.deepcopy(prefill.cache)
            choice = self._choice(prefill, index, sampler)
            sampled = sampler(logits)
            mx.async_eval(*sampled.arrays(), *sampler.state())
            ready.append((choice, cache, sampled))
        return ready

    def _count(self, choices: int, queued: int = 0) -> None:
        with self._counts_lock:
            self._active += choices
            self._queued += queued

    def _drop_cancelled(self) -> None:
        for request, stream in [w for w in self._waiting if w[1].cancelled]:
            self._waiting.remove((request, stream))
            self._count(-request.n, -1)
            self._push_cancelled(request, stream, range(request.n), 0)
        for prefill in [p for p in self._prefilling if p.stream.cancelled]:
            self._prefilling.remove(prefill)
            self._count(-prefill.request.n)
            self._push_cancelled(prefill.request, prefill.stream, range(prefill.request.n), 0)
        assert self._batch is not None
        batch = self._batch
        gone = [row for row, choice in enumerate(batch.choices) if choice.stream.cancelled]
        if gone:
            for row in gone:
                choice = batch.choices[row]
                self._count(-1)
                self._push_cancelled(
                    choice.request, choice.stream, [choice.index], choice.generated
                )
            batch.keep([row for row in range(len(batch)) if row not in set(gone)])

    @staticmethod
    def _push_cancelled(
        request: GenerationRequest, stream: RequestStream, indices: Any, generated: int
    ) -> None:
        usage = Usage(len(request.prompt_tokens), generated)
        for index in indices:
            stream.push(FinishEvent("cancelled", usage, index))
        logger.info("request %s cancelled", request.request_id)


def default_prefill_bucket() -> int:
    """Query-length multiple prefill passes are padded to on this device. MLX's CUDA backend
    plans kernels per shape on first use (a new matmul shape ~4 ms on an H200, several per
    forward pass): a prompt length never seen before took 20-35 ms longer to its first token than
    a repeated one (bench/ttft_shapes.py). Padded to a multiple of 32, new lengths reuse earlier
    plans. On Metal and CPU a new shape costs nothing and padding would only add compute."""
    import mlx.core as mx

    return 32 if mx.default_device() == mx.gpu and mx.cuda.is_available() else 1


def default_kv_budget(weight_bytes: int) -> int:
    """Half of the memory MLX may use on this device, minus the weights (at least 256 MiB)."""
    import os

    import mlx.core as mx

    info = mx.device_info()
    device_memory = int(
        info.get("max_recommended_working_set_size") or info.get("memory_size") or 0
    )
    if not device_memory:  # MLX's CPU backend reports no memory: use physical RAM
        device_memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(device_memory // 2 - weight_bytes, 256 * 2**20)
