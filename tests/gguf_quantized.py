"""Tiny GGUFs whose linears are quantized as llama.cpp quantizes them (gguf's own quantizer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.tiny import tiny_model, write_gguf


def write_quantized_gguf(arch: str, kind: str, path: Path) -> list[str]:
    """Write tests/tiny.py's `arch` model to `path` with every 2-D `blk.*` tensor (the linears,
    as llama.cpp's) in GGML type `kind`; return the names of those tensors."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    quantized_names = []
    add_tensor = gguf.GGUFWriter.add_tensor

    def add_quantized(self: gguf.GGUFWriter, name: str, tensor: np.ndarray, **kwargs: Any) -> None:
        if name.startswith("blk.") and tensor.ndim == 2:
            quantized_names.append(name)
            add_tensor(self, name, gguf.quants.quantize(tensor, qtype), raw_dtype=qtype)
        else:
            add_tensor(self, name, tensor)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf.GGUFWriter, "add_tensor", add_quantized)
        write_gguf(tiny_model(arch), arch, path)
    assert quantized_names, "no tensor was written quantized"
    return quantized_names
