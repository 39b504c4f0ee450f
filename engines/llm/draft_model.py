"""DraftModel: a smaller model sharing the target's tokenizer drafts tokens for the batch's rows
(`speculative = "<draft model>"` in the models file).

It runs on the engine thread, like the target (the Scheduler loads it there), and keeps its own
KV cache: one `RaggedKVCache` per layer with a row for every row of the DecodeBatch, in the same
order (`join` appends, `keep` filters, as the batch does).

Invariant: draft row i holds exactly the first `lengths[i]` tokens of its choice's context
(prompt, then the choice's tokens). A step (`propose`):
1. every drafting row feeds the context it has not fed yet (its catch-up: usually the last
   emitted token, or the last two after every draft was kept), in one right-padded pass; the
   padding is rewound at once;
2. then K − 1 one-token passes, K the longest draft asked for: each row draws its next draft
   from the logits of the previous position (greedy rows: argmax; sampling rows: their own
   sampler's distribution `q`, keyed by their seed, step and own draft count — never by K,
   which other rows decide —, `q` kept for verification);
3. after verification (`verified`) each row rewinds to the longest prefix of its new context it
   holds: its context plus the drafts that were kept (never the last draft: it was not fed).
Rows that do not draft this step are fed padding, rewound at the end of the step; rows that
never draft (no speculation, a grammar or penalties) join with an empty row and no prefill.
A row whose request has a prediction (Predicted Outputs) drafts from it where its n-gram index
finds a match: the model drafts nothing for it that step (it is fed padding, as a row that does
not draft), and its draft row catches up on the kept tokens the next time the model drafts.

A row's prompt is prefilled into its draft row when it joins, in one go on the engine thread
(the target's prompt prefill is chunked and spread over steps; this one is not). The draft
caches of the last KEPT_PROMPTS prompts are kept (`_kept`, newest last): a prompt sharing a
prefix with one of them (an agent's next turn holds its last turn's prompt) is prefilled from
its longest such prefix on, so a conversation's follow-up feeds the draft model its new tokens,
not the whole conversation again. Kept caches are only ever read (sliced into a new cache),
never written; their memory (at most KEPT_PROMPTS prompts' worth of the draft model's KV) is
not counted by admission, so it is bounded apart: at most KEPT_BYTES, the newest first (a prompt
whose cache alone is larger is not kept).

Only draft models whose caches are plain KV caches (trimmable, unbounded) are accepted: a
sliding window or an SSM state cannot drop rejected drafts, and re-feeding the context after
every rejection would cost more than drafting saves, so such a draft model is refused at load.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from engines.llm.caches import CacheProfile
from engines.llm.cpu_decode import decode_step
from engines.llm.cpu_decode import install as install_cpu_decode
from engines.llm.fused_projections import install as install_fused_projections
from engines.llm.ragged_cache import RaggedKVCache
from engines.llm.sequence import Choice
from engines.llm.speculative import (
    Drafts,
    RowResult,
    draft_keys,
    draft_room,
    fit_to_pass,
    record,
)
from engines.readback import host_list

PREFILL_CHUNK = 512  # prompt tokens per draft prefill pass
KEPT_PROMPTS = 2  # prompts whose draft caches are kept for later prompts sharing their prefix
KEPT_BYTES = 1 << 30  # at most this much KV kept so (the newest first; a longer prompt: none)


class DraftModel:
    """The drafter of one engine's batch (see the module docstring)."""

    def __init__(self, model: Any, probe: list[Any], cpu_decode: bool = False) -> None:
        """`probe`: a cache of this model filled by one pass (its layers' shapes and dtype);
        `cpu_decode`: its passes are built inside `cpu_decode.decode_step` (the rewrites are
        installed in it)."""
        self.model = model
        self._cpu_decode = cpu_decode
        self.profile = CacheProfile.of(probe)  # its memory per row: admission adds it
        # Per layer: (1, kv heads, 0, head dim) of keys and of values, and their dtype.
        self._shapes = [
            ((1, c.keys.shape[1], 0, c.keys.shape[3]), (1, c.values.shape[1], 0, c.values.shape[3]),
             c.keys.dtype)
            for c in probe
        ]  # fmt: skip
        self._cache: list[RaggedKVCache] | None = None
        self._drafted = 0  # K of the last proposal: each drafting row fed K - 1 drafts
        self._fed_drafts: list[bool] = []  # per row: the model drafted for it last proposal
        self._kept: list[tuple[list[int], list[Any]]] = []  # (prompt, its draft cache)
        self.prefilled_tokens = 0  # prompt tokens fed to the draft model, all told

    @classmethod
    def load(
        cls, path: Path, vocab: int, cpu_decode: bool = False, fuse: bool = False
    ) -> DraftModel:
        """Load the draft model at `path` (on the calling thread: the engine thread); refuse one
        whose caches cannot drop rejected drafts or whose logits are not `vocab` wide. With
        `cpu_decode` (the target decodes with the CPU rewrites) the draft uses them too, where
        its family allows: on a CPU its one-token passes cost mostly rotary embeddings and
        attention, as the target's do. With `fuse` (the target's projections are fused, on a
        GPU) the draft's are too: its one-token passes are bound by kernels launched."""
        from engines.weights.checkpoint import load_checkpoint

        model = load_checkpoint(path)[0]
        if fuse:
            install_fused_projections(model)
        probe = make_prompt_cache(model)
        width = model(mx.array([[0, 1]]), cache=probe).shape[-1]
        profile = CacheProfile.of(probe)
        if not profile.plain:
            raise ValueError(
                f"draft model {path.name}: its caches ({'/'.join(sorted(set(profile.kinds)))}) "
                "cannot drop rejected drafts; only plain KV caches can draft"
            )
        if width != vocab:
            raise ValueError(
                f"draft model {path.name} has {width} logits, the model {vocab}: "
                "a draft model must share the tokenizer"
            )
        return cls(model, probe, cpu_decode and install_cpu_decode(model, packing=False))

    # -- rows, as the DecodeBatch's ----------------------------------------------------------

    def join(self, choices: list[Choice]) -> None:
        """Append a row per choice: its prompt prefilled, or empty when it never drafts."""
        prefilled: dict[int, list[Any]] = {}  # choices of one request share its prompt's cache
        rows = []
        for choice in choices:
            if choice.speculation is None or not choice.sampler.verifies_drafts:
                rows.append(self._empty_row())
                continue
            key = id(choice.request)
            if key not in prefilled:
                prefilled[key] = self._prefill(choice.request.prompt_tokens)
            rows.append(prefilled[key])
        incoming = [RaggedKVCache.merge([row[i] for row in rows]) for i in range(len(rows[0]))]
        if self._cache is None:
            self._cache = incoming
        else:
            for mine, theirs in zip(self._cache, incoming, strict=True):
                mine.extend(theirs)

    def keep(self, rows: list[int]) -> None:
        if not rows:
            self._cache = None
        elif self._cache is not None:
            for layer in self._cache:
                layer.filter(mx.array(rows))

    # -- drafting ----------------------------------------------------------------------------

    def propose(self, choices: list[Choice], relative_cost: Callable[[int], float]) -> Drafts:
        """Every row's drafts for this step (see the module docstring); how many is fitted to
        the pass before drafting (drafts cost draft-model passes)."""
        assert self._cache is not None
        fitted = fit_to_pass(choices, [draft_room(c) for c in choices], relative_cost)
        predicted = [_predicted(c, want) for c, want in zip(choices, fitted, strict=True)]
        wanted = [0 if p else want for p, want in zip(predicted, fitted, strict=True)]
        longest = max(wanted)
        self._drafted = longest
        self._fed_drafts = [bool(want) for want in wanted]
        if not longest:
            return Drafts(predicted, [None] * len(choices))
        lengths = self._cache[0].lengths
        catch_up = [
            _unfed(choice, fed) if want else []
            for choice, want, fed in zip(choices, wanted, lengths, strict=True)
        ]
        width = max(len(tokens) for tokens in catch_up)
        inputs = mx.array([tokens + [0] * (width - len(tokens)) for tokens in catch_up])
        offsets = self._cache[0].offset
        with decode_step(offsets, width) if self._cpu_decode else nullcontext():
            logits = self.model(inputs, cache=self._cache)
        self._rewind([width - len(tokens) for tokens in catch_up])
        last = mx.array([max(len(tokens), 1) - 1 for tokens in catch_up])
        logits = mx.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
        # A row's keys are split by its own draft count: split(key, n)[i] depends on n, and
        # a seeded row must draw alike whatever the longest row of the batch asks for.
        keys = [
            draft_keys(c.sampler, w) if w and not c.sampler.params.greedy else None
            for c, w in zip(choices, wanted, strict=True)
        ]
        columns: list[mx.array] = []
        q: list[list[mx.array]] = [[] for _ in choices]
        for position in range(longest):
            if position:
                offsets = self._cache[0].offset
                with decode_step(offsets) if self._cpu_decode else nullcontext():
                    logits = self.model(columns[-1][:, None], cache=self._cache)[:, -1]
            columns.append(_draw(logits, choices, wanted, keys, position, q))
        # Rows that did not draft were fed padding in the one-token passes: rewind it now.
        self._rewind([0 if want else longest - 1 for want in wanted])
        drafted = host_list(mx.stack(columns, axis=1))
        return Drafts(
            [p or row[:want] for p, row, want in zip(predicted, drafted, wanted, strict=True)],
            [mx.stack(qs[:want]) if qs else None for qs, want in zip(q, wanted, strict=True)],
        )

    def verified(self, choices: list[Choice], results: list[RowResult]) -> None:
        """Each row keeps its context and the drafts fed that were kept (at most K − 1)."""
        record(choices, results)
        if not self._drafted:
            return
        fed = self._drafted - 1
        self._rewind(
            [
                fed - min(r.accepted, fed) if r.drafted and model_drafted else 0
                for r, model_drafted in zip(results, self._fed_drafts, strict=True)
            ],
        )

    # -- helpers -----------------------------------------------------------------------------

    def _rewind(self, drop: list[int]) -> None:
        assert self._cache is not None
        if any(drop):
            for layer in self._cache:
                layer.rewind(drop)

    def _prefill(self, prompt: list[int]) -> list[Any]:
        """A draft cache holding `prompt`: from a kept prompt's cache as far as the two agree,
        the rest fed in chunks. Kept as the newest; the oldest beyond KEPT_PROMPTS or
        KEPT_BYTES dropped."""
        shared, kept = max(
            ((_shared_prefix(prompt, tokens), cache) for tokens, cache in self._kept),
            key=lambda found: found[0],
            default=(0, None),
        )
        cache = make_prompt_cache(self.model)
        if kept is not None and shared:
            for layer, source in zip(cache, kept, strict=True):
                layer.keys = source.keys[..., :shared, :]  # a new array: the source is not written
                layer.values = source.values[..., :shared, :]
                layer.offset = shared
        for start in range(shared, len(prompt), PREFILL_CHUNK):
            self.model(mx.array(prompt[start : start + PREFILL_CHUNK])[None], cache=cache)
            mx.eval([array for layer in cache for array in (layer.keys, layer.values)])
        self.prefilled_tokens += len(prompt) - shared
        kept, size = [], 0
        for tokens, entry in reversed([*self._kept, (list(prompt), cache)][-KEPT_PROMPTS:]):
            size += self.profile.row_bytes(len(tokens))
            if size > KEPT_BYTES:
                break
            kept.insert(0, (tokens, entry))
        self._kept = kept
        return cache

    def _empty_row(self) -> list[RaggedKVCache]:
        """A row holding no tokens, shaped as this model's cache layers."""
        return [
            RaggedKVCache(mx.zeros(keys, dtype), mx.zeros(values, dtype), [0])
            for keys, values, dtype in self._shapes
        ]


def _shared_prefix(a: list[int], b: list[int]) -> int:
    """How many first tokens `a` and `b` have in common."""
    shared = 0
    for x, y in zip(a, b, strict=False):  # (of different lengths)
        if x != y:
            break
        shared += 1
    return shared


def _predicted(choice: Choice, room: int) -> list[int]:
    """The drafts a row's prediction gives it this step (at most `room`; none without one)."""
    speculation = choice.speculation
    if not room or speculation is None or speculation.index is None:
        return []
    return speculation.propose(choice.tokens, room)


def _unfed(choice: Choice, fed: int) -> list[int]:
    """The part of a row's context (prompt, then its tokens) past the first `fed` tokens."""
    prompt = choice.request.prompt_tokens
    if fed >= len(prompt):
        return choice.tokens[fed - len(prompt) :]
    return [*prompt[fed:], *choice.tokens]


def _draw(
    logits: mx.array,
    choices: list[Choice],
    wanted: list[int],
    keys: list[mx.array | None],
    position: int,
    q: list[list[mx.array]],
) -> mx.array:
    """Every row's draft at `position` from the draft logits (rows, vocab); appends each
    sampling row's distribution to its `q`. Rows past their own draft length take the argmax
    (drafted, fed, never proposed)."""
    if all(c.sampler.plain_greedy for c, w in zip(choices, wanted, strict=True) if w):
        return mx.argmax(logits, axis=-1)
    tokens = []
    for row, (choice, want, key) in enumerate(zip(choices, wanted, keys, strict=True)):
        sampler = choice.sampler
        biased = sampler.biased(logits[row : row + 1])
        if key is None or position >= want:
            tokens.append(mx.argmax(biased, axis=-1))
            continue
        _, filtered = sampler.distribution(biased)
        filtered = filtered - mx.logsumexp(filtered, axis=-1, keepdims=True)
        tokens.append(mx.random.categorical(filtered, key=key[position]))
        q[row].append(filtered[0])
    return mx.concatenate(tokens)
