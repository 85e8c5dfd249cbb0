"""How values go into SQLite (one sortable text form for timestamps, JSON columns, ids), and the two
bases of each area's repository (its `repository` module): its writes over an open transaction, its
reads over the store."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

JSON_COLUMNS = ("env", "metadata", "payload", "secrets", "permissions", "spawn_budget", "applies_to", "connectors",
                "resources", "policy")
NULLABLE_JSON = ("tools", "profile_snapshot", "limits")
"""JSON columns where NULL means something (no bundle list; no profile; limits not yet recorded)."""


def ts(dt: datetime) -> str:
    """One sortable text form for every timestamp: strftime's "%Y-%m-%dT%H:%M:%S.%fZ", at a tenth of its
    cost (a claim+complete pair formats a dozen)."""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def encode(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as SQLite takes them: timestamps as text, JSON columns as JSON, booleans as 0/1."""
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = ts(v)
        elif k in JSON_COLUMNS:
            v = json.dumps(v if v is not None else {})
        elif k in NULLABLE_JSON:
            v = None if v is None else json.dumps(v)
        elif isinstance(v, bool):
            v = int(v)
        out[k] = v
    return out


class Connected:
    """An area's writes in one open transaction (`store.Tx`, where it is `tx.<area>`): its statements go
    to the transaction's connection, at its time, waking its topics once it commits."""

    def __init__(self, tx: Any) -> None:
        self.tx = tx
        self.conn = tx.conn
        """The writer (`store.InlineConnection`, or PostgreSQL's)."""
        self.now: datetime = tx.now
        self.stamp: str = tx.stamp
        """`now` as stored."""

    def touch(self, topic: str) -> None:
        self.tx.touch(topic)

    async def cas(self, sql: str, params: Any, *touched: str) -> dict[str, Any] | None:
        return await self.tx.cas(sql, params, *touched)

    async def _cas(self, table: str, allowed: frozenset[str], id_: str, expected: list[str],
                   fields: dict[str, Any], topic: str) -> bool:
        return await self.tx._cas(table, allowed, id_, expected, fields, topic)


class Reading:
    """An area's reads (`store.Store`, where it is `store.<area>`): one query on the reader, all rows or
    the first."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return await self._store._all(sql, params)

    async def _one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        return await self._store._one(sql, params)
