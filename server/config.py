"""The models file (`--config` / `MLXD_CONFIG`, TOML): which models the pool serves.

```toml
memory_budget_mb = 12000          # optional; default: 70% of the memory the device can use
default_model = "chat"            # optional: serves requests naming a model not configured
                                  # here (agents send `claude-opus-5-5`, `gpt-5-codex`);
                                  # left out, such requests get 404

[[models]]
name = "chat"                     # the id clients use
source = "smollm2-135m-instruct"  # store name, local MLX directory, or HF repo id (downloaded
                                  # on first use when not cached)
kind = "chat"                     # chat | speech | tts | embedding (engines/kinds.py); left out:
                                  # what the checkpoint says (MiniLM → embedding), else chat
aliases = ["default", "claude-sonnet-4-5", "gpt-5"]  # more names clients may send
pinned = true                     # never unloaded
preload = true                    # loaded at start (default: on first request)
idle_ttl_s = 900                  # unloaded after 15 idle minutes (unless pinned)
max_batch = 16                    # chat models: rows decoded together (default: sized to
                                  # the device's KV budget, engines/llm/limits.py)
kv_bits = 8                       # chat models: quantized KV cache (4 | 8; kv_group_size 64)
```

Unknown keys are errors (a typo must not silently do nothing). Without a file, the pool serves
`MLXD_MODEL` and `MLXD_SPEECH_MODEL`, both pinned and preloaded.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engines.kinds import KINDS
from engines.llm.chat_formats import TOOL_FORMATS
from server import validation_messages


class SamplingDefaults(BaseModel):
    """Defaults for requests that leave these out (what a request sends always wins)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)

    def values(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    source: str
    kind: str | None = None  # a name in engines.kinds.KINDS; left out: what the checkpoint is
    aliases: list[str] = Field(default_factory=list)
    pinned: bool = False
    preload: bool = False
    idle_ttl_s: float | None = Field(default=None, gt=0)
    max_batch: int | None = Field(default=None, ge=1, le=1024)
    context_length: int | None = Field(default=None, ge=16)
    chat_template: str | None = None  # a Jinja chat template replacing the model's own
    untagged_tool_calls: bool = True  # bare or ```json-fenced calls (no template tags) count
    # The tool-call format (engines/llm/chat_formats.py); left out: read from the checkpoint.
    tool_format: str | None = None
    # Speculative decoding: "prompt_lookup" (drafts from the prompt and output; no second model)
    # or a draft model sharing the tokenizer, named as `source` names a model.
    speculative: str | None = Field(default=None, min_length=1)
    speculative_tokens: int | None = Field(default=None, ge=1, le=64)  # most drafted per step
    # Quantized KV cache (chat): keys and values stored in 4 or 8 bits, a scale and a bias per
    # `kv_group_size` elements (the head dimension must be a multiple of it).
    kv_bits: Literal[4, 8] | None = None
    kv_group_size: Literal[32, 64, 128] = 64
    sampling: SamplingDefaults = Field(default_factory=lambda: SamplingDefaults())

    @field_validator("tool_format")
    @classmethod
    def _known_tool_format(cls, value: str | None) -> str | None:
        if value is not None and value not in TOOL_FORMATS:
            raise ValueError(f"unknown tool_format {value!r}; one of: {', '.join(TOOL_FORMATS)}")
        return value

    @field_validator("chat_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        """A template with a syntax error stops the start: served, it failed every chat request
        with a 400 that blamed the messages. Parsed in the environment transformers' chat
        templates render in (loop controls, generation blocks), so what renders parses."""
        if value is None:
            return value
        # As mlx_lm's import does at serve, before transformers loads: without it, importing
        # transformers prints an advisory line ("PyTorch was not found") on the console.
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        from jinja2 import TemplateSyntaxError
        from transformers.utils.chat_template_utils import _compile_jinja_template

        try:
            _compile_jinja_template(value)
        except TemplateSyntaxError as exc:
            raise ValueError(f"line {exc.lineno}: {exc.message}") from None
        return value

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str | None) -> str | None:
        if value is not None and value not in KINDS:
            raise ValueError(f"unknown kind {value!r}; one of: {', '.join(KINDS)}")
        return value


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_budget_mb: int | None = Field(default=None, ge=64)
    default_model: str | None = None  # a name or alias of `models`
    models: list[ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_is_configured(self) -> ModelsFile:
        names = {name for entry in self.models for name in (entry.name, *entry.aliases)}
        if self.default_model is not None and self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} names no model of this file")
        return self


class ConfigError(ValueError):
    """The models file cannot be used; the message says where and why."""


def load_models_file(path: Path) -> ModelsFile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return ModelsFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_messages.one_line(exc)}") from exc
