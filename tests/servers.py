"""Run an app on a real uvicorn bound to 127.0.0.1:0, in a thread, for socket-level tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from server.app import uvicorn_options
from server.drain import DrainingServer


@contextmanager
def serve(app: FastAPI, startup_timeout_s: float = 120.0) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) while the app is served; stop it after."""
    with running(app, startup_timeout_s) as server:
        yield url(server)


@contextmanager
def running(app: FastAPI, startup_timeout_s: float = 120.0) -> Iterator[uvicorn.Server]:
    """Yield the started server (as `mlxd serve` runs it: setting `should_exit` starts its
    shutdown, as SIGTERM does); stop it after."""
    options = uvicorn_options(app.state.settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **options
    )
    server = DrainingServer(config, app.state.drain)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def url(server: uvicorn.Server) -> str:
    """The base URL (http://127.0.0.1:PORT) of a server `running` yielded."""
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` until true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        await asyncio.sleep(0.01)
    return True


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
