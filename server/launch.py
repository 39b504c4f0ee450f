"""`mlxd launch codex|claude|opencode`: run a coding agent against this server, like `ollama
launch`. It finds the server (or starts `mlxd serve` in the background and waits for it), asks
it which chat model to use and that model's context window, then runs the client with its
configuration pointing here — on the command line and in the environment, never by editing the
user's own config files (opencode reads a generated file named by `OPENCODE_CONFIG`).

Invariants:
- `plan` is a pure function of the server's answers and the options: `--print` shows exactly
  what would run, and tests check plans without any client installed.
- Every failure (no server and none can start, no chat model, the client not installed) is one
  line and a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLIENTS = {  # client → (executable, npm package that provides it)
    "codex": ("codex", "@openai/codex"),
    "claude": ("claude", "@anthropic-ai/claude-code"),
    "opencode": ("opencode", "opencode-ai"),
}
START_TIMEOUT_S = 300.0  # a first start imports and warms the model


class LaunchError(RuntimeError):
    """Launching cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Served:
    """What the running server told us about the model the client will use."""

    base_url: str  # http://host:port
    model: str
    context_window: int
    api_key: str | None = None


@dataclass
class LaunchPlan:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the caller's environment
    files: dict[Path, str] = field(default_factory=dict)  # written before the client runs


def plan(client: str, served: Served, extra_args: list[str], home: Path) -> LaunchPlan:
    """The command, environment and files that point `client` at the server."""
    key = served.api_key or "unused"
    if client == "codex":
        provider = {
            "model_provider": "mlxd",
            "model_providers.mlxd.name": "mlxd",
            "model_providers.mlxd.base_url": f"{served.base_url}/v1",
            "model_providers.mlxd.wire_api": "responses",
            "model_providers.mlxd.env_key": "MLXD_API_KEY",
            "model": served.model,
            "model_context_window": served.context_window,
        }
        overrides = [f"{name}={json.dumps(value)}" for name, value in provider.items()]
        argv = ["codex", *(arg for item in overrides for arg in ("-c", item)), *extra_args]
        return LaunchPlan(argv, {"MLXD_API_KEY": key})
    if client == "claude":
        env = {
            "ANTHROPIC_BASE_URL": served.base_url,
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_MODEL": served.model,
            "ANTHROPIC_SMALL_FAST_MODEL": served.model,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": served.model,
            # A local model is slow to write: bound one answer well inside its context.
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(min(8192, served.context_window // 4)),
        }
        return LaunchPlan(["claude", "--model", served.model, *extra_args], env)
    if client == "opencode":
        config = {
            "$schema": "https://opencode.ai/config.json",
            "provider": {
                "mlxd": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "mlxd",
                    "options": {"baseURL": f"{served.base_url}/v1", "apiKey": key},
                    "models": {
                        served.model: {
                            "name": served.model,
                            "limit": {
                                "context": served.context_window,
                                "output": min(8192, served.context_window // 4),
                            },
                        }
                    },
                }
            },
            "model": f"mlxd/{served.model}",
        }
        path = home / "launch" / "opencode.json"
        return LaunchPlan(
            ["opencode", *extra_args],
            {"OPENCODE_CONFIG": str(path)},
            {path: json.dumps(config, indent=2)},
        )
    raise LaunchError(f"unknown client {client!r}; one of: {', '.join(CLIENTS)}")


def launch(
    client: str,
    base_url: str,
    model: str | None,
    api_key: str | None,
    home: Path,
    extra_args: list[str],
    dry_run: bool,
) -> int:
    """Find or start the server, ask it for the model, then run (or print) the client."""
    executable, package = CLIENTS[client]
    if not dry_run and shutil.which(executable) is None:
        raise LaunchError(
            f"{executable} is not installed; install it with: npm install -g {package}"
        )
    _ensure_server(base_url, api_key, home, model)
    served = _served_model(base_url, model, api_key)
    steps = plan(client, served, extra_args, home)
    if dry_run:
        for path, text in steps.files.items():
            print(f"# write {path}\n{text}")
        for name, value in steps.env.items():
            print(f"export {name}={_quoted(value)}")
        print(" ".join(_quoted(arg) for arg in steps.argv))
        return 0
    for path, text in steps.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return subprocess.call(steps.argv, env={**os.environ, **steps.env})


def _quoted(value: str) -> str:
    import shlex

    return shlex.quote(value)


def _request(url: str, api_key: str | None, method: str = "GET", timeout: float = 5) -> Any:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(url, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def _answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # a server is there (503 while it loads, or draining)
    except OSError:
        return False


def _ensure_server(base_url: str, api_key: str | None, home: Path, model: str | None) -> None:
    """Use the server at `base_url`, or start `mlxd serve` there (serving `model`, when
    named) in the background."""
    if _answers(base_url):
        return
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    log = home / "launch" / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "server", "serve", "--host", host, "--port", port]
    command += ["--model", model] if model else []
    env = {**os.environ, **({"MLXD_API_KEY": api_key} if api_key else {})}
    with log.open("ab") as sink:
        subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    print(f"mlxd: starting a server at {base_url} (log: {log})", file=sys.stderr)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if _request(f"{base_url}/health", None).get("status") == "ok":
                return
        except urllib.error.HTTPError:
            pass  # 503 while loading
        except OSError:
            pass  # not listening yet
        time.sleep(1)
    raise LaunchError(f"the server at {base_url} did not become ready; see {log}")


def _served_model(base_url: str, wanted: str | None, api_key: str | None) -> Served:
    """The chat model to use (`wanted`, else the first chat model served), loaded, with its
    context window."""
    listed = _request(f"{base_url}/v1/models", api_key)["data"]
    if wanted is None:
        chat = [m for m in listed if m.get("kind", "chat") == "chat"]
        if not chat:
            raise LaunchError(f"the server at {base_url} serves no chat model")
        wanted = str(chat[0]["id"])
    try:
        model = _request(f"{base_url}/v1/models/{wanted}", api_key)
        if "context_window" not in model:  # not loaded yet: load it to learn its window
            model = _request(f"{base_url}/v1/models/{wanted}/load", api_key, "POST", timeout=600)
    except urllib.error.HTTPError as error:
        detail = json.loads(error.read() or b"{}").get("error", {}).get("message", error)
        raise LaunchError(f"model {wanted!r}: {detail}") from None
    if "context_window" not in model:
        raise LaunchError(f"model {wanted!r} is not a chat model (no context window)")
    return Served(base_url, str(model["id"]), int(model["context_window"]), api_key)
