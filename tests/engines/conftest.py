"""A tiny random llama served by a real LLMEngine on its own engine thread.

Every engine test runs twice: with decode steps pipelined (step n+1 launched before step n is
read: what GPUs do) and in order (step n read first: what the CPU does), since this machine would
otherwise only ever run the CPU's order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engines.llm.engine import LLMEngine
from tests.tiny import save_model_dir, tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(tiny_model("llama"), "llama", tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(params=[True, False], ids=["pipelined", "in-order"])
async def engine(tiny_model_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[LLMEngine]:
    engine = LLMEngine("tiny", tiny_model_dir, prefill_chunk=16)
    engine.start()
    await engine.wait_loaded()
    assert engine.scheduler is not None
    engine.scheduler.config.pipelined = request.param  # idle engine: read at its next step
    yield engine
    engine.stop()
