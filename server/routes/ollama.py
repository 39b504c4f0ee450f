"""Ollama's API (`/api/…`): what Ollama's clients call, served by mlxd's models.

- `GET /api/version`, `GET /api/tags` (every chat and embedding model), `GET /api/ps` (the
  loaded ones), `POST /api/show` (details, `model_info` with the context length, capabilities).
- `POST /api/chat` and `POST /api/generate`: front ends over the chat path (server/schemas/
  ollama.py builds the chat request; `prepare_chat` checks it, the same engine batch runs it,
  `ChoiceOutput` splits thinking, content and tool calls). A raw generate (`raw`, or a
  `suffix`: fill-in-the-middle) is tokenized as `/v1/completions` does, and so is a generate for
  a model with no chat template (Ollama's default template is the prompt itself). Streamed as
  NDJSON (one JSON object per line; Ollama's default), else one object. Tool calls come whole,
  in one line before the last; the last line has `done: true`, `done_reason` and Ollama's counts
  and durations (nanoseconds). An empty `messages` or `prompt` only loads the model
  (`done_reason: "load"`), as Ollama answers.
- `POST /api/embed` (and the older `POST /api/embeddings`): the embedding engine's vectors. No
  input (none, `""` or `[]`; an empty `prompt`) only loads the model, as Ollama answers.

Errors are Ollama's `{"error": "…"}` with the status (server/errors.py picks the shape by
path); after the first line, an error ends the stream as a last `{"error": …}` line. A client
that goes away cancels its sequence.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engines.errors import NoChatTemplate
from engines.kinds import CHAT, EMBEDDING, ChatEngine
from engines.pool import EnginePool, PoolModel
from engines.types import (
    EmbeddingRequest,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    TokenEvent,
    TokenLogprob,
)
from server import logs
from server.body import MAX_JSON_DEPTH, nests_deeper, read_json_object, validate
from server.chat_output import ChoiceOutput
from server.chat_pipeline import PreparedChat, errors_named, prepare_chat
from server.deps import MetricsDep, PoolDep, SettingsDep
from server.errors import APIError, from_engine_error
from server.generation import EventSource
from server.metrics import Metrics, Observed
from server.routes.embeddings import check_dimensions, embedder_info, run, shorten, token_inputs
from server.schemas.chat import ChatCompletionRequest
from server.schemas.common import documented_body
from server.schemas.ollama import (
    CHAT_PARAMS,
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    LegacyEmbeddingsRequest,
    ShowRequest,
)
from server.serving import cancel_on_close, collected_whole
from server.settings import Settings
from server.tool_calls import without_surrogates

logger = logging.getLogger(__name__)
router = APIRouter()

# The Ollama API version this front end follows (clients check it to enable features).
OLLAMA_VERSION = "0.13.0"
NDJSON = "application/x-ndjson"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(error: APIError) -> dict[str, object]:
    return {"error": error.message}


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


def _listed(model: PoolModel) -> dict[str, Any]:
    """A model as `/api/tags` lists it (sizes and quantization are not known before a load)."""
    modified = datetime.fromtimestamp(model.created, UTC).isoformat().replace("+00:00", "Z")
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": modified,
        "size": 0,
        "digest": hashlib.sha256(f"{model.name}:{model.created}".encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "mlx",
            "family": "",
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        },
    }


def _served(pool: EnginePool) -> list[PoolModel]:
    return [m for m in pool.models() if m.kind in (CHAT.name, EMBEDDING.name)]


@router.get("/api/tags")
async def tags(pool: PoolDep) -> dict[str, Any]:
    return {"models": [_listed(model) for model in _served(pool)]}


@router.get("/api/ps")
async def running(pool: PoolDep) -> dict[str, Any]:
    return {
        "models": [
            _listed(model) | {"expires_at": "0001-01-01T00:00:00Z", "size_vram": 0}
            for model in _served(pool)
            if model.loaded
        ]
    }


@router.post("/api/show", openapi_extra=documented_body(ShowRequest))
async def show(request: Request, settings: SettingsDep, pool: PoolDep) -> dict[str, Any]:
    """A model's details; a chat model is loaded to read them (its context, template family,
    what it can do)."""
    body = validate(ShowRequest, await read_json_object(request, settings.max_body_bytes))
    name = body.model_name()
    if not name:
        raise APIError(400, "model is required", param="model")
    listed = next((m for m in pool.models() if m.name == pool.resolve(name)), None)
    if listed is None or listed.kind not in (CHAT.name, EMBEDDING.name):
        raise APIError(404, f"model '{name}' not found", param="model")
    if listed.kind == EMBEDDING.name:
        return {**_show_body(listed), "capabilities": ["embedding"]}
    engine = await pool.acquire(name, CHAT)
    info = engine.info
    capabilities = ["completion", "tools"]
    if info is not None:
        capabilities += [
            flag
            for flag, has in (
                ("insert", info.fim_tokens is not None),
                ("vision", info.vision),
                ("thinking", info.reasoning),
            )
            if has
        ]
    context = info.context_length if info else 0
    shown = _show_body(listed)
    shown["model_info"] = {"general.architecture": "mlx", "mlx.context_length": context}
    return {**shown, "capabilities": capabilities}


def _show_body(model: PoolModel) -> dict[str, Any]:
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": _listed(model)["details"],
        "model_info": {"general.architecture": "mlx"},
        "modified_at": _listed(model)["modified_at"],
    }


@router.post("/api/chat", openapi_extra=documented_body(ChatRequest))
async def chat(
    request: Request, settings: SettingsDep, pool: PoolDep, metrics: MetricsDep
) -> Response:
    body = validate(ChatRequest, await read_json_object(request, settings.max_body_bytes))
    if not body.messages:
        return await _loaded(pool, body.model, "message", {"role": "assistant", "content": ""})
    with errors_named(CHAT_PARAMS, body.chat_paths):
        chat_request = validate(ChatCompletionRequest, body.chat_body())
        prepared = await prepare_chat(pool, settings, chat_request, f"ollama-{uuid.uuid4().hex}")
    return await _serve(request, settings, metrics, prepared, body.model, body.stream, "message")


@router.post("/api/generate", openapi_extra=documented_body(GenerateRequest))
async def generate(
    request: Request, settings: SettingsDep, pool: PoolDep, metrics: MetricsDep
) -> Response:
    body = validate(GenerateRequest, await read_json_object(request, settings.max_body_bytes))
    if not body.prompt and not body.images and body.suffix is None:
        return await _loaded(pool, body.model, "response", "")
    with errors_named(CHAT_PARAMS | {"messages": "prompt"}, body.chat_paths):
        if body.raw or body.suffix is not None:
            prepared = await _raw(pool, body)
        else:
            chat_request = validate(ChatCompletionRequest, body.chat_body())
            request_id = f"ollama-{uuid.uuid4().hex}"
            try:
                prepared = await prepare_chat(pool, settings, chat_request, request_id)
            except NoChatTemplate:  # Ollama's template is then `{{ .Prompt }}`: the prompt as is
                if body.images or body.format:
                    raise  # they need a template: the model's lack is the answer, not `raw`'s
                prepared = await _raw(pool, body)
    return await _serve(request, settings, metrics, prepared, body.model, body.stream, "response")


async def _raw(pool: EnginePool, body: GenerateRequest) -> PreparedChat:
    """A generate with no template: the prompt as written, or fill-in-the-middle (`suffix`)."""
    for field, given in (("images", body.images), ("format", body.format)):
        if given:
            raise APIError(
                400, f"{field} needs the model's template (no raw, no suffix)", param=field
            )
    engine: ChatEngine = await pool.acquire(body.model, CHAT)
    if body.suffix is not None:
        tokens = await asyncio.to_thread(engine.encode_fim, body.prompt, body.suffix)
    else:
        tokens = await asyncio.to_thread(engine.encode_text, body.prompt)
    sampling = validate(ChatCompletionRequest, body.chat_body())  # its sampling and stops
    requested = sampling.requested_max_tokens()
    request_id = f"ollama-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)
    generation = GenerationRequest(
        request_id,
        tokens,
        engine.check_fits(len(tokens), requested, param="prompt"),
        sampling.sampling(pool.sampling_defaults(body.model)),
        sampling.stop_sequences(),
        logprobs=sampling.logprobs_count(),
    )
    return PreparedChat(engine, generation, lambda: ChoiceOutput(None, False, {}))


async def _loaded(pool: EnginePool, model: str, field: str, empty: Any) -> Response:
    """What Ollama answers a request with nothing to generate: the model is loaded."""
    await pool.acquire(model, CHAT)
    return JSONResponse(
        {"model": model, "created_at": _now(), field: empty, "done": True, "done_reason": "load"}
    )


async def _serve(
    request: Request,
    settings: Settings,
    metrics: Metrics,
    prepared: PreparedChat,
    model: str,
    streamed: bool,
    field: str,
) -> Response:
    """Submit the prepared generation and answer it in Ollama's shape (`field`: "message" for
    chat, "response" for generate)."""
    stream = metrics.observe(prepared.engine.submit(prepared.generation), prepared.engine.name)
    lines = _Lines(model, field, prepared, stream)
    if streamed:
        interval = settings.stream_interval_ms / 1000
        frames = cancel_on_close(
            request, lines.stream(stream, interval), [stream], prepared.request_id
        )
        return StreamingResponse(frames, media_type=NDJSON)
    collected = await collected_whole(request, stream, prepared.request_id, {}, _error)
    if isinstance(collected, Response):
        return collected
    choice = collected.choices[0]
    output = prepared.output_for()
    deltas = output.feed(choice.text) + output.finish()
    content = "".join(d.get("content") or "" for d in deltas)
    thinking = "".join(d.get("reasoning_content") or "" for d in deltas)
    reply = lines.part(content, thinking, _calls(output))
    if prepared.generation.logprobs is not None:
        reply["logprobs"] = [_logprob(entry) for entry in choice.logprobs]
    tokens = (collected.prompt_tokens, choice.completion_tokens)
    return JSONResponse(reply | lines.done(choice.finish_reason, *tokens))


def _logprob(entry: TokenLogprob) -> dict[str, Any]:
    """One token as Ollama's `logprobs` lists it: its text, log-probability, alternatives."""
    return {
        "token": entry.raw.decode("utf-8", "replace"),
        "logprob": entry.logprob,
        "top_logprobs": [{"token": text, "logprob": logprob} for _, text, logprob in entry.top],
    }


def _calls(output: ChoiceOutput) -> list[dict[str, Any]]:
    """The choice's tool calls as Ollama writes them (arguments an object, each lone surrogate
    the model's `\\ud800` escapes decode to as U+FFFD, which UTF-8 can carry); a call whose
    arguments were cut (not JSON), or nest deeper than a body may (server/body.py), is left
    out."""
    calls = []
    for call in output.tool_calls:
        text = call["function"]["arguments"] or "{}"
        try:
            arguments = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if nests_deeper(arguments, MAX_JSON_DEPTH, text):
            continue
        arguments = without_surrogates(arguments)
        calls.append({"function": {"name": call["function"]["name"], "arguments": arguments}})
    return calls


class _Lines:
    """The response objects of one generation, streamed or whole."""

    def __init__(self, model: str, field: str, prepared: PreparedChat, timed: Observed) -> None:
        self.model, self.field, self.prepared = model, field, prepared
        self.timed = timed  # the stream, timed by the metrics (its first token's time)
        self.started = time.monotonic()
        self.logprobs: list[dict[str, Any]] | None = (
            None if prepared.generation.logprobs is None else []
        )  # tokens not sent yet (their text held back by a parser)

    def part(self, content: str, thinking: str = "", calls: Any = ()) -> dict[str, Any]:
        body: dict[str, Any]
        if self.field == "message":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = list(calls)
            body = {"message": message}
        else:
            body = {"response": content}
            if thinking:
                body["thinking"] = thinking
        return {"model": self.model, "created_at": _now(), **body, "done": False}

    def done(self, reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The last object's fields: why it ended, counts and durations (ns)."""
        end = time.monotonic()
        first = self.timed.first_token_at or end
        return {
            "done": True,
            "done_reason": "length" if reason == "length" else "stop",
            "total_duration": _ns(end - self.started),
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": _ns(first - self.started),
            "eval_count": completion_tokens,
            "eval_duration": _ns(end - first),
        }

    async def stream(self, stream: EventSource, interval_s: float) -> AsyncIterator[bytes]:
        output = self.prepared.output_for()
        async for event in stream.events(interval_s):
            if isinstance(event, TokenEvent):
                if self.logprobs is not None:
                    self.logprobs += [_logprob(entry) for entry in event.logprobs]
                line = self._line(output.feed(event.text))
                if line:
                    yield line
            elif isinstance(event, FinishEvent):
                line = self._line(output.finish())
                if line:
                    yield line
                calls = _calls(output)
                if calls:
                    yield _json_line(self.part("", calls=calls))
                usage = event.usage
                last = self._with_logprobs(self.part("")) | self.done(
                    event.reason, usage.prompt_tokens, usage.completion_tokens
                )
                yield _json_line(last)
                return
            elif isinstance(event, ErrorEvent):
                logger.error("%s failed in stream: %s", self.prepared.request_id, event.error)
                yield _json_line(_error(from_engine_error(event.error)))
                return

    def _line(self, deltas: list[dict[str, Any]]) -> bytes:
        content = "".join(d.get("content") or "" for d in deltas)
        thinking = "".join(d.get("reasoning_content") or "" for d in deltas)
        if not content and not thinking:
            return b""
        return _json_line(self._with_logprobs(self.part(content, thinking)))

    def _with_logprobs(self, part: dict[str, Any]) -> dict[str, Any]:
        """`part` with the logprobs of the tokens not sent yet, when they were asked for."""
        if self.logprobs is None:
            return part
        sent, self.logprobs = self.logprobs, []
        return part | {"logprobs": sent}


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _json_line(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


@router.post("/api/embed", openapi_extra=documented_body(EmbedRequest))
async def embed(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    body = validate(EmbedRequest, await read_json_object(request, settings.max_body_bytes))
    if not body.input:
        await _load_embedder(pool, body.model)
        return JSONResponse({"model": body.model, "embeddings": []})
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    started = time.monotonic_ns()
    vectors = await _vectors(request, pool, body.model, texts, body.truncate, body.dimensions)
    if isinstance(vectors, Response):
        return vectors
    embeddings, tokens = vectors
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": embeddings.tolist(),
            "total_duration": time.monotonic_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
    )


@router.post("/api/embeddings", openapi_extra=documented_body(LegacyEmbeddingsRequest))
async def legacy_embeddings(request: Request, settings: SettingsDep, pool: PoolDep) -> Response:
    raw = await read_json_object(request, settings.max_body_bytes)
    body = validate(LegacyEmbeddingsRequest, raw)
    if not body.prompt:
        await _load_embedder(pool, body.model)
        return JSONResponse({"embedding": []})
    vectors = await _vectors(request, pool, body.model, [body.prompt], True, None)
    if isinstance(vectors, Response):
        return vectors
    return JSONResponse({"embedding": vectors[0][0].tolist()})


async def _load_embedder(pool: EnginePool, model: str) -> None:
    """What Ollama does with an embedding request that has nothing to embed: load the model
    (an embedder; another kind is still refused)."""
    embedder_info(await pool.acquire(model, EMBEDDING), model)


async def _vectors(
    request: Request,
    pool: EnginePool,
    model: str,
    texts: list[str],
    cut: bool,
    dimensions: int | None,
) -> tuple[np.ndarray, int] | Response:
    """The texts' vectors (cut to `dimensions`) and their token count, or the error response."""
    for index, text in enumerate(texts):
        if not text:
            raise APIError(400, f"input[{index}] is empty", param="input")
    engine = await pool.acquire(model, EMBEDDING)
    info = embedder_info(engine, model)
    check_dimensions(info, dimensions)
    inputs = await token_inputs(engine, info, list[str | list[int]](texts), cut)
    request_id = f"ollama-embd-{uuid.uuid4().hex}"
    logs.request_id.set(request_id)
    outcome = await run(request, engine, EmbeddingRequest(request_id, inputs), _error)
    if isinstance(outcome, Response):
        return outcome
    return shorten(outcome.vectors, dimensions, info.normalized), outcome.prompt_tokens
