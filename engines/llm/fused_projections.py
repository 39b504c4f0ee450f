"""Fewer kernels per decode step on a GPU: a layer's query, key and value projections as one
matrix product, its gate and up projections as one, and the rotary embedding of its queries and
keys as one call.

A small model's decode step on a GPU is bound by the host's work per kernel, not by the chip
(docs/benchmarks.md: on an H200 a 1B model's single stream runs at the same pace whether or not
Python builds the graph). mlx-lm's Llama and Qwen2 layers launch ~17 kernels each for one token;
fusing the projections (concatenating their weights along the output axis) and rotating the
queries and keys in one call launches 13. Qwen3 and Gemma 3 normalise query and key heads with
weights of their own, so their queries and keys still rotate apart (14 of 18); Qwen3-MoE's
layers fuse their attention and leave the experts as they are.

What is computed is the same model: each output of a fused product is the dot product of the
same weight row with the same input, and rotary embeddings act on each head alone. Whether the
GPU's matrix kernels sum in the same order for a wider output is the kernel's choice, so logits
may differ from the unfused layers in the last bits (measured by `bench/fused_step.py`).

A step's host work is per primitive, views included (each is built in Python and evaluated by
MLX), so a Llama, Qwen2 or Qwen3 block whose attention and MLP are both fused is then replaced
whole by a `LeanBlock` (`WHOLE_BLOCK`): the same kernels on the same operands, bit for bit, with
15 fewer primitives per block (no transpose, flatten and unflatten around each product).

`install(model)` replaces the attention and MLP modules of the layers whose classes are exactly
the ones read for this (`FUSABLE`); any other layer, or projections that differ in kind, options
or dtype (LoRA, mixed quantization, a float32 projection, a different input size), is left as it
is (attention and MLP each on its own). It runs on the engine thread right after load, before any
cache exists; the engine calls it where `fusion_pays` (CUDA GPUs by default, Metal when asked,
never the CPU) and not on a sharded or vision-language model.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu
from mlx_lm.models.cache import KVCache


def _gelu_gate(gate: mx.array, up: mx.array) -> mx.array:
    return nn.gelu_approx(gate) * up  # as gemma3_text's MLP computes it


# Modules whose Attention and MLP were read for this, with their MLP's activation: attention
# projects q/k/v from one input, optionally normalises the query and key heads (q_norm, k_norm),
# rotates them at `cache.offset`, calls the module's `scaled_dot_product_attention` and projects
# with o_proj; the MLP is down(activation(gate, up)).
FUSABLE: dict[str, Callable[[mx.array, mx.array], mx.array]] = {
    "mlx_lm.models.llama": swiglu,
    "mlx_lm.models.qwen2": swiglu,
    "mlx_lm.models.qwen3": swiglu,
    "mlx_lm.models.qwen3_moe": swiglu,  # its dense layers' MLP; the experts stay as they are
    "mlx_lm.models.gemma3_text": _gelu_gate,
}


def _fused_linear(parts: list[nn.Module]) -> nn.Module | None:
    """One layer computing `parts` side by side, or None if they cannot be joined."""
    first = parts[0]
    kinds = {type(part) for part in parts}
    if len(kinds) != 1 or kinds.pop() not in (nn.Linear, nn.QuantizedLinear):
        return None
    names = sorted(first.keys())
    if any(sorted(part.keys()) != names for part in parts):
        return None  # a bias on some and not others
    if isinstance(first, nn.QuantizedLinear) and any(
        (part.group_size, part.bits, part.mode) != (first.group_size, first.bits, first.mode)
        for part in parts
    ):
        return None
    arrays = {name: [part[name] for part in parts] for name in names}
    if any(not isinstance(values[0], mx.array) for values in arrays.values()):
        return None
    if any(len({v.dtype for v in values}) != 1 for values in arrays.values()):
        return None  # one product has one dtype (a float32 value projection would be cast)
    if any(len({v.shape[1:] for v in values}) != 1 for values in arrays.values()):
        return None  # different input sizes
    fused = copy.copy(first)  # the same options (quantization, bias); new arrays below
    for name, values in arrays.items():
        fused[name] = mx.concatenate(values, axis=0)
    return fused


class FusedAttention(nn.Module):
    """The attention of a `FUSABLE` module with one q/k/v product; queries and keys rotated in
    one call where no per-head norm tells them apart."""

    def __init__(self, attention: nn.Module, qkv: nn.Module, module_name: str) -> None:
        super().__init__()
        self.n_heads = attention.n_heads
        self.n_kv_heads = attention.n_kv_heads
        if "head_dim" in vars(attention):  # read by engines/llm/quantized_cache.py's checks
            self.head_dim = attention.head_dim
        self.scale = attention.scale
        self.qkv_proj = qkv
        self.o_proj = attention.o_proj
        self.rope = attention.rope
        self.normed = "q_norm" in attention
        if self.normed:
            self.q_norm, self.k_norm = attention.q_norm, attention.k_norm
        self._module = sys.modules[module_name]  # looked up per call: patched attention wins

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        batch, length, _ = x.shape
        heads, kv_heads = self.n_heads, self.n_kv_heads
        qkv = self.qkv_proj(x).reshape(batch, length, heads + 2 * kv_heads, -1)
        offset = cache.offset if cache is not None else 0
        if self.normed:
            queries = self.q_norm(qkv[:, :, :heads]).transpose(0, 2, 1, 3)
            keys = self.k_norm(qkv[:, :, heads : heads + kv_heads]).transpose(0, 2, 1, 3)
            queries, keys = self.rope(queries, offset=offset), self.rope(keys, offset=offset)
        else:
            # Queries and keys rotate by the same positions: one call for both.
            rotated = self.rope(qkv[:, :, : heads + kv_heads].transpose(0, 2, 1, 3), offset=offset)
            queries, keys = rotated[:, :heads], rotated[:, heads:]
        values = qkv[:, :, heads + kv_heads :].transpose(0, 2, 1, 3)
        if cache is not None:
            keys, values = _update_and_fetch(cache, keys, values)
        output = self._module.scaled_dot_product_attention(
            queries, keys, values, cache=cache, scale=self.scale, mask=mask
        )
        return self.o_proj(output.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class FusedMLP(nn.Module):
    """down(activation(gate, up)) with gate and up from one product."""

    def __init__(
        self,
        mlp: nn.Module,
        gate_up: nn.Module,
        activation: Callable[[mx.array, mx.array], mx.array],
    ) -> None:
        super().__init__()
        self.gate_up_proj = gate_up
        self.down_proj = mlp.down_proj
        self._activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(self._activation(gate, up))


def _gpu_kind() -> str | None:
    """ "cuda" or "metal" where this thread's default device is a GPU, else None."""
    if mx.default_device() == mx.cpu:
        return None
    return "cuda" if mx.cuda.is_available() else "metal"


def fusion_pays(setting: bool | None) -> bool:
    """Whether to fuse on this thread's device. Never on the CPU: its steps are bound by
    arithmetic, and engines/llm/cpu_decode.py rewrites them instead. On a GPU as `setting` says;
    unset, where fusing was measured faster (CUDA, docs/benchmarks.md) — Metal is not measured
    yet, so there it is opt-in."""
    gpu = _gpu_kind()
    if gpu is None:
        return False
    return setting if setting is not None else gpu == "cuda"


# Modules whose TransformerBlock was read for `LeanBlock`: out = h + mlp(post_norm(h)) with
# h = x + self_attn(input_norm(x)), both norms RMSNorm, attention and MLP as FUSABLE says.
WHOLE_BLOCK = ("mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3")


LEAN_LINEAR = {nn.Linear, nn.QuantizedLinear}  # the layers LeanLinear computes (not LoRA's)


class LeanLinear(nn.Module):
    """A projection of 2-D inputs that adds no views to the graph: a plain layer's weight is
    kept transposed (a view of the same buffer, made once), so a product is one primitive where
    `nn.Linear` adds a transpose, and a 3-D input a flatten and an unflatten, every call. The
    matrix kernel and its operands are the same, so the outputs are too. Quantized layers are
    called as they are (their product takes the weight as stored).

    `product` computes it from plain attributes (see LeanBlock: what a step reads is not looked
    up through the module's registry); it holds the arrays registered here, which the engine
    never replaces after `install`."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.quantized = isinstance(linear, nn.QuantizedLinear)
        product: Callable[[mx.array], mx.array]
        if self.quantized:
            self.linear = linear
            product = linear
        else:
            weight_t = self.weight_t = linear.weight.T
            mx.eval(weight_t)
            if "bias" in linear:
                bias = self.bias = linear.bias

                def product(x: mx.array) -> mx.array:
                    return mx.addmm(bias, x, weight_t)

            else:

                def product(x: mx.array) -> mx.array:
                    return x @ weight_t

        object.__setattr__(self, "product", product)  # not a child module: never registered

    def __call__(self, x: mx.array) -> mx.array:
        return self.product(x)


class LeanBlock(nn.Module):
    """A whole decoder block of a `WHOLE_BLOCK` module with its projections fused, computed on
    the hidden state flattened to (tokens, hidden): one reshape in and one out instead of a
    flatten, an unflatten and a transpose per projection, and the norms, residual adds and
    activation called directly. Same operations in the same order on the same operands as the
    block with `FusedAttention` and `FusedMLP`: ~26 primitives per block instead of ~37.
    The cache, the mask and attention itself are used exactly as mlx-lm's block uses them."""

    def __init__(self, block: nn.Module, attention: FusedAttention, mlp: FusedMLP) -> None:
        super().__init__()
        self.input_layernorm = block.input_layernorm
        self.post_attention_layernorm = block.post_attention_layernorm
        self.qkv_proj = LeanLinear(attention.qkv_proj)
        self.o_proj = LeanLinear(attention.o_proj)
        self.gate_up_proj = LeanLinear(mlp.gate_up_proj)
        self.down_proj = LeanLinear(mlp.down_proj)
        self.rope = attention.rope
        self.normed = attention.normed
        if self.normed:
            self.q_norm, self.k_norm = attention.q_norm, attention.k_norm
        self.n_heads, self.n_kv_heads = attention.n_heads, attention.n_kv_heads
        self.scale = attention.scale
        self._activation = mlp._activation
        self._module = attention._module
        if "head_dim" in vars(attention):  # read by engines/llm/quantized_cache.py's checks
            self.head_dim = attention.head_dim
        if "use_sliding" in vars(block):  # read by Llama's model and cache maker
            self.use_sliding = block.use_sliding
        # What every step reads, as one plain attribute: the registered norms and projections
        # are found through nn.Module's `__getattr__` (~0.5 µs a read on a CPU, ~15 reads a
        # block: about a quarter of building a lean step's graph). The same arrays and modules,
        # which the engine never replaces after `install`.
        object.__setattr__(
            self,
            "_per_step",
            (
                self.input_layernorm.weight,
                self.input_layernorm.eps,
                self.qkv_proj.product,
                self.rope,
                self.o_proj.product,
                self.post_attention_layernorm.weight,
                self.post_attention_layernorm.eps,
                self.gate_up_proj.product,
                self.down_proj.product,
            ),
        )

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        (input_norm, input_eps, qkv_proj, rope, o_proj, post_norm, post_eps, gate_up_proj,
         down_proj) = self._per_step  # fmt: skip
        batch, length, hidden = x.shape
        heads, kv_heads = self.n_heads, self.n_kv_heads
        h = x.reshape(batch * length, hidden)
        qkv = qkv_proj(mx.fast.rms_norm(h, input_norm, input_eps))
        if length == 1:  # (rows, 1, heads, head) has the layout of (rows, heads, 1, head)
            qkv = qkv.reshape(batch, heads + 2 * kv_heads, 1, -1)
        else:
            qkv = qkv.reshape(batch, length, heads + 2 * kv_heads, -1).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        both, values = mx.split(qkv, [heads + kv_heads], axis=1)
        if self.normed:  # per-head norms of their own, then the rotation
            queries, keys = mx.split(both, [heads], axis=1)
            queries = rope(self.q_norm(queries), offset=offset)
            keys = rope(self.k_norm(keys), offset=offset)
        else:  # queries and keys rotate by the same positions: one call for both
            queries, keys = mx.split(rope(both, offset=offset), [heads], axis=1)
        if cache is not None:
            keys, values = _update_and_fetch(cache, keys, values)
        output = self._module.scaled_dot_product_attention(
            queries, keys, values, cache=cache, scale=self.scale, mask=mask
        )
        if length > 1:
            output = output.transpose(0, 2, 1, 3)
        h = h + o_proj(output.reshape(batch * length, -1))
        gate, up = mx.split(gate_up_proj(mx.fast.rms_norm(h, post_norm, post_eps)), 2, -1)
        h = h + down_proj(self._activation(gate, up))
        return h.reshape(batch, length, hidden)


def _update_and_fetch(cache: Any, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
    """`cache.update_and_fetch(keys, values)`; for mlx-lm's `KVCache` (one sequence: the engine's
    solo stream) whose buffer has room, the same writes and views with plain slices. Its own
    `[..., a:b, :]` indexing costs the host ~2x as much to parse (~15 vs ~8 µs a layer on a
    CPU) for the same `SliceUpdate` and `Slice` primitives; growing the buffer is left to it."""
    buffers: tuple[Any, Any] = (
        (cache.keys, cache.values) if type(cache) is KVCache else (None, None)
    )
    key_buffer, value_buffer = buffers
    if key_buffer is not None and cache.offset + keys.shape[2] <= key_buffer.shape[2]:
        start = cache.offset
        end = cache.offset = start + keys.shape[2]
        key_buffer[:, :, start:end] = keys
        value_buffer[:, :, start:end] = values
        if end == key_buffer.shape[2]:
            return key_buffer, value_buffer
        return key_buffer[:, :, :end], value_buffer[:, :, :end]
    result: tuple[mx.array, mx.array] = cache.update_and_fetch(keys, values)
    return result


def install(model: nn.Module, whole_blocks: bool = True) -> int:
    """Fuse the projections of every fusable layer of `model`: its attention's, and its MLP's
    where the layer has the module's plain MLP (not a mixture of experts); with `whole_blocks`,
    a block fused in both whose module is in WHOLE_BLOCK is replaced by a `LeanBlock`. The
    number of layers with anything fused."""
    inner = getattr(model, "language_model", model)  # a multimodal wrapper's text model
    layers = getattr(getattr(inner, "model", None), "layers", None)
    if not isinstance(layers, list):
        return 0
    fused = 0
    for index, layer in enumerate(layers):
        attention: Any = getattr(layer, "self_attn", None)
        module_name = type(attention).__module__
        if module_name not in FUSABLE or type(attention) is not sys.modules[module_name].Attention:
            continue
        # Joined now, layer by layer: the separate weights are freed as each layer's modules
        # are replaced, so memory peaks at the model plus one layer's projections.
        qkv = _fused_linear([attention.q_proj, attention.k_proj, attention.v_proj])
        if qkv is not None:
            mx.eval(qkv.parameters())
            layer.self_attn = FusedAttention(attention, qkv, module_name)
        mlp: Any = getattr(layer, "mlp", None)
        gate_up = None
        if type(mlp) is sys.modules[module_name].MLP:
            gate_up = _fused_linear([mlp.gate_proj, mlp.up_proj])
        if gate_up is not None:
            mx.eval(gate_up.parameters())
            layer.mlp = FusedMLP(mlp, gate_up, FUSABLE[module_name])
        fused += qkv is not None or gate_up is not None
        if (
            whole_blocks
            and module_name in WHOLE_BLOCK
            and type(layer) is sys.modules[module_name].TransformerBlock
            and isinstance(layer.self_attn, FusedAttention)
            and isinstance(layer.mlp, FusedMLP)
            and {type(layer.self_attn.o_proj), type(layer.mlp.down_proj)} <= LEAN_LINEAR
        ):
            layers[index] = LeanBlock(layer, layer.self_attn, layer.mlp)
    if fused:
        mx.clear_cache()  # the separate weights' buffers, kept by MLX's cache otherwise
    return fused
