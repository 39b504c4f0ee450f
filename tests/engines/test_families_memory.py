"""The transient memory of a forward pass (engines/llm/limits.pass_bytes) against MLX's measured
peak: random float32 llama models of two shapes on the CPU, passes with and without a cached
context, reading no logits (a prefill chunk), and reading the last position's logits (a prompt's
last pass, a joint prefill) which computes every position's."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models import llama
from mlx_lm.models.cache import make_prompt_cache

from engines.llm.caches import nbytes
from engines.llm.limits import PassShape, pass_bytes, prefill_peak_bytes

SHAPES = [
    {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 8, "vocab_size": 32000},
    {"hidden_size": 128, "intermediate_size": 768, "num_attention_heads": 4, "vocab_size": 8000},
]


def measured_transient(model: llama.Model, tokens: int, context: int, read_logits: bool) -> int:
    """Peak memory of one pass above what was allocated before it and the cache it grew."""
    cache = make_prompt_cache(model)
    if context:
        mx.eval(model(mx.array([list(range(context))]), cache=cache))
    mx.eval([layer.state for layer in cache])
    mx.clear_cache()
    before, cached = mx.get_active_memory(), nbytes(cache)
    mx.reset_peak_memory()
    logits = model(mx.array([list(range(tokens))]), cache=cache)
    mx.eval(logits[:, -1, :] if read_logits else [], [layer.state for layer in cache])
    return mx.get_peak_memory() - before - (nbytes(cache) - cached)


@pytest.mark.parametrize("sizes", SHAPES, ids=["256-wide", "128-wide"])
@pytest.mark.parametrize(
    ("tokens", "context", "read_logits"),
    [(256, 0, False), (512, 0, False), (256, 768, False), (256, 0, True), (512, 256, True)],
)
def test_pass_bytes_bounds_the_measured_peak_closely(
    sizes: dict[str, int], tokens: int, context: int, read_logits: bool
) -> None:
    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        **sizes,
    }
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    if mx.default_device() != mx.cpu:
        pytest.skip("calibrated on MLX's CPU backend (unfused attention)")
    real = measured_transient(model, tokens, context, read_logits)
    shape = PassShape.of(config)
    predicted = pass_bytes(shape, tokens, context, tokens if read_logits else 0, False)
    assert real <= predicted <= 1.6 * real + 2**20, (real, predicted)


def test_prefill_peak_bytes_bounds_a_chunked_prefill() -> None:
    """A 1,000-token prompt but its last token fed in passes of 256, reading no logits (as
    `Prefill.feed` does): the peak over the passes is what `prefill_peak_bytes` projects, within
    the same margin (the last token's own pass is far smaller)."""
    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        **SHAPES[0],
    }
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    if mx.default_device() != mx.cpu:
        pytest.skip("calibrated on MLX's CPU backend (unfused attention)")
    prompt, chunk = list(range(1000)), 256
    cache = make_prompt_cache(model)
    peak = 0
    for start in range(0, len(prompt) - 1, chunk):
        part = prompt[start : min(start + chunk, len(prompt) - 1)]
        mx.clear_cache()
        before, cached = mx.get_active_memory(), nbytes(cache)
        mx.reset_peak_memory()
        model(mx.array([part]), cache=cache)  # its logits are never read: never computed
        mx.eval([layer.state for layer in cache])
        peak = max(peak, mx.get_peak_memory() - before - (nbytes(cache) - cached))
    predicted = prefill_peak_bytes(PassShape.of(config), len(prompt), chunk, False, False)
    assert peak <= predicted <= 1.6 * peak + 2**20, (peak, predicted)
