"""A start-up failure is logged as one line, not as Starlette's traceback.

Starlette answers an exception in the app's lifespan with `lifespan.startup.failed` carrying the
whole formatted traceback, which uvicorn logs as it is: some forty lines of its own, Starlette's
and asyncio's frames before `mlxd serve` exits with status 3. What fails there is loading the
models (engines/pool.py: "no model could be loaded", each model's reason named, each engine's own
load failure logged where it happened), and the exception's message already says so.

Invariant: only a start-up failure's message changes, to its traceback's last line (the
exception's type and message); other lifespan messages and all HTTP traffic pass as they are.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class OneLineStartupFailure:
    """ASGI middleware: `lifespan.startup.failed` says what failed in one line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def shortened(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and message.get("message"):
                lines = str(message["message"]).strip().splitlines()
                message = {**message, "message": lines[-1]}
            await send(message)

        await self.app(scope, receive, shortened)
