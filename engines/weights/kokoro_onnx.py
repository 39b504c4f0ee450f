"""Kokoro-82M's int8 ONNX export → mlx-audio's Kokoro parameter names, in float32 numpy.

The export keeps PyTorch names for 412 of its initializers (`encoder.bert.…`,
`decoder.decoder.…`); the others are named after graph values (`onnx::MatMul_6547`,
`/decoder/decoder/encode/Mul_output_0`) and are identified here through the node that consumes
them, whose name is the PyTorch module scope (`/encoder/F0.0/conv1/Conv_quant`).

What the conversion undoes:
- int8/uint8 weights (`X_quantized`, `X_scale`, `X_zero_point`): (q - zero_point) * scale,
  per output channel (a MatMul's columns, a Conv's output channels, an LSTM's directions);
- MatMul weights stored (in, out): transposed to Linear's (out, in);
- Conv weights (out, in, k) → MLX's (out, k, in); weight-normalised convs were folded into one
  weight W by the export: weight_v = W and weight_g = ‖W‖ per output channel give back W;
- ONNX LSTM gates (i, o, f, c) with weights (direction, in, 4H) and biases (direction, 8H) →
  PyTorch's (i, f, g, o) per direction, (4H, in), as mlx-audio's LSTM takes them.

Invariant: `convert` returns exactly the parameters `expected` names, with their shapes, or
raises naming what is missing or mis-shaped (no parameter is left at its random init).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

QUANT_SUFFIXES = ("_quantized", "_scale", "_zero_point")
ONNX_TO_TORCH_GATES = (0, 2, 3, 1)  # PyTorch's i, f, g, o taken from ONNX's i, o, f, c
UNUSED = ("stft.istft.stft.", "_reshape_shape", "bert.pooler.")


class KokoroConversionError(ValueError):
    pass


def module_path(node_name: str) -> str:
    """'/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant' → 'text_encoder.cnn.0.0' (MLX names):
    scopes repeat their parent's dotted prefix, and the export's top modules are renamed."""
    parts = [p for p in node_name.split("/") if p][:-1]
    nested = zip(parts, [*parts[1:], ""], strict=True)
    kept = [part for part, child in nested if not child.startswith(part + ".")]
    return mlx_name(".".join(kept))


def mlx_name(torch_name: str) -> str:
    """A PyTorch name of the export → the name in mlx-audio's Model."""
    for old, new in (
        ("encoder.bert_encoder", "bert_encoder"),
        ("encoder.bert.", "bert."),
        ("encoder.text_encoder.", "text_encoder."),
        ("encoder.predictor.", "predictor."),
        ("decoder.decoder.", "decoder."),
        ("encoder.", "predictor."),  # F0, N, shared, F0_proj, N_proj sit under the predictor
    ):
        if torch_name.startswith(old):
            return new + torch_name[len(old) :]
    return torch_name


def dequantize(
    initializers: Mapping[str, np.ndarray], base: str, zero_point: str | None, channel_axis: int
) -> np.ndarray:
    """(q - zero_point) * scale for `base`_quantized, per channel along `channel_axis`. The
    zero point is the one its consumer node reads (the export shares equal ones between
    weights, so it need not be named after the weight); none means 0."""
    q = initializers[base + "_quantized"].astype(np.float32)
    scale = initializers[base + "_scale"].astype(np.float32)
    zero = initializers[zero_point] if zero_point else np.zeros(1)
    shape = [1] * q.ndim
    shape[channel_axis] = -1
    scale = scale.reshape(shape) if scale.size > 1 else scale
    zero = zero.astype(np.float32).reshape(shape) if zero.size > 1 else zero.astype(np.float32)
    return (q - zero) * scale


def read_graph(model: Any) -> tuple[dict[str, np.ndarray], dict[str, list[tuple[str, str, int]]]]:
    """(initializers by name, and for each name the (op, node name, input index) reading it)."""
    from onnx import numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers: dict[str, list[tuple[str, str, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, node.name, index))
    return initializers, consumers


def convert(model: Any, expected: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The MLX parameters named in `expected` (name → shape), from a loaded ONNX `model`."""
    initializers, consumers = read_graph(model)
    found: dict[str, np.ndarray] = {}
    for name in initializers:
        if name.endswith(("_scale", "_zero_point")):
            continue
        base = name.removesuffix("_quantized")
        readers = consumers.get(name, [])
        op, node, _ = readers[0] if readers else ("", "", 0)
        if op == "DynamicQuantizeLSTM" or op == "LSTM":
            continue  # taken as a whole below
        quantized = name.endswith("_quantized")
        zero_point = _zero_point(model, node, op, base) if quantized else None
        weight = _weight(initializers, name, op, zero_point)
        if base.startswith(("encoder.", "decoder.")):
            target = mlx_name(base)
        elif op in ("MatMulInteger", "MatMul") or op in ("ConvInteger", "Conv", "ConvTranspose"):
            target = module_path(node) + ".weight"
        else:
            continue  # graph constants
        _place(found, target, weight, op, expected)
    for lstm in {n for ops in consumers.values() for op, n, _ in ops if "LSTM" in op}:
        found.update(_lstm(model, initializers, lstm))
    _fill_unused(found, expected)
    return _checked(found, expected)


def _weight(
    initializers: Mapping[str, np.ndarray], name: str, op: str, zero_point: str | None
) -> np.ndarray:
    if not name.endswith("_quantized"):
        return initializers[name].astype(np.float32)
    base = name.removesuffix("_quantized")
    return dequantize(initializers, base, zero_point, 1 if op == "MatMulInteger" else 0)


# op → the index of its weight's zero point among the node's inputs
ZERO_POINT_INPUT = {"MatMulInteger": 3, "ConvInteger": 3, "DequantizeLinear": 2}


def _zero_point(model: Any, node_name: str, op: str, base: str) -> str | None:
    """The zero point the weight's consumer reads; a quantized embedding is gathered first and
    its rows dequantized after, by the DequantizeLinear that reads the same scale."""
    if op == "Gather":
        node = next(
            n
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[1] == base + "_scale"
        )
        return node.input[2] if len(node.input) > 2 else None
    index = ZERO_POINT_INPUT.get(op)
    if index is None:
        return None
    node = next(n for n in model.graph.node if n.name == node_name)
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _place(
    found: dict[str, np.ndarray],
    target: str,
    weight: np.ndarray,
    op: str,
    expected: Mapping[str, tuple[int, ...]],
) -> None:
    """Store `weight` under `target` in MLX's layout (weight-normalised convs as v and g)."""
    if target.endswith((".gamma", ".beta")):  # the text encoder's LayerNorms
        stem, _, suffix = target.rpartition(".")
        target = f"{stem}.{'weight' if suffix == 'gamma' else 'bias'}"
    if op in ("MatMulInteger", "MatMul") and weight.ndim == 2:
        weight = weight.T
    if weight.ndim == 3 and target.endswith(".weight"):
        weight = weight.transpose(0, 2, 1)  # PyTorch (out, in, k) → MLX (out, k, in)
    stem = target.removesuffix(".weight")
    if stem + ".weight_v" in expected and target not in expected:
        found[stem + ".weight_v"] = weight
        found[stem + ".weight_g"] = np.sqrt((weight**2).sum(axis=(1, 2), keepdims=True))
        return
    found[target] = weight


def _lstm(
    model: Any, initializers: Mapping[str, np.ndarray], node_name: str
) -> dict[str, np.ndarray]:
    """One bidirectional LSTM node → mlx-audio's Wx/Wh/bias_ih/bias_hh per direction."""
    node = next(n for n in model.graph.node if n.name == node_name)
    w_name, r_name, b_name = node.input[1], node.input[2], node.input[3]
    w = _lstm_weight(initializers, w_name, node.input[9])  # (2, 4H, in)
    r = _lstm_weight(initializers, r_name, node.input[11])  # (2, 4H, H)
    bias = initializers[b_name].astype(np.float32)  # (2, 8H)
    hidden = r.shape[2]
    path = module_path(node_name)
    out: dict[str, np.ndarray] = {}
    for direction, suffix in ((0, "forward"), (1, "backward")):
        out[f"{path}.Wx_{suffix}"] = _gates(w[direction], hidden)
        out[f"{path}.Wh_{suffix}"] = _gates(r[direction], hidden)
        out[f"{path}.bias_ih_{suffix}"] = _gates(bias[direction, : 4 * hidden], hidden)
        out[f"{path}.bias_hh_{suffix}"] = _gates(bias[direction, 4 * hidden :], hidden)
    return out


def _lstm_weight(initializers: Mapping[str, np.ndarray], name: str, zero_point: str) -> np.ndarray:
    """(2, 4H, columns): the quantized form is stored (2, columns, 4H), one scale a direction
    (DynamicQuantizeLSTM's inputs 9 and 11 are the zero points of W and R)."""
    if name.endswith("_quantized"):
        base = name.removesuffix("_quantized")
        return dequantize(initializers, base, zero_point, 0).transpose(0, 2, 1)
    return initializers[name].astype(np.float32)


def _gates(stacked: np.ndarray, hidden: int) -> np.ndarray:
    blocks = [stacked[g * hidden : (g + 1) * hidden] for g in range(4)]
    return np.concatenate([blocks[g] for g in ONNX_TO_TORCH_GATES])


def _fill_unused(found: dict[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Parameters the export dropped because inference never reads them (BERT's pooler)."""
    for name, shape in expected.items():
        if name not in found and any(part in name for part in UNUSED):
            found[name] = np.zeros(shape, np.float32)


def _checked(
    found: dict[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    missing = sorted(set(expected) - set(found))
    if missing:
        raise KokoroConversionError(f"{len(missing)} parameters not found, e.g. {missing[:5]}")
    wrong = [
        f"{name} {found[name].shape} != {tuple(shape)}"
        for name, shape in expected.items()
        if found[name].shape != tuple(shape)
    ]
    if wrong:
        raise KokoroConversionError(f"{len(wrong)} mis-shaped, e.g. {wrong[:50]}")
    return {name: np.ascontiguousarray(found[name], np.float32) for name in expected}
