"""The status page (`GET /`) and its data (`GET /status`).

The page is one static HTML file with inline CSS and JavaScript (no build step, no external
assets); it polls `/status` every second. Both are open without an API key, like `/health`:
they show what /health shows (models, counters) plus versions and copy-paste snippets.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from server.deps import PoolDep
from server.runtime import runtime

router = APIRouter()
PAGE = Path(__file__).resolve().parent.parent / "static" / "status.html"
STARTED = time.time()


@lru_cache(maxsize=1)
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def status_page() -> HTMLResponse:
    return HTMLResponse(_page())


@router.get("/status")
async def status(pool: PoolDep) -> dict[str, Any]:
    stats = pool.stats()
    models = []
    for model in pool.models():
        engine = stats.get(model.name)
        models.append(
            {
                "id": model.name,
                "kind": model.kind,
                "loaded": model.loaded,
                "status": model.status,  # "downloading 42%" while a hub model is fetched
                **({} if engine is None else asdict(engine)),
            }
        )
    return {
        "runtime": asdict(runtime()),
        "uptime_s": round(time.time() - STARTED, 1),
        "draining": pool.draining,
        "active": pool.active,
        "tokens_generated": sum(s.tokens_generated for s in stats.values()),
        "models": models,
    }
