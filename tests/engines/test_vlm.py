"""The vision-language engine on tiny random checkpoints of three families (qwen2_vl, gemma3,
idefics3), built with mlx-vlm's own classes: mlxd's greedy output for a prompt with an image is
mlx-vlm's own `stream_generate` on the same model, image and prompt — alone, decoded in one batch
with text-only requests and other image requests, and resumed from the prefix cache on a
follow-up turn resending the same image. The one-at-a-time path (families mlxd does not batch)
is checked once."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.errors import KVBudgetExceeded
from engines.kinds import build_chat
from engines.llm.constrain import json_schema_grammar
from engines.types import (
    AdmittedEvent,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    ImageInput,
    SamplingParams,
    TokenEvent,
)
from engines.vlm.engine import VLMEngine, vision_engine
from engines.vlm.prompt import VisionCache, process
from engines.vlm.solo import SoloVLMEngine
from tests.tiny_vlm import FAMILIES, save_tiny_vlm

MAX_TOKENS = 8
AnyVisionEngine = VLMEngine | SoloVLMEngine
GREEDY = SamplingParams(temperature=0.0)


def image(seed: int, height: int = 40, width: int = 52) -> ImageInput:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    return ImageInput(pixels, hashlib.sha256(pixels.tobytes()).hexdigest())


def with_image(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image"}]}]


def text_only(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vlm(request.param, tmp_path_factory.mktemp("vlm") / request.param)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Any:
    """mlx-vlm's own model and processor for the checkpoint (on the test's thread)."""
    from mlx_vlm.utils import load

    return load(str(checkpoint))


async def started(
    checkpoint: Path, prefix_cache_mb: int, prefill_chunk: int = 0, prefill_bucket: int = 0
) -> VLMEngine:
    settings = {
        "max_batch": 8,
        "max_waiting": 8,
        "prefix_cache_mb": prefix_cache_mb,
        "watchdog_s": 60.0,
    }
    engine = build_chat("tiny-vlm", checkpoint, {}, settings)
    assert isinstance(engine, VLMEngine)
    engine.prefill_chunk, engine.prefill_bucket = prefill_chunk, prefill_bucket  # 0: default
    engine.start()
    await engine.wait_loaded()
    return engine


@pytest.fixture
async def engine(checkpoint: Path) -> AsyncIterator[VLMEngine]:
    engine = await started(checkpoint, prefix_cache_mb=0)
    yield engine
    engine.stop()


@pytest.fixture
async def cached_engine(checkpoint: Path) -> AsyncIterator[VLMEngine]:
    engine = await started(checkpoint, prefix_cache_mb=64)
    yield engine
    engine.stop()


def expected(reference: Any, prompt: str, images: list[ImageInput]) -> list[int]:
    from mlx_vlm.generate import stream_generate
    from PIL import Image

    model, processor = reference
    pictures = [Image.fromarray(i.pixels) for i in images] or None
    tokens = []
    for response in stream_generate(
        model, processor, prompt, image=pictures, max_tokens=MAX_TOKENS, temperature=0.0
    ):
        tokens.append(int(response.token))
        if response.finish_reason is not None:
            break
    # mlx-vlm yields the end-of-sequence token; mlxd ends the choice on it without sending it.
    eos = set(model.config.eos_token_id or [])
    return [t for t in tokens[:MAX_TOKENS] if t not in eos]


async def served(
    engine: AnyVisionEngine, request: GenerationRequest
) -> tuple[list[int], FinishEvent]:
    tokens: list[int] = []
    finish = None
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            tokens += event.token_ids
        elif isinstance(event, FinishEvent):
            finish = event
        else:
            raise AssertionError(event)
    assert finish is not None
    return tokens, finish


def request(
    engine: AnyVisionEngine, rid: str, messages: list[dict[str, Any]], *images: ImageInput
) -> GenerationRequest:
    prompt = engine.encode_chat(messages)
    return GenerationRequest(rid, prompt, MAX_TOKENS, GREEDY, images=images)


async def test_image_prompt_matches_mlx_vlm(engine: VLMEngine, reference: Any) -> None:
    picture = image(1)
    messages = with_image("What is in this picture?")
    prompt_text = engine.render(messages)
    want = expected(reference, prompt_text, [picture])
    tokens, finish = await served(engine, request(engine, "a", messages, picture))
    assert want and tokens == want[: len(tokens)] and len(tokens) == len(want)
    # usage counts the image's tokens: more than the unexpanded prompt
    assert finish.usage.prompt_tokens > len(engine.encode_chat(messages))
    assert finish.usage.completion_tokens == len(want)


async def test_image_prompt_fed_in_padded_chunks(checkpoint: Path, reference: Any) -> None:
    """Prefilled 5 tokens at a time, each pass padded to 4 (the GPU's bucketing, where the
    caches trim exactly): embeddings and positions follow the tokens across chunks."""
    engine = await started(checkpoint, prefix_cache_mb=0, prefill_chunk=5, prefill_bucket=4)
    try:
        picture, messages = image(10, height=112, width=100), with_image("What is in it?")
        tokens, _ = await served(engine, request(engine, "c", messages, picture))
    finally:
        engine.stop()
    assert tokens == expected(reference, engine.render(messages), [picture])


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "in-order"])
async def test_batched_with_text_only_requests(
    engine: VLMEngine, reference: Any, pipelined: bool
) -> None:
    """Two image rows (different images and prompts) and two text rows decode in one batch,
    with decode steps pipelined (what GPUs do) and in order (what the CPU does)."""
    assert engine.scheduler is not None
    engine.scheduler.config.pipelined = pipelined  # idle engine: read at its next step
    first, second = image(2), image(6, height=112, width=100)
    describe, count, plain = with_image("Describe."), with_image("Count them all."), None
    plain = text_only("Say something.")
    want = [
        expected(reference, engine.render(plain), []),
        expected(reference, engine.render(describe), [first]),
        expected(reference, engine.render(count), [second]),
        expected(reference, engine.render(plain), []),
    ]
    engine.largest_batch = 0
    results = await asyncio.gather(
        served(engine, request(engine, "t1", plain)),
        served(engine, request(engine, "i1", describe, first)),
        served(engine, request(engine, "i2", count, second)),
        served(engine, request(engine, "t2", plain)),
    )
    assert [tokens for tokens, _ in results] == want
    assert engine.largest_batch == 4


async def test_image_row_with_n_logprobs_and_a_grammar(engine: VLMEngine, reference: Any) -> None:
    """An image row takes n > 1 and logprobs (greedy: every choice is mlx-vlm's tokens, one
    logprob entry per token) and a grammar (its output follows the JSON schema), batched with
    a text row."""
    picture, messages = image(14), with_image("Describe.")
    want = expected(reference, engine.render(messages), [picture])
    prompt = engine.encode_chat(messages)
    both = GenerationRequest("n", prompt, MAX_TOKENS, GREEDY, n=2, logprobs=2, images=(picture,))
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    grammar = json_schema_grammar(schema)
    engine.check_grammar(grammar, "response_format")
    sampling = SamplingParams(temperature=1.0, seed=5)
    shaped = GenerationRequest("g", prompt, 60, sampling, grammar=grammar, images=(picture,))
    text = GenerationRequest("t", engine.encode_chat(text_only("Hi")), MAX_TOKENS, GREEDY)
    events = await asyncio.gather(*(collect(engine, r) for r in (both, shaped, text)))
    choices, entries, _ = events[0]
    assert choices == {0: want, 1: want}
    assert {index: len(logprobs) for index, logprobs in entries.items()} == {
        0: len(want),
        1: len(want),
    }
    _, _, document = events[1]
    assert isinstance(json.loads(document), dict)


async def collect(
    engine: VLMEngine, request: GenerationRequest
) -> tuple[dict[int, list[int]], dict[int, list[Any]], str]:
    """Tokens and logprob entries per choice, and choice 0's text."""
    tokens: dict[int, list[int]] = {}
    logprobs: dict[int, list[Any]] = {}
    text = ""
    async for event in engine.submit(request):
        if isinstance(event, TokenEvent):
            tokens.setdefault(event.index, []).extend(event.token_ids)
            logprobs.setdefault(event.index, []).extend(event.logprobs)
            text += event.text if event.index == 0 else ""
        elif not isinstance(event, FinishEvent):
            raise AssertionError(event)
    return tokens, logprobs, text


async def test_follow_up_turn_reuses_the_image_prefix(
    cached_engine: VLMEngine, reference: Any
) -> None:
    """A second turn resending the same image resumes from the first turn's cache through the
    image (cached_tokens) without running the vision tower; another image is not reused."""
    engine = cached_engine
    picture = image(7)
    turn = with_image("What is this?")
    _, first = await served(engine, request(engine, "1", turn, picture))
    assert first.usage.cached_tokens == 0
    cache = engine.vision_cache
    assert cache is not None
    encoded = cache.misses
    follow_up = [
        *turn,
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": "Which colours?"},
    ]
    tokens, second = await served(engine, request(engine, "2", follow_up, picture))
    assert tokens == expected(reference, engine.render(follow_up), [picture])
    images = image_positions(reference, engine, request(engine, "2", follow_up, picture))
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 1 > images[-1]
    assert (cache.misses, cache.hits) == (encoded, 0)  # the tower did not run again
    other = image(8)
    tokens, third = await served(engine, request(engine, "3", follow_up, other))
    assert tokens == expected(reference, engine.render(follow_up), [other])
    assert third.usage.cached_tokens <= images[0]  # reused at most up to the image


SCREENSHOT = {
    "type": "function",
    "function": {
        "name": "screenshot",
        "description": "Take a screenshot",
        "parameters": {"type": "object", "properties": {}},
    },
}


async def test_tools_and_an_image_in_a_tool_result(engine: VLMEngine, reference: Any) -> None:
    """A vision model whose template has no tools (these tiny ones, Qwen2-VL's, Gemma 3's) gets
    the generic tool prompt, its earlier call written back as markup, and the tool's result as a
    `<tool_response>` user turn that keeps the result's image where it was: the engine decodes
    what mlx-vlm decodes for that prompt and image."""
    assert engine.info is not None and engine.info.tool_images  # the server sends such images
    picture = image(7)
    messages = [
        {"role": "user", "content": "Look at my screen."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "screenshot", "arguments": "{}"},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": [{"type": "text", "text": "Here it is:"}, {"type": "image"}],
        },
    ]
    prompt = engine.render(messages, [SCREENSHOT])
    assert "You can call functions" in prompt and '"name": "screenshot"' in prompt
    assert '<tool_call>\n{"name": "screenshot", "arguments": {}}\n</tool_call>' in prompt
    image_text = engine.render(with_image(""))
    marker = image_text[image_text.index("user\n") + 5 : image_text.index("<|im_end|>")]
    assert f"<tool_response>\nHere it is:{marker}\n</tool_response>" in prompt
    tools_request = GenerationRequest(
        "t", engine.encode_chat(messages, [SCREENSHOT]), MAX_TOKENS, GREEDY, images=(picture,)
    )
    tokens, _ = await served(engine, tools_request)
    assert tokens == expected(reference, prompt, [picture])


async def test_two_images_then_a_third(cached_engine: VLMEngine, reference: Any) -> None:
    """Two images in one prompt, then a turn adding a third: each image is encoded once (the
    cache is per image where the family's pixels split by image), the second turn resumes from
    the first through both images, and both match mlx-vlm."""
    engine = cached_engine
    a, b, c = image(11), image(12, height=60, width=44), image(13)
    pair = {"type": "image"}
    parts = [{"type": "text", "text": "Compare"}, pair, {"type": "text", "text": "&"}, pair]
    turn = [{"role": "user", "content": parts}]
    tokens, first = await served(engine, request(engine, "1", turn, a, b))
    assert tokens == expected(reference, engine.render(turn), [a, b])
    follow_up = [
        *turn,
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, pair]},
    ]
    tokens, second = await served(engine, request(engine, "2", follow_up, a, b, c))
    assert tokens == expected(reference, engine.render(follow_up), [a, b, c])
    images = image_positions(reference, engine, request(engine, "2", follow_up, a, b, c))
    runs = sum(1 for i, p in enumerate(images) if i == 0 or images[i - 1] != p - 1)
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 1
    cache = engine.vision_cache
    assert cache is not None
    if engine.vlm.config.model_type != "idefics3":
        assert (cache.misses, cache.hits) == (3, 2)  # a, b, then c alone; a, b from the cache
    else:  # idefics3: no tower of its own called by mlxd (re-encoded each time)
        assert (cache.misses, cache.hits) == (0, 0)
    assert runs == 3


def image_positions(reference: Any, engine: VLMEngine, request: GenerationRequest) -> list[int]:
    """Where the expanded prompt's image tokens are (the processor run on this thread)."""
    model, processor = reference
    tokenizer = getattr(processor, "tokenizer", processor)
    return process(
        model, processor, request, lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
    ).image_positions


async def test_the_vision_tower_runs_once_per_image_set(
    engine: VLMEngine, checkpoint: Path
) -> None:
    picture = image(3)
    first, _ = await served(engine, request(engine, "1", with_image("Hi"), picture))
    again, _ = await served(engine, request(engine, "2", with_image("Hi"), picture))
    assert first == again
    cached = checkpoint.name != "idefics3"  # no encoder mirrored for idefics3 (re-encodes)
    cache = engine.vision_cache
    assert cache is not None
    assert (cache.misses, cache.hits) == ((1, 1) if cached else (0, 0))


async def test_sdks_send_an_image_to_the_real_engine(checkpoint: Path, reference: Any) -> None:
    """Edge to engine: a data: URI through the strict OpenAI SDK, then the same image as an
    Anthropic base64 block through the strict Anthropic SDK, reach the template as the family's
    image placeholder; usage is mlx-vlm's prompt (image tokens included) and output, and the
    second request (the next turn) reads the first one's prompt from the cache (Anthropic's
    cache_read_input_tokens)."""
    import base64
    import io

    import httpx
    import httpx2
    from anthropic import AsyncAnthropic
    from openai import AsyncOpenAI
    from PIL import Image

    from engines.pool import EnginePool
    from server.app import create_app
    from server.settings import Settings

    picture = image(4)
    buffer = io.BytesIO()
    Image.fromarray(picture.pixels).save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    engine = vision_engine("tiny-vlm", checkpoint)
    pool = EnginePool([engine])
    app = create_app(Settings(max_body_bytes=1 << 20), pool)
    await pool.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            client = AsyncOpenAI(
                base_url="http://127.0.0.1/v1",
                api_key="unused",
                http_client=http,
                _strict_response_validation=True,
                max_retries=0,
            )
            reply = await client.chat.completions.create(
                model="tiny-vlm",
                max_tokens=MAX_TOKENS,
                temperature=0,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is it?"},
                            {"type": "image_url", "image_url": {"url": uri}},
                        ],
                    }
                ],
            )
        async with AsyncAnthropic(
            base_url="http://127.0.0.1",
            api_key="unused",
            http_client=httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1"
            ),
            _strict_response_validation=True,
            max_retries=0,
        ) as claude:
            source = {"type": "base64", "media_type": "image/png", "data": uri.split(",")[1]}
            message = await claude.messages.create(
                model="tiny-vlm",
                max_tokens=MAX_TOKENS,
                extra_body={"temperature": 0},  # this SDK's create() has no such argument
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is it?"},
                            {"type": "image", "source": source},  # type: ignore[typeddict-item]
                        ],
                    },
                    {"role": "assistant", "content": "A picture."},
                    {"role": "user", "content": "Which colours?"},
                ],
            )
    finally:
        await pool.drain(timeout=5)
    want = expected(reference, engine.render(with_image("What is it?")), [picture])
    assert reply.usage is not None and reply.usage.completion_tokens == len(want)
    assert reply.usage.prompt_tokens > len(engine.encode_chat(with_image("What is it?")))
    assert reply.choices[0].finish_reason in ("stop", "length")
    follow_up = [
        *with_image("What is it?"),
        {"role": "assistant", "content": "A picture."},
        {"role": "user", "content": "Which colours?"},
    ]
    usage = message.usage
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert usage.output_tokens == len(expected(reference, engine.render(follow_up), [picture]))
    # the first turn's prompt, its image included, came from the prefix cache
    assert (usage.cache_read_input_tokens or 0) >= reply.usage.prompt_tokens - 1
    assert usage.input_tokens > 0


async def test_one_at_a_time_path_matches_mlx_vlm(checkpoint: Path, reference: Any) -> None:
    """The path for families mlxd does not batch (mlx-vlm's own generate_step per request),
    run here on a batched family: the same tokens as mlx-vlm, text requests queued beside."""
    engine = SoloVLMEngine("tiny-vlm", checkpoint)
    engine.start()
    await engine.wait_loaded()
    try:
        picture, messages, plain = image(9), with_image("Describe."), text_only("Hello.")
        results = await asyncio.gather(
            served(engine, request(engine, "i", messages, picture)),
            served(engine, request(engine, "t", plain)),
        )
    finally:
        engine.stop()
    want = [
        expected(reference, engine.render(messages), [picture]),
        expected(reference, engine.render(plain), []),
    ]
    assert [tokens for tokens, _ in results] == want


def test_vision_cache_is_bounded_in_entries_and_bytes() -> None:
    import mlx.core as mx

    cache = VisionCache(entries=3, max_bytes=100)
    for key in "abc":  # 40 bytes each: the third goes past 100 bytes, the oldest leaves
        cache.put((key,), mx.zeros((10,), mx.float32))
    assert (cache.get(("a",)), cache.nbytes) == (None, 80)
    assert cache.get(("b",)) is not None  # b is now the most recent: c is evicted next
    cache.put(("d",), mx.zeros((10,), mx.float32))
    assert cache.get(("c",)) is None and cache.get(("b",)) is not None
    cache.put(("big",), mx.zeros((40,), mx.float32))  # over the bound alone: nothing is kept
    assert (cache.nbytes, cache.get(("big",))) == (0, None)
    assert (cache.hits, cache.misses) == (2, 3)
    # Towers that return several arrays count them all (not as 0 bytes).
    cache.put(("pair",), (mx.zeros((10,), mx.float32), mx.zeros((5,), mx.float32)))
    assert cache.nbytes == 60
    cache.put(("pair2",), [mx.zeros((20,), mx.float32)])  # 80 more: over 100, the pair leaves
    assert (cache.nbytes, cache.get(("pair",))) == (80, None)


async def test_images_count_against_the_kv_budget(engine: VLMEngine) -> None:
    """Admission sees one placeholder per image; the engine projects the expanded prompt, so a
    request whose images push it past the KV budget is refused (not run over budget)."""
    messages = with_image("What is in this picture?")
    prompt = engine.encode_chat(messages)
    max_tokens = -len(prompt) % 256 or 256  # unexpanded prompt + output: exactly 256-token steps
    fits_unexpanded = engine.kv_bytes(1, len(prompt) + max_tokens)
    assert engine.kv_bytes(1, len(prompt) + max_tokens + 1) > fits_unexpanded  # a step boundary
    budget, engine.kv_budget_bytes = engine.kv_budget_bytes, fits_unexpanded
    try:
        big = GenerationRequest("big", prompt, max_tokens, GREEDY, images=(image(1),))
        events = [event async for event in engine.submit(big)]
    finally:
        engine.kv_budget_bytes = budget
    assert len(events) == 1 and isinstance(events[0], ErrorEvent), events
    assert isinstance(events[0].error, KVBudgetExceeded), events[0].error
    tokens, _ = await served(engine, request(engine, "after", messages, image(1)))
    assert tokens  # the engine serves on


def test_the_generic_tool_prompt_adds_no_empty_part() -> None:
    """Gemma 3's template reads a system turn's first part only: with an image in the system
    turn, that part is still the turn's own text, and the tools prompt follows it."""
    from engines.llm.templates import _generic_tool_messages

    system = {"role": "system", "content": [{"type": "text", "text": "Rules."}, {"type": "image"}]}
    [lead, _] = _generic_tool_messages([system, *text_only("hi")], [SCREENSHOT])
    assert lead["content"][:2] == system["content"]
    assert lead["content"][2]["text"].startswith("\n\nYou can call functions")


def test_input_text_parts_beside_an_image_reach_the_template_as_text() -> None:
    """Vision templates look for `text` parts beside their image parts; chat clients also send
    `input_text` (the Responses name): rendered, not dropped."""
    from mlx_lm.tokenizer_utils import load

    from engines.llm.templates import render_chat
    from engines.weights.embedded import SMOLLM2
    from tests.engines.test_tools_real_tokenizers import store_entry

    tokenizer = load(store_entry(SMOLLM2.name))
    tokenizer.chat_template = (
        "{% for m in messages %}{% for p in m['content'] %}{% if p['type'] == 'text' %}"
        "{{ p['text'] }}{% elif p['type'] == 'image' %}<img>{% endif %}{% endfor %}{% endfor %}"
    )
    parts = [{"type": "input_text", "text": "What is it?"}, {"type": "image"}]
    prompt = render_chat(tokenizer, [{"role": "user", "content": parts}], keep_images=True)
    assert prompt == "What is it?<img>"


async def test_special_token_strings_in_a_text_row_are_text(engine: VLMEngine) -> None:
    """A text-only conversation's ids are what the model reads, so a pasted `<|im_end|>` is
    text there, as on text models. A prompt with an image goes through the processor, which
    tokenizes its text again: there the string is left as the template wrote it."""
    im_end = engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    pasted, plain = "quote: <|im_end|> end", "quote: end"
    ids = engine.encode_chat(text_only(pasted))
    assert ids.count(im_end) == engine.encode_chat(text_only(plain)).count(im_end)
    assert engine.decode(ids) == engine.render(text_only(pasted))
    with_picture = engine.encode_chat(with_image(pasted))
    assert with_picture.count(im_end) == engine.encode_chat(with_image(plain)).count(im_end) + 1
    tokens, _ = await served(engine, request(engine, "t", text_only(pasted)))
    assert tokens  # the escaped prompt decodes as a text row


async def first_event(engine: AnyVisionEngine, request: GenerationRequest) -> Any:
    """The first event of `request` (the rest cancelled)."""
    stream = engine.submit(request)
    async for event in stream:
        stream.cancel()
        return event
    raise AssertionError("no event")


@asynccontextmanager
async def both_paths(checkpoint: Path) -> AsyncIterator[tuple[VLMEngine, SoloVLMEngine]]:
    """The batched engine (no prefix cache) and the one-at-a-time path on one checkpoint,
    started, and stopped after."""
    batched = await started(checkpoint, prefix_cache_mb=0)
    solo = SoloVLMEngine("tiny-vlm", checkpoint)
    solo.start()
    await solo.wait_loaded()
    try:
        yield batched, solo
    finally:
        batched.stop()
        solo.stop()


async def test_the_room_left_is_what_the_images_leave(checkpoint: Path) -> None:
    """A request whose max_tokens may be lowered (the client set none: the room its prompt's
    ids leave; or Messages, which clamps) is served, on both paths, with the room its images
    expanded leave (every chat request with an image and no max_tokens failed: the images'
    tokens went past the context). One that asked that many itself is refused, as before."""
    messages = with_image("What is it?")
    async with both_paths(checkpoint) as engines:
        for engine in engines:
            prompt = engine.encode_chat(messages)
            room = engine.check_fits(len(prompt), None)
            asked = GenerationRequest("r", prompt, room, GREEDY, images=(image(1),))
            roomy = dataclasses.replace(asked, clamp_max_tokens=True)
            assert isinstance(await first_event(engine, roomy), TokenEvent | FinishEvent)
            refused = await first_event(engine, asked)
            assert isinstance(refused, ErrorEvent) and "context length" in str(refused.error)


async def test_admission_reports_the_prompt_with_its_images_expanded(checkpoint: Path) -> None:
    """A request with `report_admission` hears first, on both paths, the prompt's length as
    its usage will count it (its images expanded, past the ids sent): Messages' `message_start`
    reports it."""
    messages = with_image("What is it?")
    async with both_paths(checkpoint) as engines:
        for engine in engines:
            asked = dataclasses.replace(
                request(engine, "a", messages, image(2)), report_admission=True
            )
            events = [event async for event in engine.submit(asked)]
            admitted, finish = events[0], events[-1]
            assert isinstance(admitted, AdmittedEvent) and isinstance(finish, FinishEvent)
            assert admitted.prompt_tokens == finish.usage.prompt_tokens > len(asked.prompt_tokens)
            assert admitted.cached_tokens == finish.usage.cached_tokens
