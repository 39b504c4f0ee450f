"""A tiny random llama served by a real LLMEngine on its own engine thread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.llm.engine import LLMEngine
from tests.tiny import save_model_dir, tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tiny_model("llama"), "llama", tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture
async def engine(tiny_model_dir: Path) -> AsyncIterator[LLMEngine]:
    engine = LLMEngine("tiny", tiny_model_dir, prefill_chunk=16)
    engine.start()
    await engine.wait_loaded()
    yield engine
    engine.stop()
