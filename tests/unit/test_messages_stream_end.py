"""A Messages stream ends with its last event (`message_stop`, or `error`) without waiting for
the engine stream's own end: waiting, a keep-alive `ping` that came due went out after
`message_stop` (seen in full-suite runs on a loaded machine)."""

from __future__ import annotations

import asyncio
import threading

import httpx

from engines.bridge import RequestStream
from engines.pool import EnginePool
from engines.types import GenerationRequest
from server.app import create_app
from server.settings import Settings
from tests.fakes import FakeEngine
from tests.servers import serve
from tests.unit.test_messages_contract import URL, messages_body, sse_events


class LingeringEngine(FakeEngine):
    """Its streams stay open after their FinishEvent (they wait for a choice that never ends)."""

    def submit(self, request: GenerationRequest) -> RequestStream:
        stream = RequestStream(request.request_id, choices=request.n + 1)
        self.requests.append(request)
        with self._lock:
            self._active += request.n
        threading.Thread(target=self._generate, args=(request, stream), daemon=True).start()
        return stream


async def test_the_stream_ends_at_message_stop() -> None:
    settings = Settings(keepalive_interval_s=0.05, drain_timeout_s=1)
    app = create_app(settings, EnginePool([LingeringEngine()]))
    with serve(app) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            # Bounded: a stream that waited for the engine stream's end would never end (its
            # pings keep every read inside the client's timeout).
            request = http.post(URL, json=messages_body(stream=True))
            response = await asyncio.wait_for(request, timeout=10)
    names = [name for name, _ in sse_events(response.text)]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
