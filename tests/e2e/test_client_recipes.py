"""docs/clients.md's recipes (the blocks marked `recipe`), run as written against the live
server on the embedded model: the Python SDK, the JavaScript SDK (installed with npm into a
temporary directory) and curl."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LiveServer

DOC = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
DOC_URL = "http://127.0.0.1:8000"
OPENAI_JS = "openai@7.59.0"


def recipe(language: str, url: str) -> str:
    match = re.search(rf"```{language} recipe\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match, f"no {language} recipe in {DOC}"
    return match.group(1).replace(DOC_URL, url)


def run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_python_recipe(live: LiveServer, tmp_path: Path) -> None:
    script = tmp_path / "recipe.py"
    script.write_text(recipe("python", live.url))
    output = run([sys.executable, str(script)])
    assert "Paris" in output.splitlines()[0]
    assert output.splitlines()[1].strip()  # the streamed greeting


def test_curl_recipe(live: LiveServer, tmp_path: Path) -> None:
    script = tmp_path / "recipe.sh"
    script.write_text("set -e\n" + recipe("sh", live.url))
    output = run(["bash", str(script)])
    assert "Paris" in output and "data: [DONE]" in output and '"usage"' in output
    assert '"object":"list"' in output.replace(" ", "")


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js/npm not installed: the JavaScript recipe cannot run here",
)
def test_javascript_recipe(live: LiveServer, tmp_path: Path) -> None:
    run(["npm", "install", "--no-save", "--no-audit", "--no-fund", OPENAI_JS], cwd=tmp_path)
    script = tmp_path / "recipe.mjs"
    script.write_text(recipe("javascript", live.url))
    output = run(["node", str(script)], cwd=tmp_path)
    assert "Paris" in output.splitlines()[0]
    assert output.splitlines()[1].strip()
