"""The GGUF importer checks the architecture from the file's header before reading tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.weights import gguf as gguf_module
from engines.weights.gguf import GGUFImportError, import_gguf


def test_an_unsupported_architecture_is_refused_before_any_tensor_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gguf

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    def read(source: Path) -> None:
        raise AssertionError("tensors were read before the architecture was checked")

    monkeypatch.setattr(gguf_module, "_read", read)
    with pytest.raises(GGUFImportError, match="unsupported GGUF architecture 'mamba'"):
        import_gguf(path, tmp_path / "out", dequantize=True)


def test_a_file_that_is_not_gguf_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFImportError, match="not a readable GGUF file") as raised:
        import_gguf(path, tmp_path / "out", dequantize=True)
    assert "\n" not in str(raised.value)
