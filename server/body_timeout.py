"""Time limits on reading a request body (uvicorn has none: a client that sends its headers and
then trickles, or never sends, its body would hold a connection slot and a task for ever).

`BodyTimeout` wraps `receive` while the body is incomplete: the next chunk must come within
`idle_s`, and the whole body within `total_s` of the request's start. A body too slow either way
raises `APIError(408)` from `receive` — inside the route, where the body is read
(`server.body.read_body`) — so the exception handlers answer it in the route's own shape (OpenAI's,
or Anthropic's on /v1/messages) with `Connection: close`, and uvicorn closes the connection
(its unread rest of a body could not be told apart from a next request).

Invariants: once the last body chunk (or a disconnect) has been received, `receive` is the
server's own again, without a limit — routes wait on it for a disconnect for as long as they
stream; requests that never read their body (GET) are not timed; a body that keeps coming at
any pace within both limits is read to the end.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError

logger = logging.getLogger(__name__)


class BodyTimeout:
    """ASGI middleware: a request body that stalls for `idle_s`, or takes longer than `total_s`
    in all, is a 408."""

    def __init__(self, app: ASGIApp, *, idle_s: float, total_s: float) -> None:
        self.app = app
        self.idle_s = idle_s
        self.total_s = total_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_s  # the headers have arrived: the body is next
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            left = deadline - loop.time()
            try:
                async with asyncio.timeout(min(self.idle_s, left)):
                    message = await receive()
            except TimeoutError:
                raise self._timed_out(idle=self.idle_s < left) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)

    def _timed_out(self, idle: bool) -> APIError:
        if idle:
            message = f"No request body data arrived for {self.idle_s:g} s"
            setting = "MLXD_BODY_TIMEOUT_S"
        else:
            message = f"The request body took longer than {self.total_s:g} s to arrive"
            setting = "MLXD_BODY_DEADLINE_S"
        logger.info("answered 408: %s (%s)", message, setting)
        return APIError(408, message, code="body_timeout", headers={"Connection": "close"})
