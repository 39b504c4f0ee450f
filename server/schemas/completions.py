"""`POST /v1/completions` (legacy text completions) request and response shapes.

Spec: https://platform.openai.com/docs/api-reference/completions/create
(../shared/openai/openapi.yaml, `CreateCompletionRequest`). Used by editor autocomplete (with
`suffix` for fill-in-the-middle) and evaluation harnesses (`echo` + `logprobs`, `max_tokens: 0`).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, field_validator

from engines.types import TokenLogprob
from server.schemas.common import SamplingFields

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: Prompt
    suffix: str | None = None
    max_tokens: int | None = Field(16, ge=0)  # the spec's default is 16
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1, le=128)
    speculative: bool | None = None  # extension: speculative decoding off/on (None: the model's)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: Prompt) -> Prompt:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("token-id prompts must not be empty")
        return value

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: each a string or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [[int(p) for p in prompt]]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "safety_identifier")


def legacy_logprobs(entries: list[TokenLogprob], start_offset: int = 0) -> dict[str, Any]:
    """The completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""
    offsets = []
    offset = start_offset
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.text)
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [
            None if e.logprob is None else {text: lp for _, text, lp in e.top} for e in entries
        ],
        "text_offset": offsets,
    }


def completion_body(
    request_id: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    created: int | None = None,
) -> dict[str, Any]:
    """A `text_completion` object (also each streamed chunk; spec `CreateCompletionResponse`)."""
    body: dict[str, Any] = {
        "id": request_id,
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def text_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
