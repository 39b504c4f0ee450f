"""DecodeBatch: the running choices of one engine, decoded together one token per step.

Rows are choices; the cache is one mlx-lm batch cache per layer, made by the layer cache's own
`merge` (`BatchKVCache`, dense and left-padded: its memory is rows × longest row, which admission
control projects; `BatchRotatingKVCache` for sliding windows; `ArraysCache` and `CacheList`
batch themselves). Choices join between steps with their prefilled single-sequence cache and
first token (`extend`), and leave by filtering their row out (`filter`, `extract`).

A batch of one row runs on plain single-sequence KV caches instead ("solo"): no padding mask
and scalar offsets, the same graph as mlx-lm's `stream_generate`, so one stream decodes as fast
as raw mlx-lm. The caches are converted (one copy) when a second row joins or all but one leave.

On the CPU, steps and verification passes are built inside `cpu_decode.decode_step` (the engine
installed its rewrites of rotary embeddings and attention in the model).

Pipelining: `schedule` builds and launches step n+1 from the tokens of step n while they are still
being computed; the caller then reads step n's tokens back (`read`). A row that finishes on step n
has already been fed into step n+1; that extra token is discarded when the row is filtered out.
Where launching does not overlap (MLX's CPU backend computes a launched step before
`async_eval` returns), the caller reads `pending` first and launches after: tokens come out a
step sooner and finished rows are filtered out before the next step.

Distributed (`agree` set: engines/llm/distributed.py): the batch argmax of plain greedy rows goes
through `agree`, as every other row's token does in its sampler, so every rank decodes rank 0's
tokens.

Speculative (a `drafter`, plain KV caches only, not pipelined: drafts follow tokens the host
has read): rows are held in
`RaggedKVCache`s, so that each row can drop its rejected drafts alone; the drafter follows the
rows as they join and leave; a step whose rows have drafts runs one pass over [pending token,
drafts...] and is verified at once (engines/llm/speculative.py); its StepOutput then carries,
per row, the kept drafts to emit before the row's new pending token. The batch times its steps
(`pass_cost`: from one `schedule` to the next, the pass and the emitting of its tokens, for
steps no prefill or change of rows interrupted) so drafting is priced on this device. Where the
device pipelines (`coast`), a step whose pricing found no drafting that pays starts COAST_STEPS
plain steps that the scheduler runs pipelined (`coasting`: nothing is drafted, each counts as an
idle step of every row), then drafting is priced again. Never while a seeded sampling row
speculates (`speculative.seeded`): whether it drafts at a step changes its draws, and a seeded
request must give the same output whatever else runs beside it; one joining ends the coasting.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from engines.llm import caches as cache_ops
from engines.llm.cpu_decode import decode_step
from engines.llm.ragged_cache import RaggedKVCache
from engines.llm.sampling import Sampled
from engines.llm.sequence import Choice
from engines.llm.speculative import Drafter, Drafts, PassCost, seeded, verify
from engines.readback import host_list

COAST_STEPS = 16  # pipelined plain steps after a pricing found no drafting that pays


@dataclass
class StepOutput:
    """Tokens of one step for every row (shape (rows,)), with per-row logprob data if any.
    After a speculative step, `kept[row]` are verified drafts to emit before `tokens[row]`."""

    tokens: mx.array
    extras: list[Sampled | None]
    kept: list[list[int]] | None = None
    kept_extras: list[list[Sampled | None]] | None = None
    drafted: int = 0  # drafts proposed in the pass that made this step, over all rows
    accepted: int = 0  # of which kept

    def run(self, row: int, token: int) -> list[tuple[int, Sampled | None]]:
        """Row `row`'s tokens of this step in order, with their logprob data."""
        last = (token, self.extras[row])
        if self.kept is None or self.kept_extras is None:
            return [last]
        return [*zip(self.kept[row], self.kept_extras[row], strict=True), last]

    def joined(self, first: list[Sampled]) -> StepOutput:
        """This step with rows appended whose pending tokens are `first` (nothing kept)."""
        tokens = mx.concatenate([self.tokens, *(sampled.token for sampled in first)])
        none: list[list[Any]] = [[] for _ in first]
        return StepOutput(
            tokens,
            self.extras + list(first),
            None if self.kept is None else self.kept + none,
            None if self.kept_extras is None else self.kept_extras + none,
            self.drafted,
            self.accepted,
        )

    def select(self, rows: list[int]) -> StepOutput:
        kept = None if self.kept is None else [self.kept[i] for i in rows]
        kept_extras = None if self.kept_extras is None else [self.kept_extras[i] for i in rows]
        return StepOutput(
            self.tokens[mx.array(rows)],
            [self.extras[i] for i in rows],
            kept,
            kept_extras,
            self.drafted,
            self.accepted,
        )


class DecodeBatch:
    def __init__(
        self,
        model: Any,
        cpu_decode: bool = False,
        drafter: Drafter | None = None,
        coast: bool = False,
    ) -> None:
        self._model = model
        self._coast = (
            coast  # speculating: may run pipelined plain steps while drafting does not pay
        )
        self._coasting = 0  # such steps left
        self._cpu_decode = cpu_decode  # steps built inside cpu_decode.decode_step
        self._drafter = drafter  # set: ragged batch caches; rows may draft
        self._speculative = drafter is not None
        self.choices: list[Choice] = []
        self._caches: list[Any] | None = None  # a batch cache per layer, or single when solo
        self._pending: StepOutput | None = None
        # Distributed: this step's tokens -> rank 0's (see TokenSampler.agree); None otherwise.
        self.agree: Callable[[mx.array], mx.array] | None = None
        self.pass_cost = PassCost()  # speculating: what a pass costs by its positions
        self._timing: tuple[int, float] | None = None  # (positions, start) of the step timed

    def __len__(self) -> int:
        return len(self.choices)

    @property
    def longest(self) -> int:
        """Most tokens any row may reach (the dense cache's eventual length)."""
        return max((choice.limit for choice in self.choices), default=0)

    @property
    def coasting(self) -> bool:
        """Speculating, but the next steps are plain and may run pipelined: the last pricing
        found no drafting that pays."""
        return self._coasting > 0

    def untimed(self) -> None:
        """The step in progress also did other work (a prefill, rows joining or leaving): its
        time says nothing of the pass's cost."""
        self._timing = None

    def join(self, arrivals: list[tuple[Choice, list[Any], Sampled]]) -> None:
        """Add prefilled choices: (choice, its single-sequence KV cache, its first token)."""
        if not arrivals:
            return
        self.untimed()
        if not self.choices and len(arrivals) == 1:  # alone: keep the plain cache
            choice, cache, sampled = arrivals[0]
            self._caches = cache
            self._pending = StepOutput(sampled.token, [sampled])
            self.choices = [choice]
            if self._drafter is not None:
                self._drafter.join([choice])
            return
        if self._speculative:
            incoming = [
                RaggedKVCache.merge([cache[i] for _, cache, _ in arrivals])
                for i in range(len(arrivals[0][1]))
            ]
        else:
            incoming = cache_ops.merge([cache for _, cache, _ in arrivals])
        choices = [choice for choice, _, _ in arrivals]
        self.join_group(choices, incoming, [sampled for _, _, sampled in arrivals])

    def join_group(self, choices: list[Choice], caches: list[Any], first: list[Sampled]) -> None:
        """Add choices prefilled together: their batch cache rows and first tokens, in order."""
        self.untimed()
        if self._speculative and not isinstance(caches[0], RaggedKVCache):
            caches = [RaggedKVCache.from_batch(layer, len(choices)) for layer in caches]
        if self._caches is None:
            self._caches = caches
        else:
            if len(self.choices) == 1:  # solo: become a batch
                self._caches = [self._batched(cache) for cache in self._caches]
            for mine, theirs in zip(self._caches, caches, strict=True):
                mine.extend(theirs)
        if self._pending is None:
            self._pending = StepOutput(mx.concatenate([s.token for s in first]), list(first))
        else:  # the running rows keep the drafts their pending step verified
            self._pending = self._pending.joined(first)
        self.choices.extend(choices)
        if any(seeded(choice) for choice in choices):
            self._coasting = 0  # it drafts from its next step, as it would alone
        if self._drafter is not None:
            self._drafter.join(choices)

    @property
    def pending(self) -> StepOutput | None:
        """The step launched last (its tokens not read yet), or None when the batch is empty."""
        return self._pending

    def schedule(self) -> StepOutput | None:
        """Launch the next step from the pending tokens; return the pending (current) step."""
        current = self._pending
        if current is None:
            return None
        assert self._caches is not None
        if self._drafter is not None and self._coasting:
            self._coasting -= 1
            self._timing = None  # a pipelined step's time is not a pass's
            for choice in self.choices:
                if choice.speculation is not None:
                    choice.speculation.length.record(0, 0)  # an idle step
        elif self._drafter is not None:
            now = time.perf_counter()
            if self._timing is not None:
                positions, start = self._timing
                self.pass_cost.record(positions, now - start)
            count = len(self.choices)
            drafts = self._drafter.propose(
                self.choices, lambda width: self.pass_cost.relative(count, width)
            )
            self._timing = (count * (1 + max(len(d) for d in drafts.tokens)), now)
            if any(drafts.tokens):
                self._pending = self._verify(current, drafts)
                return current
            if self._coast and not any(seeded(choice) for choice in self.choices):
                self._coasting = COAST_STEPS
        # The new tokens' positions: every layer's cache holds as many as the first one's.
        with decode_step(self._caches[0].offset) if self._cpu_decode else nullcontext():
            logits = self._model(current.tokens[:, None], cache=self._caches)[:, -1, :]
        samplers = [choice.sampler for choice in self.choices]
        if all(sampler.plain_greedy for sampler in samplers):
            tokens = mx.argmax(logits, axis=-1)
            if self.agree is not None:
                tokens = self.agree(tokens)
            upcoming = StepOutput(tokens, [None] * len(samplers))
        else:
            rows = [sampler(logits[i : i + 1]) for i, sampler in enumerate(samplers)]
            upcoming = StepOutput(mx.concatenate([r.token for r in rows]), list(rows))
        state = [a for sampler in samplers for a in sampler.state()]
        extra = [a for r in upcoming.extras if r is not None for a in r.arrays()]
        mx.async_eval(upcoming.tokens, *extra, *state)
        self._pending = upcoming
        return current

    def _verify(self, current: StepOutput, drafts: Drafts) -> StepOutput:
        """One pass over every row's [pending token, drafts...]; keep what verification keeps."""
        assert self._caches is not None and self._drafter is not None
        width = 1 + max(len(d) for d in drafts.tokens)
        padded = [d + [0] * (width - 1 - len(d)) for d in drafts.tokens]
        inputs = mx.concatenate([current.tokens[:, None], mx.array(padded, dtype=mx.int32)], 1)
        offsets = self._caches[0].offset
        used = [1 + len(d) for d in drafts.tokens]  # each row's positions before its padding
        starts = None
        if self._cpu_decode:
            with decode_step(offsets, width, used) as step:
                logits = self._model(inputs, cache=self._caches)
            if step.packed_logits:  # (1, sum(used), vocab): row i's from starts[i]
                starts = [sum(used[:i]) for i in range(len(used))]
        else:
            logits = self._model(inputs, cache=self._caches)
        samplers = [choice.sampler for choice in self.choices]
        results = verify(logits, drafts, samplers, starts)
        # Each row keeps its pending token and its kept drafts; the rest of its positions go.
        drop = [width - 1 - r.accepted for r in results]
        for layer in self._caches:
            if isinstance(layer, RaggedKVCache):
                layer.rewind(drop)
            else:  # a lone row on plain caches
                layer.trim(drop[0])
        self._drafter.verified(self.choices, results)
        return StepOutput(
            mx.array([r.tokens[-1] for r in results]),
            [r.extras[-1] for r in results],
            [r.tokens[:-1] for r in results],
            [r.extras[:-1] for r in results],
            drafted=sum(r.drafted for r in results),
            accepted=sum(r.accepted for r in results),
        )

    def _batched(self, cache: Any) -> Any:
        """A lone row's layer cache as a one-row batch cache."""
        return RaggedKVCache.merge([cache]) if self._speculative else cache.merge([cache])

    @staticmethod
    def read(step: StepOutput) -> list[int]:
        return host_list(step.tokens)

    def extract(self, row: int) -> list[Any]:
        """A single-sequence copy of one row's KV cache (for the prefix cache)."""
        assert self._caches is not None
        if len(self.choices) == 1:
            return copy.deepcopy(self._caches)
        return [cache.extract(row) for cache in self._caches]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in order); the others leave the batch."""
        if len(rows) == len(self.choices):
            return
        self.untimed()
        if self._drafter is not None:
            self._drafter.keep(rows)
        if not rows:
            self.choices, self._caches, self._pending = [], None, None
            self._coasting = 0
            return
        assert self._caches is not None and self._pending is not None
        if len(rows) == 1:  # back to solo
            self._caches = [cache.extract(rows[0]) for cache in self._caches]
        else:
            for cache in self._caches:
                cache.filter(mx.array(rows))
        self.choices = [self.choices[i] for i in rows]
        self._pending = self._pending.select(rows)
