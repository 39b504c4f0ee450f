"""Stored responses, for `previous_response_id`, `item_reference` input items and
`GET`/`DELETE /v1/responses/{id}`.

One SQLite file under MLXD_HOME. Each row holds a response object and its whole conversation
(input items then output items), so a follow-up request can continue it without the client
resending anything.

Invariants:
- Bounded: rows older than `ttl_s` are never returned and are deleted on the next write; past
  `max_responses` rows the oldest go first.
- SQLite runs in worker threads (no MLX there), one short-lived connection per call, so
  concurrent requests need no shared connection or lock; the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TTL_S = 30 * 24 * 3600.0  # OpenAI keeps stored responses for 30 days
DEFAULT_MAX_RESPONSES = 1000

_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    response TEXT NOT NULL,
    conversation TEXT NOT NULL
)"""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]


class ResponseStore:
    def __init__(
        self,
        path: Path,
        ttl_s: float = DEFAULT_TTL_S,
        max_responses: int = DEFAULT_MAX_RESPONSES,
    ) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.max_responses = max_responses

    async def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._put, response, conversation)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, response_id)

    async def items(self, item_ids: set[str]) -> dict[str, dict[str, Any]]:
        """The stored items (input or output of any stored response) with these ids, by id; an
        id no stored conversation holds is left out. Where several conversations hold one (a
        continued conversation repeats its history), the newest row's copy is given."""
        return await asyncio.to_thread(self._items, item_ids)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10)
        connection.execute(_SCHEMA)
        return connection

    def _put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                (response["id"], now, json.dumps(response), json.dumps(conversation)),
            )
            db.execute("DELETE FROM responses WHERE created < ?", (now - self.ttl_s,))
            db.execute(
                "DELETE FROM responses WHERE id NOT IN "
                "(SELECT id FROM responses ORDER BY created DESC LIMIT ?)",
                (self.max_responses,),
            )
        db.close()

    def _get(self, response_id: str) -> StoredResponse | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT response, conversation FROM responses WHERE id = ? AND created >= ?",
                (response_id, time.time() - self.ttl_s),
            ).fetchone()
        db.close()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def _items(self, item_ids: set[str]) -> dict[str, dict[str, Any]]:
        if not item_ids:
            return {}
        with self._connect() as db:
            # The ids go in as one JSON array: any number of them, no SQL variable limit.
            rows = db.execute(
                "SELECT item.value FROM responses, json_each(responses.conversation) AS item "
                "WHERE responses.created >= ? AND json_extract(item.value, '$.id') IN "
                "(SELECT value FROM json_each(?)) ORDER BY responses.created ASC",
                (time.time() - self.ttl_s, json.dumps(sorted(item_ids))),
            ).fetchall()
        db.close()
        found = (json.loads(value) for (value,) in rows)
        return {item["id"]: item for item in found}  # ascending: the newest copy wins

    def _delete(self, response_id: str) -> bool:
        with self._connect() as db:
            deleted = db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount
        db.close()
        return bool(deleted)
