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
