"""`mlxd doctor`: facts, and a fix for each problem."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from engines.blas import BlasStatus
from engines.llm import native_softmax
from server.doctor import check_blas, check_native_softmax, check_port, check_store, run_doctor
from server.settings import Settings


def test_missing_models_name_the_import_command(tmp_path: Path) -> None:
    findings = check_store(Settings(home=tmp_path))
    fixes = {f.topic: f.fix for f in findings}
    assert fixes["chat model"] == "mlxd import --embedded"
    assert fixes["speech model"] == "mlxd import --embedded"


def test_port_in_use_is_a_problem_with_a_fix() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        finding = check_port(Settings(port=port))
    assert finding.fix is not None and f"--port {port + 1}" in finding.fix
    assert check_port(Settings(port=port)).fix is None  # free again


def test_reference_blas_on_linux_is_a_problem() -> None:
    finding = check_blas(BlasStatus(None, "not found"))
    if sys.platform.startswith("linux"):
        assert finding.fix is not None and "libopenblas0-pthread" in finding.fix
    else:  # macOS: Accelerate, nothing to fix
        assert finding.fix is None


def test_exit_status_reflects_problems(tmp_path: Path, capsys: object) -> None:
    assert run_doctor(Settings(home=tmp_path), BlasStatus("/lib/libopenblas.so", "preloaded")) == 1
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "fix: mlxd import --embedded" in out and "problem(s) found" in out


def test_a_supported_cpu_without_a_compiler_is_a_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(native_softmax, "_loaded", None)
    monkeypatch.setattr(native_softmax, "unsupported_cpu", lambda: "")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    finding = check_native_softmax("cpu")  # $CC names a compiler that is not there
    assert finding.fix is not None and "writable" in finding.fix
    monkeypatch.setattr(native_softmax, "_loaded", None)
    monkeypatch.setenv("CC", "")
    monkeypatch.setattr(native_softmax.shutil, "which", lambda name: None)
    finding = check_native_softmax("cpu")
    assert finding.fix is not None and "install a C compiler" in finding.fix
    assert check_native_softmax("metal").fix is None  # not used there


def test_chat_limits_count_the_kv_of_an_entry_dequantized_on_load(tmp_path: Path) -> None:
    """The embedded models are stored quantized and run in float32 on the CPU (their config
    says mlxd_dequantize_on_load, and names no torch_dtype): their KV cache is float32 too, so
    doctor sized rows at half the bytes the engine does (max_batch 127 where serve has 63)."""
    import json

    from server.doctor import check_limits

    model = tmp_path / "tiny"
    model.mkdir()
    config = {
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "vocab_size": 100,
        "mlxd_dequantize_on_load": True,
        "quantization": {"group_size": 64, "bits": 4},
    }
    (model / "config.json").write_text(json.dumps(config))
    # float32 K and V: 2 layers x 2 heads x 16 dims x 4 bytes x 2 = 512 bytes a token, 2 MiB a
    # 4096-token row: 32 rows in 64 MiB (bfloat16 would make it 64).
    [finding] = check_limits(Settings(home=tmp_path, model=str(model), kv_budget_mb=64))
    assert "max_batch 32," in finding.facts, finding.facts
