"""`mlxd launch`: the plans that point Codex, Claude Code and opencode at this server, checked
against a real server on a socket (fake engines) without any client installed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from engines.pool import EnginePool
from server.app import create_app
from server.launch import LaunchError, Served, launch, plan
from server.settings import Settings
from tests.fakes import FakeEngine, FakeSpeechEngine
from tests.servers import serve

SERVED = Served("http://127.0.0.1:8123", "coder", 32768)


def test_codex_gets_a_responses_provider_and_the_context_window(tmp_path: Path) -> None:
    steps = plan("codex", SERVED, ["exec", "hi"], tmp_path)
    assert steps.argv[0] == "codex" and steps.argv[-2:] == ["exec", "hi"]
    flags = steps.argv[1:-2]
    assert flags[::2] == ["-c"] * (len(flags) // 2)
    overrides = dict(item.split("=", 1) for item in flags[1::2])
    assert json.loads(overrides["model_providers.mlxd.base_url"]) == "http://127.0.0.1:8123/v1"
    assert json.loads(overrides["model_providers.mlxd.wire_api"]) == "responses"
    assert json.loads(overrides["model_provider"]) == "mlxd"
    assert json.loads(overrides["model"]) == "coder"
    assert json.loads(overrides["model_context_window"]) == 32768
    assert steps.env == {"MLXD_API_KEY": "unused"} and not steps.files


def test_claude_code_gets_the_anthropic_environment(tmp_path: Path) -> None:
    keyed = Served(SERVED.base_url, "coder", 8192, api_key="sk-local")
    steps = plan("claude", keyed, ["-p", "hello"], tmp_path)
    assert steps.argv == ["claude", "--model", "coder", "-p", "hello"]
    assert steps.env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8123"
    assert steps.env["ANTHROPIC_API_KEY"] == "sk-local"
    assert steps.env["ANTHROPIC_SMALL_FAST_MODEL"] == "coder"
    assert steps.env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "2048"  # a quarter of the context


def test_opencode_gets_a_generated_config_not_the_users(tmp_path: Path) -> None:
    steps = plan("opencode", SERVED, [], tmp_path)
    ((path, text),) = steps.files.items()
    assert path == tmp_path / "launch" / "opencode.json"
    assert steps.env == {"OPENCODE_CONFIG": str(path)}
    config = json.loads(text)
    provider = config["provider"]["mlxd"]
    assert provider["options"]["baseURL"] == "http://127.0.0.1:8123/v1"
    assert provider["models"]["coder"]["limit"]["context"] == 32768
    assert config["model"] == "mlxd/coder"


def test_print_asks_the_running_server_for_model_and_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = EnginePool([FakeSpeechEngine(), FakeEngine("coder", context_length=4096)])
    with serve(create_app(Settings(), pool)) as url:
        assert launch("codex", url, None, None, tmp_path, ["exec", "hi"], dry_run=True) == 0
    command = shlex.split(capsys.readouterr().out.splitlines()[-1])
    assert "-c" in command and 'model="coder"' in command  # the chat model, not the speech one
    assert "model_context_window=4096" in command


def test_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(LaunchError, match="npm install -g @openai/codex"):
        launch("codex", "http://127.0.0.1:9", None, None, tmp_path, [], dry_run=False)
    pool = EnginePool([FakeSpeechEngine()])
    with serve(create_app(Settings(), pool)) as url, pytest.raises(LaunchError, match="no chat"):
        launch("claude", url, None, None, tmp_path, [], dry_run=True)
    pool = EnginePool([FakeEngine("coder")])
    with serve(create_app(Settings(), pool)) as url, pytest.raises(LaunchError, match="nope"):
        launch("claude", url, "nope", None, tmp_path, [], dry_run=True)
