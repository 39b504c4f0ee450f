"""Opt-in (MLXD_OPTIN=1; two server processes and a group of two): a store entry that is
dequantized on load (a CPU import of a Q5_0 GGUF: MLX triples on disk) serves tensor parallel
over two ranks as it does in one process: each rank dequantizes its lazily loaded model before
mlx-lm shards the float32 Linear layers (engines/llm/distributed.py). The tokens cannot tell
whether the ranks dequantized (Q5_0's float16 scales are exact, the quantized matmul agrees with
float32): this checks that sharding such an entry works and gives the one-process output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.weights.checkpoint import DEQUANTIZE_ON_LOAD
from engines.weights.gguf import import_gguf
from tests.engines.test_distributed import Server, ring, texts
from tests.gguf_quantized import write_quantized_gguf

pytestmark = pytest.mark.optin


def test_a_dequantized_on_load_entry_shards_as_one_process(tmp_path: Path) -> None:
    source = tmp_path / "q5.gguf"
    write_quantized_gguf("qwen2", "Q5_0", source)
    directory = import_gguf(source, tmp_path / "models" / "q5", dequantize=True)
    assert json.loads((directory / "config.json").read_text())[DEQUANTIZE_ON_LOAD]
    one = Server(tmp_path / "home", directory)
    try:
        expected = texts(one)
    finally:
        one.close()
    group = Server(tmp_path / "home", directory, *ring(2))
    try:
        assert len(group.followers()) == 1
        assert texts(group) == expected
    finally:
        group.close()
