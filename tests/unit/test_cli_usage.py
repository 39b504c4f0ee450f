"""The command line's own mistakes: an unknown option is reported by the subcommand it was
given to (with that subcommand's usage), and `mlxd import` names every way to import."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.__main__ import main


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["serve", "--bogus"], "usage: mlxd serve "),
        (["models", "list", "m", "extra"], "usage: mlxd models "),
        (["--bogus"], "usage: mlxd [-h]"),
    ],
)
def test_an_unknown_argument_shows_its_commands_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert err.rstrip().splitlines()[-1].endswith(f"unrecognized arguments: {argv[-1]}")


def test_import_without_a_source_names_every_form(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    assert main(["import"]) == 2
    usage = capsys.readouterr().err
    for form in ("gguf FILE", "ct2 DIR", "hf SOURCE", "--packaged NAME", "--embedded"):
        assert form in usage


def test_an_unknown_packaged_model_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLXD_HOME", str(tmp_path))
    assert main(["import", "--packaged", "nope"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("mlxd: unknown packaged model 'nope'; choose from ")
    assert "qwen2.5-coder-0.5b-instruct" in line
