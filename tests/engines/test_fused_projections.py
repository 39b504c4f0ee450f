"""engines/llm/fused_projections.py: a model whose projections are fused computes what mlx-lm's
own layers compute, through prompt, decode and batched caches, quantized or not, to float
rounding (a wider matrix product may sum in another order: OpenBLAS does on prompts) and to the
same greedy tokens; layers it was not written for are left as they are."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from engines.kinds import build_chat
from engines.llm import fused_projections
from engines.llm.engine import LLMEngine
from engines.llm.fused_projections import FusedAttention, FusedMLP, LeanBlock, install
from engines.llm.quantized_cache import install as install_quantized_kv
from engines.types import ChatLimits, GenerationRequest, SamplingParams
from server.settings import Settings
from tests.engines import test_quantized_kv as quantized_kv_tests
from tests.engines import test_speculative as speculative_tests
from tests.families import tiny_family
from tests.helpers import PROMPT, reference_greedy, run
from tests.tiny import tiny_model


def greedy_logits(model: Any, prompt: list[int], steps: int) -> tuple[list[mx.array], list[int]]:
    """The prompt's last logits, then each greedy step's, and the greedy tokens."""
    cache = make_prompt_cache(model)
    logits = model(mx.array([prompt]), cache=cache)[:, -1]
    out, tokens = [logits], []
    for _ in range(steps):
        token = mx.argmax(logits, axis=-1)
        tokens.append(int(token.item()))
        logits = model(token[:, None], cache=cache)[:, -1]
        out.append(logits)
    mx.eval(out)
    return out, tokens


def assert_same_model(plain: Any, fused: Any, steps: int) -> None:
    expected, expected_tokens = greedy_logits(plain, PROMPT, steps)
    got, tokens = greedy_logits(fused, PROMPT, steps)
    assert tokens == expected_tokens
    for want, have in zip(expected, got, strict=True):
        assert mx.allclose(want, have, rtol=1e-4, atol=1e-4).item()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_layers_compute_what_mlx_lm_layers_compute(arch: str) -> None:
    plain, fused = tiny_model(arch), tiny_model(arch)
    assert install(fused, whole_blocks=False) == len(fused.model.layers) == 2
    for layer in fused.model.layers:
        assert type(layer.self_attn) is FusedAttention and type(layer.mlp) is FusedMLP
        assert "q_proj" not in layer.self_attn and "gate_proj" not in layer.mlp
    assert_same_model(plain, fused, 8)


def step_primitives(model: Any) -> int:
    """Primitives (views included) in one decode step's graph after a short prompt."""
    cache = make_prompt_cache(model)
    mx.eval(model(mx.array([PROMPT]), cache=cache))
    dot = io.StringIO()
    mx.export_to_dot(dot, model(mx.array([[PROMPT[0]]]), cache=cache))
    return len(re.findall(r'label ="[A-Za-z]', dot.getvalue()))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_blocks_compute_exactly_what_fused_layers_compute(arch: str) -> None:
    """Whole blocks on flattened hidden states: the same products on the same operands as the
    fused layers (bit for bit), mlx-lm's model to rounding, with fewer primitives per step."""
    plain, fused, lean = tiny_model(arch), tiny_model(arch), tiny_model(arch)
    install(fused, whole_blocks=False)
    assert install(lean) == 2
    assert all(type(layer) is LeanBlock for layer in lean.model.layers)
    assert_same_model(plain, lean, 8)
    (want, want_tokens), (got, tokens) = (greedy_logits(m, PROMPT, 8) for m in (fused, lean))
    assert tokens == want_tokens
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    # Per block: no flatten, unflatten or transpose around each of the four products, no
    # transposes of one token's heads, splits for slices (the CPU's own primitives aside).
    assert step_primitives(fused) - step_primitives(lean) == 2 * 15
    weights = [tree_flatten(model.parameters()) for model in (fused, lean)]
    assert sum(v.nbytes for _, v in weights[0]) == sum(v.nbytes for _, v in weights[1])


def test_left_padded_batch_with_per_row_offsets() -> None:
    """mlx-lm's BatchKVCache: rows of different lengths, offsets an array (the rotary call
    rotates queries and keys of every row at that row's position)."""
    plain, fused = tiny_model("llama"), tiny_model("llama")
    install(fused)
    prompts = [PROMPT, PROMPT[5:]]
    padding = [0, 5]
    batch = mx.array([[0] * pad + prompt for pad, prompt in zip(padding, prompts, strict=True)])
    results = []
    for model in (plain, fused):
        cache = [BatchKVCache(padding) for _ in model.model.layers]
        logits = model(batch, cache=cache)
        steps = [logits]
        for _ in range(4):
            token = mx.argmax(logits[:, -1], axis=-1)
            logits = model(token[:, None], cache=cache)
            steps.append(logits)
        results.append(mx.stack([step[:, -1] for step in steps]))
    assert mx.allclose(results[0], results[1], rtol=1e-4, atol=1e-4).item()
    assert mx.array_equal(mx.argmax(results[0], -1), mx.argmax(results[1], -1)).item()


def test_a_block_with_other_output_projections_is_not_computed_whole() -> None:
    """An output projection of another kind (an adapter's wrapper) keeps mlx-lm's block around
    the fused attention and MLP: LeanLinear computes plain and quantized layers only."""

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def __call__(self, x: mx.array) -> mx.array:
            return self.inner(x)

    plain, model = tiny_model("llama"), tiny_model("llama")
    for layer in model.model.layers:
        layer.self_attn.o_proj = Wrapped(layer.self_attn.o_proj)
    assert install(model) == 2
    assert not any(type(layer) is LeanBlock for layer in model.model.layers)
    assert all(type(layer.self_attn) is FusedAttention for layer in model.model.layers)
    assert_same_model(plain, model, 4)


def test_quantized_projections_fuse_to_the_same_output() -> None:
    plain, fused = tiny_model("qwen2"), tiny_model("qwen2")
    for model in (plain, fused):
        nn.quantize(model, group_size=32, bits=4)
    assert install(fused, whole_blocks=False) == 2
    assert isinstance(fused.model.layers[0].self_attn.qkv_proj, nn.QuantizedLinear)
    assert_same_model(plain, fused, 4)
    lean = tiny_model("qwen2")
    nn.quantize(lean, group_size=32, bits=4)
    install(lean)
    assert type(lean.model.layers[0]) is LeanBlock
    assert lean.model.layers[0].qkv_proj.quantized
    assert_same_model(plain, lean, 4)


def mixed_quantized_llama() -> Any:
    """tests/tiny.py's llama, 4-bit but for 8-bit value projections."""
    model = tiny_model("llama")
    nn.quantize(
        model,
        group_size=32,
        bits=4,
        class_predicate=lambda path, module: (
            isinstance(module, nn.Linear) and not path.endswith("v_proj")
        ),
    )
    nn.quantize(model, group_size=32, bits=8)  # what is still float: the value projections
    return model


def test_differently_quantized_projections_are_left_alone() -> None:
    """A mixed quantization (8-bit values next to 4-bit queries) cannot share one product; the
    layer's MLP, all 4-bit, is fused all the same."""
    plain, model = mixed_quantized_llama(), mixed_quantized_llama()
    attention = model.model.layers[0].self_attn
    assert (attention.q_proj.bits, attention.v_proj.bits) == (4, 8)
    assert install(model) == 2
    for layer in model.model.layers:
        assert "q_proj" in layer.self_attn
        assert type(layer.mlp) is FusedMLP
    assert_same_model(plain, model, 4)


def test_projections_of_different_dtypes_are_left_alone() -> None:
    """A float32 value projection next to float16 ones: one product would cast it."""
    model = tiny_model("llama")
    for layer in model.model.layers:
        for name in ("q_proj", "k_proj"):
            layer.self_attn[name].weight = layer.self_attn[name].weight.astype(mx.float16)
    install(model)
    assert all("q_proj" in layer.self_attn for layer in model.model.layers)


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_families_with_normalised_heads(family: str) -> None:
    """Qwen3 and Gemma 3 normalise query and key heads apart (Gemma 3: GELU-gated MLP, sliding
    window caches on most layers)."""
    plain, fused = tiny_family(family), tiny_family(family)
    for model in (plain, fused):  # a scale no head size gives (Gemma: query_pre_attn_scalar)
        for layer in model.model.layers:
            layer.self_attn.scale = 0.3
    # Head norms of their own (built as ones: a swapped pair would go unnoticed).
    norms = [
        (name, 1 + 0.5 * mx.random.normal(value.shape, key=mx.random.key(i)))
        for i, (name, value) in enumerate(tree_flatten(plain.parameters()))
        if name.endswith(("q_norm.weight", "k_norm.weight"))
    ]
    assert norms
    for model in (plain, fused):
        model.load_weights(norms, strict=False)
    assert install(fused) == len(fused.model.layers)
    # Qwen3's blocks are computed whole; Gemma 3's (norms around each half) keep mlx-lm's block
    # around the fused attention and MLP.
    whole = family == "qwen3"
    for layer in fused.model.layers:
        assert (type(layer) is LeanBlock) is whole
        assert (layer if whole else layer.self_attn).normed
    assert_same_model(plain, fused, 8)


def test_mixture_of_experts_layers_fuse_their_attention() -> None:
    """Qwen3-MoE: attention fused; the sparse expert block (no gate/up pair) stays."""
    plain, fused = tiny_family("qwen3_moe"), tiny_family("qwen3_moe")
    assert install(fused) == len(fused.model.layers)
    assert all(type(layer.self_attn) is FusedAttention for layer in fused.model.layers)
    assert not any(type(layer.mlp) is FusedMLP for layer in fused.model.layers)
    assert_same_model(plain, fused, 8)


@pytest.mark.parametrize("family", ["phi3", "starcoder2"])
def test_other_families_are_left_alone(family: str) -> None:
    model = tiny_family(family)
    before = [type(layer.self_attn) for layer in model.model.layers]
    assert install(model) == 0
    assert [type(layer.self_attn) for layer in model.model.layers] == before


@pytest.mark.parametrize("draft", [False, True], ids=["plain", "draft-model"])
def test_engine_with_fused_projections_decodes_mlx_lm_tokens(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, draft: bool
) -> None:
    """The engine fuses at load where fusion pays (a GPU; forced here), a draft model's layers
    too, and still decodes exactly mlx-lm's greedy tokens, alone and in a batch."""
    monkeypatch.setattr(fused_projections, "_gpu_kind", lambda: "cuda")
    limits = ChatLimits(speculative=str(tiny_model_dir), speculative_tokens=4) if draft else None

    async def scenario() -> None:
        engine = LLMEngine("tiny", tiny_model_dir, prefill_chunk=16, limits=limits)
        engine.start()
        try:
            await engine.wait_loaded()
            assert engine.scheduler is not None
            models = [engine.scheduler.model]
            if draft:
                assert engine.scheduler.draft_model is not None
                models.append(engine.scheduler.draft_model.model)
            for model in models:
                assert all(type(layer) is LeanBlock for layer in model.model.layers)
            request = GenerationRequest("r", PROMPT, 12, SamplingParams(temperature=0.0))
            expected = reference_greedy(engine, 12)
            _, alone, _ = await run(engine, request)
            together = await asyncio.gather(run(engine, request), run(engine, request))
            assert alone == expected
            assert [tokens for _, tokens, _ in together] == [expected, expected]
        finally:
            engine.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("pipelined", [False, True], ids=["in-order", "pipelined"])
def test_speculative_passes_over_fused_layers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pipelined: bool
) -> None:
    """Prompt lookup's verification passes (several new tokens per row, ragged caches) over
    fused layers give what they give over mlx-lm's: a mixed batch, request by request."""
    monkeypatch.setattr(speculative_tests.scheduler_module, "ARRIVAL_QUIET_S", 0.0)
    plain_model, tokenizer = load(str(speculative_tests.plain_llama_dir(tmp_path / "llama")))
    fused_model, _ = load(str(tmp_path / "llama"))
    install(fused_model)
    results = []
    for model in (plain_model, fused_model):
        sched = speculative_tests.scheduler(
            (model, tokenizer), "prompt_lookup", pipelined=pipelined
        )
        sinks = speculative_tests.serve(sched, speculative_tests.mixed_requests())
        assert sched.counters.accepted_drafts > 0
        results.append([sink.tokens for sink in sinks])
    assert results[0] == results[1]


def test_quantized_kv_over_fused_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8-bit KV caches fed by the fused layers' keys and values (views of one product) hold
    what the unfused layers' would: the same greedy tokens."""
    model_dir = quantized_kv_tests.quantizable_model_dir(tmp_path / "tiny-qkv")
    limits = ChatLimits(kv_bits=8, kv_group_size=quantized_kv_tests.GROUP)
    request = GenerationRequest("r", PROMPT, 16, SamplingParams(temperature=0.0))

    async def tokens(fuse: bool) -> list[int]:
        monkeypatch.setattr(fused_projections, "_gpu_kind", lambda: "cuda" if fuse else None)
        engine = LLMEngine("tiny", model_dir, prefill_chunk=16, limits=limits)
        engine.start()
        try:
            await engine.wait_loaded()
            assert engine.fused_layers == engine.stats().fused_layers == (2 if fuse else 0)
            return (await run(engine, request))[1]
        finally:
            engine.stop()

    assert asyncio.run(tokens(True)) == asyncio.run(tokens(False))


def test_fused_layers_keep_their_head_size_for_the_kv_checks(tmp_path: Path) -> None:
    """quantized_cache.install reads each attention's head size: a group that does not divide it
    is refused in one line, fused or not."""
    model, _ = load(str(quantized_kv_tests.quantizable_model_dir(tmp_path / "tiny-qkv")))
    install(model)
    with pytest.raises(ValueError, match="does not divide the head size"):
        install_quantized_kv(model, 8, 64)


@pytest.mark.parametrize(
    ("gpu", "setting", "fused"),
    [
        (None, None, False),
        (None, True, False),  # never on the CPU
        ("cuda", None, True),  # measured faster there
        ("cuda", False, False),
        ("metal", None, False),  # not measured: opt-in
        ("metal", True, True),
    ],
)
def test_where_fusion_is_on(
    monkeypatch: pytest.MonkeyPatch, gpu: str | None, setting: bool | None, fused: bool
) -> None:
    monkeypatch.setattr(fused_projections, "_gpu_kind", lambda: gpu)
    assert fused_projections.fusion_pays(setting) is fused


def test_engine_keeps_mlx_lm_layers_when_told(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLXD_FUSE_PROJECTIONS=false reaches the engine: no layer fused, even on CUDA."""
    monkeypatch.setattr(fused_projections, "_gpu_kind", lambda: "cuda")

    async def scenario() -> None:
        engine = LLMEngine(
            "tiny", tiny_model_dir, prefill_chunk=16, limits=ChatLimits(fuse_projections=False)
        )
        engine.start()
        try:
            await engine.wait_loaded()
            assert engine.scheduler is not None
            assert engine.fused_layers == 0
            layers = engine.scheduler.model.model.layers
            assert {type(layer.self_attn).__module__ for layer in layers} == {"mlx_lm.models.llama"}
        finally:
            engine.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("false", False), ("true", True)])
def test_the_setting_reaches_the_engine(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool | None
) -> None:
    if value is not None:
        monkeypatch.setenv("MLXD_FUSE_PROJECTIONS", value)
    settings = Settings().model_dump()
    engine = build_chat("tiny", tiny_model_dir, {}, settings)
    assert isinstance(engine, LLMEngine)
    assert engine.limits.fuse_projections is expected


def lean_decode(
    monkeypatch: pytest.MonkeyPatch, fast: bool
) -> tuple[list[mx.array], list[Any], int]:
    """A lean model's logits for a 250-token prompt and 12 greedy steps (across the cache
    buffer's exact fill at 256 and its growth), its caches, and how many times mlx-lm's own
    `KVCache.update_and_fetch` ran; without `fast`, every write goes through it."""
    model = tiny_model("llama")
    install(model)
    calls = 0
    original = KVCache.update_and_fetch

    def counted(self: KVCache, keys: mx.array, values: mx.array) -> Any:
        nonlocal calls
        calls += 1
        return original(self, keys, values)

    with monkeypatch.context() as patch:
        patch.setattr(KVCache, "update_and_fetch", counted)
        if not fast:
            patch.setattr(
                fused_projections, "_update_and_fetch", lambda c, k, v: c.update_and_fetch(k, v)
            )
        cache = make_prompt_cache(model)
        logits = [model(mx.array([(PROMPT * 13)[:250]]), cache=cache)[:, -1]]
        for _ in range(12):
            token = mx.argmax(logits[-1], axis=-1)
            logits.append(model(token[:, None], cache=cache)[:, -1])
        mx.eval(logits)
    return logits, cache, calls


def test_solo_cache_fast_path_keeps_mlx_lm_cache_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """LeanBlock writes a single-sequence KVCache with plain slices where its buffer has room:
    every step's logits, every layer's offset and buffers are those of mlx-lm's own
    `update_and_fetch`, which still makes (and grows) the buffer."""
    want, want_cache, want_calls = lean_decode(monkeypatch, fast=False)
    have, have_cache, calls = lean_decode(monkeypatch, fast=True)
    layers = len(want_cache)
    assert want_calls == 13 * layers
    assert calls == 2 * layers  # the prompt (no buffer yet) and the growth past 256
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, have, strict=True))
    for expected, got in zip(want_cache, have_cache, strict=True):
        assert expected.offset == got.offset == 262
        assert expected.keys.shape == got.keys.shape and got.keys.shape[2] == 512
        assert mx.array_equal(expected.keys, got.keys).item()
        assert mx.array_equal(expected.values, got.values).item()
