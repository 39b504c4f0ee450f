"""Every model family mlx-lm 0.32.2 ships, through the engine, against mlx-lm's own generation.

For each model module of mlx-lm (tests/families.MODULES: tiny random float32 models, sliding
windows of 8 tokens so that 20-token prompts rotate them; the few that cannot be built are
skipped with their reason, tests/families.SKIPPED): greedy output through the engine equals
mlx-lm's `generate_step` on the same loaded model, alone and with three different prompts
submitted together (one batch, or one at a time for the families in
engines/llm/caches.SEQUENTIAL_FAMILIES and those whose caches mlx-lm cannot merge); follow-up
turns resumed from the prefix cache equal mlx-lm's uncached output; the family's row of
docs/families.md says what was measured; and the admission projection bounds the real caches'
memory. The sequential families are checked to be still batched wrongly by mlx-lm itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.generate import batch_generate, generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load

from engines.errors import EngineUnavailable
from engines.llm import scheduler as scheduler_module
from engines.llm.caches import SEQUENTIAL_FAMILIES, CacheProfile, nbytes
from engines.llm.engine import LLMEngine
from engines.types import ChatLimits, FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from tests.families import DOC, MODULES, SKIPPED, SPLIT_DEPENDENT, doc_row, save_family_dir

PROMPTS = [[(5 * i + 3 * j) % 240 + 7 for j in range(18 + 3 * i)] for i in range(3)]
TOKENS = 8


def reference(model: object, prompt: list[int], tokens: int = TOKENS) -> list[int]:
    """mlx-lm's own greedy continuation of `prompt`."""
    steps = generate_step(mx.array(prompt), model, max_tokens=tokens)  # type: ignore[arg-type]
    return [int(token) for token, _ in steps]


async def generate(engine: LLMEngine, prompt: list[int], tag: str) -> tuple[list[int], int]:
    """(greedy tokens, cached prompt tokens) of one request through the engine."""
    request = GenerationRequest(tag, prompt, TOKENS, SamplingParams(temperature=0.0))
    tokens: list[int] = []
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            return tokens, event.usage.cached_tokens
    raise AssertionError("the stream ended without a FinishEvent")


FAMILY_PARAMS = [
    pytest.param(name, marks=pytest.mark.skip(reason=SKIPPED[name])) if name in SKIPPED else name
    for name in MODULES
]


@pytest.fixture(scope="module", params=FAMILY_PARAMS)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    family = str(request.param)
    return save_family_dir(family, tmp_path_factory.mktemp(family) / family)


@pytest.fixture
async def served(family_dir: Path) -> AsyncIterator[tuple[LLMEngine, object]]:
    engine = LLMEngine(family_dir.name, family_dir, prefill_chunk=64, limits=ChatLimits())
    engine.start()
    await engine.wait_loaded()
    model, _ = load(str(family_dir))  # type: ignore[misc]
    yield engine, model
    engine.stop()


@contextmanager
def admitted_together() -> Iterator[None]:
    """Requests submitted together are admitted together, even on a loaded machine: admission
    waits for 50 ms without an arrival. (Only around the requests sent together: a request
    alone would wait those 50 ms for nothing, a second or more per family over the module.)"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler_module, "ARRIVAL_QUIET_S", 0.05)
        patch.setattr(scheduler_module, "ARRIVAL_WAIT_MAX_S", 1.0)
        yield


async def test_alone_batched_and_prefix_cached_equal_mlx_lm(
    served: tuple[LLMEngine, object],
) -> None:
    engine, model = served
    expected = [reference(model, prompt) for prompt in PROMPTS]
    alone = [(await generate(engine, p, f"alone{i}"))[0] for i, p in enumerate(PROMPTS)]
    assert alone == expected
    engine.largest_batch = 0
    with admitted_together():
        together = await asyncio.gather(
            *(generate(engine, p, f"together{i}") for i, p in enumerate(PROMPTS))
        )
    assert [tokens for tokens, _ in together] == expected
    family = engine.name
    assert engine.profile is not None
    batched = engine.profile.batchable
    assert engine.largest_batch == (3 if batched else 1)
    # docs/families.md says what was measured here.
    row = doc_row(family, list(engine.profile.kinds), engine.profile.sequential_reason)
    assert row in DOC.read_text().splitlines(), "docs/families.md: run python -m tests.families"
    if family in SPLIT_DEPENDENT:
        pytest.skip(f"prefix-cached follow-ups of {family}: {SPLIT_DEPENDENT[family]}")
    # The next turn of the first conversation: its prompt, its answer and a new message.
    follow_up = PROMPTS[0] + expected[0] + [11, 12, 13, 14]
    tokens, cached = await generate(engine, follow_up, "follow-up")
    assert cached >= len(PROMPTS[0]), (family, cached)
    assert tokens == reference(model, follow_up)
    # The next turns of the other two, arriving together: equal suffixes resumed in one pass.
    follow_ups = [PROMPTS[i] + expected[i] + [15, 16, 17, 18] for i in (1, 2)]
    before = engine.prefilled_together
    with admitted_together():
        resumed = await asyncio.gather(
            *(generate(engine, p, f"next{i}") for i, p in enumerate(follow_ups))
        )
    assert [tokens for tokens, _ in resumed] == [reference(model, p) for p in follow_ups]
    assert all(cached >= len(PROMPTS[1]) for _, cached in resumed), resumed
    if batched:
        assert engine.prefilled_together - before == 2


async def test_projection_bounds_the_real_caches(served: tuple[LLMEngine, object]) -> None:
    """What admission projects per row is what a cache holds once prefilled as the engine does
    it (the prompt but its last token in one pass, then the last token alone): never less, and
    not more than the next 256-token step of its unbounded layers."""
    engine, model = served
    assert engine.profile is not None
    profile = engine.profile
    for length in (5, 40, 300):
        cache = make_prompt_cache(model)  # type: ignore[arg-type]
        prompt = list(range(7, 7 + length))
        for part in (prompt[:-1], prompt[-1:]):
            mx.eval(model(mx.array([part]), cache=cache))  # type: ignore[operator]
        real = nbytes(cache)
        assert real <= profile.row_bytes(length), (length, real, profile)
        if profile.batchable:  # (one row at a time: admission never weighs rows against rows)
            assert profile.row_bytes(length) - real <= 512 * _per_token(profile)


def _per_token(profile: CacheProfile) -> int:
    windows = sum(size for _, size in profile.window_per_token)
    return profile.per_token + windows + profile.other_per_token


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "nosuchmodel"}, "model_type 'nosuchmodel' is not a model family"),
        ({"hidden_size": 32}, "the checkpoint does not match its config.json: Expected shape"),
    ],
)
async def test_a_checkpoint_mlx_lm_cannot_build_fails_to_load_in_one_line(
    change: dict[str, object], message: str, tmp_path: Path
) -> None:
    directory = save_family_dir("llama", tmp_path / "bad")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    engine = LLMEngine("bad", directory)
    engine.start()
    with pytest.raises(EngineUnavailable) as raised:
        await engine.wait_loaded()
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not engine.running


@pytest.mark.parametrize("family", sorted(SEQUENTIAL_FAMILIES))
def test_the_families_served_one_at_a_time_are_those_mlx_lm_batches_wrongly(
    family: str, tmp_path: Path
) -> None:
    """SEQUENTIAL_FAMILIES stays true: mlx-lm's own batch of the three prompts still differs from
    (or fails where) its generation of each alone does. When an mlx-lm upgrade fixes one, this
    fails and the family can be batched again."""
    model, tokenizer = load(str(save_family_dir(family, tmp_path / family)))  # type: ignore[misc]
    try:
        batch = batch_generate(model, tokenizer, PROMPTS, max_tokens=TOKENS, return_token_ids=True)
    except ValueError:
        return  # mlx-lm cannot run the batch at all
    assert batch.token_ids is not None
    assert [list(row) for row in batch.token_ids] != [reference(model, p) for p in PROMPTS]


def test_the_families_doc_lists_every_module_and_every_skip() -> None:
    """docs/families.md has one row per mlx-lm model module, in order; skipped ones say why
    (the others' rows are checked against their engine in the test above)."""
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == MODULES
    for family, reason in SKIPPED.items():
        assert doc_row(family, [], "") in rows, reason
