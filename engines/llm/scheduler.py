"""Scheduler: continuous batching of one model, synchronous and thread-agnostic.

Its API is a request id (uid) per request, as mlx-lm's BatchGenerator's: `insert` queues a
request with the sink its events go to, `remove` makes it leave, `step` advances everything by
one decode step. It has no thread and no lock: the engine thread calls it (and unit tests may
call it directly); it reports the choices and queue places it frees through `release`.

One `step` (docs/architecture.md has the long form):
1. Requests whose client went away (or that were removed) leave at once, wherever they are.
2. Admission: waiting requests start prefill while the batch has rows free and the projected
   cache memory (per cache kind: `CacheProfile.row_bytes`) fits the budget. Arrivals close together
   are admitted together (see ARRIVAL_QUIET_S). A request with `report_admission` is told, with
   its prefix cache reuse (AdmittedEvent), before it is prefilled.
3. Prefill, at most `prefill_chunk` tokens per step: fresh prompts together in one padded pass,
   the others one at a time (resuming from the prefix cache when they can). A request with n > 1
   is prefilled once; its n choices fork the prompt's cache.
4. Decode: one pass for every row of the DecodeBatch; pipelined (GPUs), step n+1 is launched
   before step n's tokens are read back, so the device works while the host detokenizes.
   Speculating (`config.speculative`), the batch's drafter proposes tokens first and the pass
   verifies them; a draft model is loaded here, on the engine thread that runs the target.
5. Finished rows leave; their cache goes to the prefix cache.

Models whose caches cannot be batched (`CacheProfile.batchable` false) run with `max_batch` 1:
one sequence at a time behind the same queue.

Invariants: each choice's events end with exactly one FinishEvent, or the request's with an
ErrorEvent; `release` is called once for every choice and queue place taken at `insert`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from engines.llm import caches
from engines.llm.batch import DecodeBatch
from engines.llm.caches import CacheProfile
from engines.llm.cpu_decode import PromptPasses
from engines.llm.draft_model import DraftModel
from engines.llm.prefill import (
    Prefill,
    choose_group,
    choose_resumed_group,
    prefill_resumed,
    prefill_together,
)
from engines.llm.prefix_cache import PrefixCache
from engines.llm.sampling import Sampled, TokenSampler, choice_seed
from engines.llm.scheduler_config import Counters, SchedulerConfig
from engines.llm.sequence import Choice, EventSink, Vocabulary
from engines.llm.speculative import (
    PROMPT_LOOKUP,
    Drafter,
    DraftLength,
    NgramIndex,
    PromptLookup,
    RowSpeculation,
)
from engines.types import (
    AdmittedEvent,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    PromptEvent,
    Usage,
)

logger = logging.getLogger(__name__)

# How often (in decode steps) MLX's buffer cache is trimmed, as mlx-lm does.
_CLEAR_CACHE_EVERY = 256
# Arrivals close together are prefilled together: waiting requests are admitted once none has
# arrived for ARRIVAL_QUIET_S, or once the oldest has waited ARRIVAL_WAIT_MAX_S. A burst of
# clients then costs one prefill pass instead of one per arrival, and an idle engine sleeping
# meanwhile leaves the GIL to the event loop that is parsing the rest of the burst.
ARRIVAL_QUIET_S = 0.002
ARRIVAL_WAIT_MAX_S = 0.02
# How often an idle engine looks whether a prefix cache entry it waits for has been read from disk.
DISK_POLL_S = 0.002

Ready = tuple[Choice, list[Any], Sampled]  # a choice, its prefilled cache, its first token


@dataclass
class _Waiting:
    uid: int
    request: GenerationRequest
    sink: EventSink


class Scheduler:
    def __init__(
        self,
        model: Any,
        vocabulary: Vocabulary,
        profile: CacheProfile,
        config: SchedulerConfig,
        new_sampler: Callable[[GenerationRequest], TokenSampler],
        release: Callable[[int, int], None],
        prefix_cache: PrefixCache | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.model = model
        self.profile = profile
        self.config = config = config.for_caches(profile)
        self.prefix_cache = prefix_cache
        self.draft_model: DraftModel | None = None
        drafter: Drafter | None = None
        if config.speculative == PROMPT_LOOKUP:
            drafter = PromptLookup()
        elif config.speculative:
            vocab = model(mx.array([[0]])).shape[-1]  # a lazy pass: only its shape is read
            draft = DraftModel.load(
                Path(config.speculative), vocab, config.cpu_decode, config.fused_projections
            )
            drafter = self.draft_model = draft
        self.batch = DecodeBatch(
            model, cpu_decode=config.cpu_decode, drafter=drafter, coast=config.coast
        )
        self._vocabulary = vocabulary
        self._new_sampler = new_sampler
        self._release = release  # (choices, queue places) freed; negative counts
        self._waiting: deque[_Waiting] = deque()
        self._prefilling: list[Prefill] = []
        self._removed: set[int] = set()
        self._next_uid = 0
        self._steps = 0
        self._awaiting_disk = False  # the first waiting request waits for a disk read
        self._last_arrival = self._waiting_since = 0.0  # monotonic times
        self.counters = counters or Counters()

    def kv_bytes(self, rows: int, tokens: int) -> int:
        """Cache memory of `rows` rows of a batch `tokens` long (dense: every row as long),
        with the draft model's cache rows when one drafts."""
        per_row = self.profile.row_bytes(tokens)
        if self.draft_model is not None:
            per_row += self.draft_model.profile.row_bytes(tokens)
        return rows * per_row

    # -- the uid API -------------------------------------------------------------------------

    def insert(self, request: GenerationRequest, sink: EventSink) -> int:
        """Queue a request (already validated and counted by the caller); return its uid."""
        now = time.monotonic()
        if not self._waiting:
            self._waiting_since = now
        self._last_arrival = now
        uid = self._next_uid
        self._next_uid += 1
        self._waiting.append(_Waiting(uid, request, sink))
        return uid

    def remove(self, uid: int) -> None:
        """Make a request leave at the next step (its choices finish as 'cancelled')."""
        self._removed.add(uid)

    def has_work(self) -> bool:
        return bool(self._waiting or self._prefilling or self.batch)

    def step(self) -> float:
        """Advance every request by one step; return how long the caller may wait for more
        arrivals before calling again (0: call again at once, if there is work)."""
        batch = self.batch
        self._drop_removed()
        gathering = self._arrivals_pending_s()
        if not gathering:
            self._admit()
        elif not (batch or self._prefilling):  # idle: wait for the rest of the burst
            return gathering
        if self._prefilling:
            batch.untimed()  # this step prefills too
        budget = self._prefill_together(self.config.prefill_chunk)
        batch.join(self._prefill_some(budget))
        self.counters.largest_batch = max(self.counters.largest_batch, len(batch))
        # Pipelined, step n+1 computes while step n is read; otherwise it is launched after.
        pipelined = self.config.pipelined or batch.coasting
        current = batch.schedule() if pipelined else batch.pending
        if current is None:
            if not self.has_work():
                mx.clear_cache()
            # Only a disk read to wait for: poll for it without spinning.
            return DISK_POLL_S if self._awaiting_disk and not self._prefilling else 0.0
        self._emit(current, pipelined)
        if not pipelined:
            batch.schedule()
        self._steps += 1
        if self._steps % _CLEAR_CACHE_EVERY == 0 or not self.has_work():
            # Idle (or every few hundred steps): hand MLX's cached buffers back, so memory
            # returns to the weights + prefix cache between bursts instead of creeping up.
            mx.clear_cache()
        return 0.0

    def fail_all(self, error: Exception) -> None:
        """Every request in flight ends with `error` (its stream gets one ErrorEvent)."""
        sinks: dict[int, EventSink] = {}
        for waiting in self._waiting:
            self._release(-waiting.request.n, -1)
            sinks[id(waiting.sink)] = waiting.sink
        for prefill in self._prefilling:
            self._release(-prefill.request.n, 0)
            sinks[id(prefill.stream)] = prefill.stream
        for choice in self.batch.choices:
            self._release(-1, 0)
            sinks[id(choice.stream)] = choice.stream
        self.batch.keep([])
        self._waiting.clear()
        self._prefilling.clear()
        self._removed.clear()
        for sink in sinks.values():
            sink.push(ErrorEvent(error))

    # -- admission and prefill ---------------------------------------------------------------

    def _arrivals_pending_s(self) -> float:
        """How long admission should still wait for the rest of a burst (0: admit now)."""
        if not self._waiting:
            return 0.0
        now = time.monotonic()
        quiet = self._last_arrival + ARRIVAL_QUIET_S - now
        return max(0.0, min(quiet, self._waiting_since + ARRIVAL_WAIT_MAX_S - now))

    def _admit(self) -> None:
        """Move waiting requests to prefill while the batch has room and the budget allows,
        and the first one's prefix cache entry is not being read from disk."""
        self._awaiting_disk = False
        while self._waiting:
            request = self._waiting[0].request
            rows = len(self.batch) + sum(p.request.n for p in self._prefilling)
            if rows and rows + request.n > self.config.max_batch:
                return
            longest = max([self.batch.longest, *(_limit(p.request) for p in self._prefilling)])
            needed = max(longest, _limit(request))
            if rows and self.kv_bytes(rows + request.n, needed) > self.config.kv_budget_bytes:
                return  # waits until running choices finish and free their rows
            if not self._prefix_ready(request):
                self._awaiting_disk = True  # its entry is being read; the batch goes on
                return
            # Started before it leaves the queue: if starting raises, the request is still
            # waiting, so the step's failure (fail_all) reaches it and its client hears of it.
            prefill = self._start_prefill(self._waiting[0])
            self._waiting.popleft()
            self._release(0, -1)
            self._prefilling.append(prefill)
            if request.report_admission:  # the engine's prompt: a vision prompt's is expanded
                prompt = len(prefill.request.prompt_tokens)
                prefill.stream.push(AdmittedEvent(prompt, prefill.cached_tokens))

    def _prefix_ready(self, request: GenerationRequest) -> bool:
        """Whether the request's prefix cache lookup can answer without waiting for the disk
        (a read of a long entry would hold every running row up on this thread: it runs on the
        disk's thread while the request waits at the head of the queue)."""
        if self.prefix_cache is None or request.prompt_logprobs:
            return True
        return self.prefix_cache.ready(request.prompt_tokens)

    @property
    def _prompt_model(self) -> Any:
        """What prompt passes call: on a CPU with cpu_decode, the model with each pass built as
        a wide decode step (`PromptPasses`); else the model."""
        return PromptPasses(self.model) if self.config.cpu_decode else self.model

    def _start_prefill(self, waiting: _Waiting) -> Prefill:
        request = waiting.request
        cache, reused = None, 0
        if self.prefix_cache is not None and not request.prompt_logprobs:
            cache, reused = self.prefix_cache.lookup(request.prompt_tokens)
        if cache is None:
            cache = make_prompt_cache(self.model)
        remaining = list(request.prompt_tokens[reused:])
        sampler = self._new_sampler(request)
        return Prefill(
            waiting.uid, request, waiting.sink, cache, sampler, remaining, cached_tokens=reused
        )

    def _prefill_together(self, budget: int) -> int:
        """Prefill fresh single-choice prompts that fit the budget in one padded forward pass,
        then prompts resuming from the prefix cache with equal suffixes in another, and join
        them to the batch; return the budget left. (Prompts with n > 1, scoring their prompt,
        or too long go one at a time.)"""
        bucket = self.config.prefill_bucket
        group, width = choose_group(self._prefilling, budget)
        if len(group) >= 2:
            batch, logits = prefill_together(
                self._prompt_model, group, width, self.profile.plain, bucket
            )
            self._join_prefilled(group, batch, logits)
            budget -= len(group) * width
        resumed = choose_resumed_group(self._prefilling, budget)
        if resumed:
            batch, logits = prefill_resumed(self._prompt_model, resumed, bucket)
            self._join_prefilled(resumed, batch, logits)
            budget -= len(resumed) * len(resumed[0].to_prefill)
        return budget

    def _join_prefilled(self, group: list[Prefill], batch: list[Any], logits: Any) -> None:
        """Prompts prefilled in one pass (`logits`: their last positions) join the batch."""
        choices: list[Choice] = []
        first: list[Sampled] = []
        for row, prefill in enumerate(group):
            self._prefilling.remove(prefill)
            choices.append(self._choice(prefill, 0, prefill.sampler))
            first.append(prefill.sampler(logits[row : row + 1]))
            if self._snapshots:
                self._snapshot(prefill.request.prompt_tokens, [c.extract(row) for c in batch])
        state = [a for layer in batch for a in caches.arrays(layer)]
        mx.async_eval(*(a for s in first for a in s.arrays()), *state)
        self.batch.join_group(choices, batch, first)
        self.counters.prefilled_together += len(group)

    def _prefill_some(self, budget: int) -> list[Ready]:
        """Feed up to `budget` prompt tokens, one request at a time; return the choices whose
        prompt is done (ready to decode)."""
        ready: list[Ready] = []
        bucket = self.config.prefill_bucket
        while self._prefilling and budget > 0:
            prefill = self._prefilling[0]
            budget -= prefill.feed(self._prompt_model, budget, bucket)
            if len(prefill.to_prefill) == 1 and budget > 0:
                budget -= 1
                self._prefilling.pop(0)
                ready.extend(self._start_choices(prefill))
        return ready

    def _start_choices(self, prefill: Prefill) -> list[Ready]:
        """Run the last prompt token, then fork the cache and sampler into n choices."""
        request = prefill.request
        if request.prompt_logprobs:
            prefill.stream.push(PromptEvent(prefill.prompt_logprobs(self._vocabulary)))
        if request.max_tokens == 0:  # scoring only (completions' echo with max_tokens 0)
            usage = Usage(len(request.prompt_tokens), 0)
            self._release(-request.n, 0)
            for index in range(request.n):
                prefill.stream.push(FinishEvent("length", usage, index))
            return []
        last = mx.array(prefill.to_prefill)
        logits = self.model(last[None], cache=prefill.cache)[:, -1, :]
        mx.eval(logits, [caches.arrays(layer) for layer in prefill.cache])
        if self._snapshots:
            self._snapshot(request.prompt_tokens, copy.deepcopy(prefill.cache))
        # Fork every sampler before any samples: a fork copies penalty and grammar state.
        samplers = [prefill.sampler] + [
            prefill.sampler.fork(choice_seed(request.sampling.seed, index))
            for index in range(1, request.n)
        ]
        ready: list[Ready] = []
        for index, sampler in enumerate(samplers):
            cache = prefill.cache if index == 0 else copy.deepcopy(prefill.cache)
            choice = self._choice(prefill, index, sampler, ready[0][0] if ready else None)
            sampled = sampler(logits)
            mx.async_eval(*sampled.arrays(), *sampler.state())
            ready.append((choice, cache, sampled))
        return ready

    @property
    def _snapshots(self) -> bool:
        """Keep a copy of each prompt's cache when its prefill ends: caches that cannot be
        trimmed back serve the next turn of a conversation only from such a snapshot."""
        return self.prefix_cache is not None and not self.profile.plain

    def _snapshot(self, tokens: list[int], cache: list[Any]) -> None:
        assert self.prefix_cache is not None
        self.prefix_cache.insert(list(tokens), cache)

    def _choice(
        self, prefill: Prefill, index: int, sampler: TokenSampler, first: Choice | None = None
    ) -> Choice:
        """Choice `index` of the prefilled request (`first`: its choice 0, made before)."""
        speculation = None
        request = prefill.request
        if self.config.speculative and request.speculative is not False:
            # Prompt lookup copies from the prompt, the output and a prediction; beside a draft
            # model, a prediction alone is looked up (where it has none, the model drafts).
            lookup = self.config.speculative == PROMPT_LOOKUP
            ngrams = None
            if lookup or request.prediction:
                built = first.speculation.index if first and first.speculation else None
                ngrams = built.fork() if built is not None else NgramIndex(
                    request.prompt_tokens, prediction=request.prediction, copy_history=lookup
                )  # fmt: skip
            speculation = RowSpeculation(ngrams, DraftLength(self.config.speculative_tokens))
        return Choice(
            prefill.request,
            prefill.stream,
            index,
            sampler,
            self._vocabulary,
            on_finish=lambda: self._release(-1, 0),
            cached_tokens=prefill.cached_tokens,
            uid=prefill.uid,
            speculation=speculation,
        )

    # -- decode output and leaving -----------------------------------------------------------

    def _emit(self, current: Any, pipelined: bool) -> None:
        """Read one step's tokens, hand each to its choice, retire the finished rows (`pipelined`:
        the next step was launched before this one was read)."""
        batch = self.batch
        counters = self.counters
        finished: list[int] = []
        for row, last in enumerate(batch.read(current)):
            choice = batch.choices[row]
            for token, extra in current.run(row, last):  # kept drafts first, if any
                counters.tokens_generated += 1
                if choice.accept(token, extra):
                    finished.append(row)
                    break
        counters.decode_row_steps += len(batch)
        counters.drafted_tokens += current.drafted
        counters.accepted_drafts += current.accepted
        if finished:
            self._retire(finished, pipelined)

    def _retire(self, rows: list[int], pipelined: bool) -> None:
        """Finished rows leave the batch; their cache goes to the prefix cache."""
        batch = self.batch
        for row in rows:
            choice = batch.choices[row]
            if self.prefix_cache is not None and choice.index == 0:
                # Pipelined, the last token was fed into the step launched before it was read;
                # in order, the row leaves before it is fed.
                fed = choice.tokens if pipelined else choice.tokens[:-1]
                tokens = choice.request.prompt_tokens + fed
                cache = batch.extract(row)
                # Speculating, the cache may hold kept drafts past a stop: drop them (only
                # trimmable caches are speculated on; an SSM state counts no tokens).
                excess = caches.offset(cache) - len(tokens) if caches.trimmable(cache) else 0
                if excess > 0:
                    for layer in cache:
                        layer.trim(excess)
                self.prefix_cache.insert(tokens, cache)
        finished = set(rows)
        batch.keep([i for i in range(len(batch)) if i not in finished])

    def _keep_prefilled(self, prefill: Prefill) -> None:
        """A cancelled prompt's prefilled part goes to the prefix cache: an agent that gives up
        on a long prefill (Claude Code cuts a stream at 10 minutes and retries) and sends the
        same prompt again resumes where the last attempt stopped instead of from zero. (Not for
        prompts fed as embeddings or with their own positions: their tokens do not say what the
        cache holds.)"""
        if (
            self.prefix_cache is None
            or prefill.embeddings is not None
            or prefill.positions is not None
        ):
            return
        done = len(prefill.request.prompt_tokens) - len(prefill.to_prefill)
        if done > prefill.cached_tokens:
            self.prefix_cache.insert(list(prefill.request.prompt_tokens[:done]), prefill.cache)

    def _gone(self, uid: int, sink: EventSink) -> bool:
        return sink.cancelled or uid in self._removed

    def _drop_removed(self) -> None:
        """Requests cancelled by their client or removed by uid leave, wherever they are."""
        for waiting in [w for w in self._waiting if self._gone(w.uid, w.sink)]:
            self._waiting.remove(waiting)
            self._release(-waiting.request.n, -1)
            _push_cancelled(waiting.request, waiting.sink, range(waiting.request.n), 0)
        for prefill in [p for p in self._prefilling if self._gone(p.uid, p.stream)]:
            self._prefilling.remove(prefill)
            self._keep_prefilled(prefill)
            self._release(-prefill.request.n, 0)
            _push_cancelled(prefill.request, prefill.stream, range(prefill.request.n), 0)
        batch = self.batch
        gone = [row for row, c in enumerate(batch.choices) if self._gone(c.uid, c.stream)]
        for row in gone:
            choice = batch.choices[row]
            self._release(-1, 0)
            _push_cancelled(choice.request, choice.stream, [choice.index], choice.generated)
        if gone:
            batch.keep([row for row in range(len(batch)) if row not in set(gone)])
        self._removed.clear()


def _limit(request: GenerationRequest) -> int:
    """Most tokens one choice of `request` can hold in its cache."""
    return len(request.prompt_tokens) + request.max_tokens


def _push_cancelled(
    request: GenerationRequest, sink: EventSink, indices: Any, generated: int
) -> None:
    usage = Usage(len(request.prompt_tokens), generated)
    for index in indices:
        sink.push(FinishEvent("cancelled", usage, index))
    logger.info("request %s cancelled", request.request_id)
