"""Fields chat and completions share: sampling, penalties, stop, n, streaming.

Spec: `CreateChatCompletionRequest` / `CreateCompletionRequest` in ../shared/openai/openapi.yaml.
`top_k`, `min_p` and `repetition_penalty` are extensions (as in vLLM and llama.cpp's server).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.types import SamplingParams

LOGIT_BIAS_LIMIT = 100.0
MAX_STOP_LENGTH = 1024  # characters per stop string


TOOL_CHOICE_TYPES = ("function", "allowed_tools")  # object tool_choices read (chat, Responses)


def tool_choice_type_read(value: Any, hosted: str = "") -> Any:
    """`value` (a `tool_choice` before validation) as it is, unless it is an object of a type
    not in TOOL_CHOICE_TYPES (`custom`, a hosted tool's): then a ValueError naming that type,
    not the first member of the union's error ('should be 'none', 'auto' or …'). `hosted`: a
    remark added to the message."""
    kind = value.get("type") if isinstance(value, dict) else None
    if isinstance(kind, str) and kind not in TOOL_CHOICE_TYPES:
        raise ValueError(
            f"a tool_choice of type {kind!r} is not supported: it is 'none', 'auto', "
            f"'required', a function or allowed_tools{hosted}"
        )
    return value


def object_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """A tool's parameters (input) schema as it is, unless its `type` cannot be `object`: a
    call's arguments are an object (OpenAI's and Anthropic's APIs refuse other types), and a
    forced call of another type's schema cannot parse as a call (it came back as text holding
    the call's markup). A list of types holding `object` (`["object", "null"]`, which schema
    generators write for an optional model) is `object`: a call has arguments, and the grammar
    of a forced call must not let them be `null` (no parser reads that as a call)."""
    if schema is None:
        return None
    kind = schema.get("type", "object")
    if isinstance(kind, list) and "object" in kind:
        return {**schema, "type": "object"}
    if kind != "object":
        raise ValueError(f"a tool's schema must be of type 'object', not {kind!r}")
    return schema


class Strict(BaseModel):
    """Strict types (no "0.5" for a number); unknown fields are kept so they can be reported."""

    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class SamplingFields(Strict):
    model: str
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if any(not item for item in items):
            raise ValueError("stop strings must not be empty")
        if any(len(item) > MAX_STOP_LENGTH for item in items):
            raise ValueError(f"stop strings must be at most {MAX_STOP_LENGTH} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys_and_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            # ASCII digits only: str.isdigit() also takes '²' (which int() refuses) and '٣'.
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias}")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, defaults: dict[str, float] | None = None) -> SamplingParams:
        """The request's sampling; fields it leaves out come from the model's `defaults` (its
        models-file `sampling` table), then from OpenAI's defaults."""
        given = defaults or {}
        return SamplingParams(
            temperature=self.temperature
            if self.temperature is not None
            else given.get("temperature", 1.0),
            top_p=self.top_p if self.top_p is not None else given.get("top_p", 1.0),
            top_k=self.top_k if self.top_k is not None else int(given.get("top_k", 0)),
            min_p=self.min_p if self.min_p is not None else given.get("min_p", 0.0),
            seed=None if self.seed is None else self.seed % 2**63,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or given.get("repetition_penalty", 1.0),
            logit_bias=tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items()),
        )


def usage_body(
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    prediction: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """`usage`; `cached_tokens` counts prompt tokens whose KV came from the prefix cache;
    `prediction` (a request with a predicted output): its tokens kept as drafts and the rest,
    over every choice."""
    details = {"reasoning_tokens": 0}
    if prediction is not None:
        accepted, rejected = prediction
        details |= {"accepted_prediction_tokens": accepted, "rejected_prediction_tokens": rejected}
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
        "completion_tokens_details": details,
    }


def ignored_fields(
    body: dict[str, Any], model: type[BaseModel], ignored: tuple[str, ...]
) -> list[str]:
    """Fields present in the body that do nothing here: known-ignored ones and unknown ones."""
    known = set(model.model_fields)
    return [key for key in body if key in ignored or key not in known]


def response_headers(
    request_id: str, body: dict[str, Any], model: type[BaseModel], ignored: tuple[str, ...]
) -> dict[str, str]:
    """`x-request-id`, and `x-mlxd-ignored-fields` naming what the request sent in vain."""
    headers = {"x-request-id": request_id}
    if fields := ignored_fields(body, model, ignored):
        headers["x-mlxd-ignored-fields"] = _ignored_header(fields)
    return headers


# The ignored-fields header grows with what the client sent; HTTP clients and proxies refuse a
# response whose headers are large (nginx buffers 4-8 KiB of them, h11 64 KiB, curl 100 KiB).
MAX_IGNORED_NAME = 64
MAX_IGNORED_HEADER = 1024


def _ignored_header(fields: list[str]) -> str:
    """The names, header-safe, each cut to `MAX_IGNORED_NAME` characters (ending `...`); at most
    `MAX_IGNORED_HEADER` characters in all, the last entry then saying how many more there were
    (`+1990 more`)."""
    names = [_header_safe(field) for field in fields]
    names = [n if len(n) <= MAX_IGNORED_NAME else n[: MAX_IGNORED_NAME - 3] + "..." for n in names]
    kept: list[str] = []
    length = -1  # no comma before the first name
    for index, name in enumerate(names):
        more = len(names) - index - 1
        tail = len(f",+{more} more") if more else 0
        if length + 1 + len(name) + tail > MAX_IGNORED_HEADER:
            break
        kept.append(name)
        length += 1 + len(name)
    if len(kept) < len(names):
        kept.append(f"+{len(names) - len(kept)} more")
    return ",".join(kept)


def _header_safe(name: str) -> str:
    """A client-chosen field name as header text: printable ASCII, other characters (and the
    list separator) as escapes — header values are latin-1 on the wire and must not break lines."""
    escaped = name.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" and c != "," else f"\\x{ord(c):02x}" for c in escaped)


def _inline_refs(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        reference = node.get("$ref", "")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return _inline_refs(definitions[reference.removeprefix("#/$defs/")], definitions)
        return {key: _inline_refs(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(value, definitions) for value in node]
    return node


def documented_body(model: type[BaseModel], media_type: str = "application/json") -> dict[str, Any]:
    """`openapi_extra` declaring `model` as a route's request body in /openapi.json. The routes
    read and validate bodies themselves (for OpenAI-shaped errors and size limits), so FastAPI
    would otherwise document no body at all."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {media_type: {"schema": _inline_refs(schema, definitions)}},
        }
    }
