"""SIGTERM on `mlxd serve` (the tiny model, a real process): a stream in flight finishes with
[DONE], new connections are refused, and the process exits 0 (launchctl/systemd rely on it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_lets_streams_finish_then_exits_0(tiny_model_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "MLXD_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "server", "serve", "--model", str(tiny_model_dir)]
    process = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        body = {
            "model": tiny_model_dir.name,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 200,
            "stream": True,
        }
        lines: list[str] = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if len(lines) == 4:
                    process.send_signal(signal.SIGTERM)
        assert lines[-1] == "data: [DONE]"
        finishes = [
            json.loads(line[6:])["choices"][0]["finish_reason"]
            for line in lines
            if line.startswith("data: {") and '"finish_reason":"' in line
        ]
        assert finishes == ["length"]
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
