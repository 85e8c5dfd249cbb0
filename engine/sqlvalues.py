"""How values go into SQLite (one sortable text form for timestamps, JSON columns, ids), and what the
store's per-area mixins (each area's `repository`) may use of the
transaction and the store they are mixed into."""

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
    """What a write mixin uses of `store.Tx`: the writer, the transaction's time, its topics, and its
    compare-and-set."""

    conn: Any
    """The writer (`store.InlineConnection`)."""
    now: datetime
    stamp: str
    """`now` as stored."""

    def touch(self, topic: str) -> None:
        raise NotImplementedError

    async def cas(self, sql: str, params: Any, *touched: str) -> dict[str, Any] | None:
        raise NotImplementedError

    async def _cas(self, table: str, allowed: frozenset[str], id_: str, expected: list[str],
                   fields: dict[str, Any], topic: str) -> bool:
        raise NotImplementedError


class Reading:
    """What a read mixin uses of `store.Store`: one query on the reader, all rows or the first."""

    async def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        raise NotImplementedError
