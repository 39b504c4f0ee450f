"""Speculative decoding's options: the models file, the engine's limits, /metrics' series."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.kinds import build_chat
from engines.types import EngineStats
from engines.weights.store import ModelStore
from server.app import _options
from server.config import ConfigError, load_models_file
from server.metrics import _speculation

SETTINGS = {"max_batch": 8, "max_waiting": 8, "prefix_cache_mb": 1, "watchdog_s": 60.0}


def models_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nname = "coder"\nsource = "/m"\n{extra}\n')
    return path


def test_a_models_file_entry_reaches_the_engine_limits(tmp_path: Path) -> None:
    entry = load_models_file(
        models_file(tmp_path, 'speculative = "prompt_lookup"\nspeculative_tokens = 6')
    ).models[0]
    engine = build_chat("coder", tmp_path, entry.model_dump(), SETTINGS)
    assert engine.limits.speculative == "prompt_lookup"  # type: ignore[attr-defined]
    assert engine.limits.speculative_tokens == 6  # type: ignore[attr-defined]


def test_a_draft_model_is_named_as_a_source_and_reaches_the_engine_as_its_directory(
    tmp_path: Path,
) -> None:
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text("{}")
    store = ModelStore(tmp_path / "home")
    entry = load_models_file(models_file(tmp_path, f'speculative = "{draft}"')).models[0]
    engine = build_chat("coder", tmp_path, _options(entry, store), SETTINGS)
    assert engine.limits.speculative == str(draft.resolve())  # type: ignore[attr-defined]
    missing = load_models_file(models_file(tmp_path, 'speculative = "no-such-draft"')).models[0]
    with pytest.raises(ConfigError, match="'coder': speculative: model 'no-such-draft'"):
        _options(missing, store)


@pytest.mark.parametrize(
    "extra", ['speculative = ""', 'speculative = "prompt_lookup"\nspeculative_tokens = 0']
)
def test_bad_speculative_options_are_refused_naming_the_field(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError, match="speculative"):
        load_models_file(models_file(tmp_path, extra))


def test_metrics_report_acceptance_and_tokens_per_step() -> None:
    stats = {
        "coder": EngineStats(
            0, 0, 1, 30, drafted_tokens=20, accepted_drafts=15, decode_row_steps=15
        ),
        "plain": EngineStats(0, 0, 1, 10, decode_row_steps=10),
    }
    acceptance, per_step = _speculation(stats)
    assert [(s.labels["model"], s.value) for s in acceptance.samples] == [("coder", 0.75)]
    assert {s.labels["model"]: s.value for s in per_step.samples} == {"coder": 2.0, "plain": 1.0}
