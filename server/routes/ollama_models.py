"""Ollama's model management (`/api/…`): pull and delete on mlxd's hub path (server/hub_pulls.py);
copy, create, push and blobs answered 501 with Ollama's `{"error"}` saying what to do instead.

- `POST /api/pull`: a Hugging Face repo (`ORG/NAME`, `ORG/NAME:QUANT`, `hf.co/…`). Streamed
  (Ollama's default) as NDJSON progress objects: "pulling manifest", per file "pulling FILE"
  with `digest`, `total`, `completed`, then "verifying sha256 digest", "writing manifest",
  "success"; with `stream: false`, one `{"status": "success"}`. The response starts once the
  hub has listed the repo, so an unknown repo or an unreachable hub is a status (404, 502) even
  streamed; a failure after that is a last `{"error": …}` line. The model is served (and in
  `/api/tags`) from then on.
- `DELETE /api/delete`: a model mlxd pulled, not named by its configuration: 200 with no body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.body import read_json_object, validate
from server.deps import HubPullsDep, SettingsDep
from server.errors import APIError
from server.hub_pulls import Line, PullLines, hub_reference
from server.schemas.common import documented_body
from server.schemas.ollama import NamedModel, PullRequest

router = APIRouter()

NDJSON = "application/x-ndjson"


@router.post("/api/pull", openapi_extra=documented_body(PullRequest))
async def pull(request: Request, settings: SettingsDep, pulls: HubPullsDep) -> Response:
    body = validate(PullRequest, await read_json_object(request, settings.max_body_bytes))
    lines = await pulls.start(hub_reference(body.model_name()))
    first = await lines.get()  # the repo's listing read (or the pull's end)
    if isinstance(first, APIError):
        raise first
    if body.stream:
        return StreamingResponse(_streamed(first, lines), media_type=NDJSON)
    line: Line | APIError | None = first
    while line is not None:
        if isinstance(line, APIError):
            raise line
        line = await lines.get()
    return JSONResponse({"status": "success"})


async def _streamed(first: Line | None, lines: PullLines) -> AsyncIterator[bytes]:
    line: Line | APIError | None = first
    while line is not None:
        if isinstance(line, APIError):
            yield _json_line({"error": line.message})
            return
        yield _json_line(line)
        line = await lines.get()


def _json_line(payload: Line) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


@router.delete("/api/delete", openapi_extra=documented_body(NamedModel))
async def delete(request: Request, settings: SettingsDep, pulls: HubPullsDep) -> Response:
    body = validate(NamedModel, await read_json_object(request, settings.max_body_bytes))
    name = body.model_name()
    if not name:
        raise APIError(400, "model is required", param="model")
    await pulls.delete(name)
    return Response(status_code=200)  # Ollama answers a deletion with no body


# What mlxd offers instead of each Ollama route it does not serve.
_UNSUPPORTED = {
    "/api/copy": "mlxd does not copy models: serve one under more names with `aliases` in "
    "the models file",
    "/api/create": "mlxd does not create models from Modelfiles: pull one from the Hugging Face "
    "hub (/api/pull, `mlxd pull`) or import one (`mlxd import`); a models-file entry sets its "
    "chat template and sampling defaults",
    "/api/push": "mlxd does not push models: it pulls them from the Hugging Face hub",
    "/api/blobs": "mlxd does not take model files over the API: pull models from the Hugging "
    "Face hub (/api/pull, `mlxd pull`) or import them (`mlxd import`)",
}


def _not_served(path: str) -> None:
    raise APIError(501, _UNSUPPORTED[path], "invalid_request_error", code="not_supported")


# Left out of the OpenAPI document: they answer nothing but 501.
@router.post("/api/copy", include_in_schema=False)
async def copy() -> None:
    _not_served("/api/copy")


@router.post("/api/create", include_in_schema=False)
async def create() -> None:
    _not_served("/api/create")


@router.post("/api/push", include_in_schema=False)
async def push() -> None:
    _not_served("/api/push")


# Ollama's clients ask with HEAD whether the server has a blob (GET answers it, server/head.py),
# then upload it with POST.
@router.api_route("/api/blobs/{digest}", methods=["GET", "POST"], include_in_schema=False)
async def blobs(digest: str) -> None:
    _not_served("/api/blobs")
