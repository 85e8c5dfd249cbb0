"""The SQLite store: one writer connection (WAL, BEGIN IMMEDIATE, serialized), one reader, named SQL.

Every state change goes through `Store.write()`, which holds the writer for one transaction and
shields it from cancellation, so a cancelled caller never leaves a half-known state.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from engine import models

RUN_COLUMNS = (
    "id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, metadata, env, status, "
    "output, stderr, output_truncated, stderr_truncated, stdout_offset, stderr_offset, exit_code, "
    "failure_kind, error, ephemeral, cancel_requested, agent_run_group_id, orchestration_role, "
    "parent_agent_run_id, profile_id, idempotency_key, request_hash, last_event_seq, started_at, "
    "finished_at, created_at, updated_at, created_by"
)

SQL = {
    "device_insert": (
        "INSERT INTO devices (id, kind, name, image, cpus, memory_mb, pids_limit, network, env, metadata, "
        "ephemeral, run_id, created_at, updated_at, created_by) "
        "VALUES (:id, :kind, :name, :image, :cpus, :memory_mb, :pids_limit, :network, :env, :metadata, "
        ":ephemeral, :run_id, :created_at, :updated_at, :created_by)"
    ),
    "device_get": "SELECT * FROM devices WHERE id = ? AND deleted_at IS NULL",
    "device_list": "SELECT * FROM devices WHERE deleted_at IS NULL AND ephemeral = 0 ORDER BY created_at, id",
    "device_list_by_creator": (
        "SELECT * FROM devices WHERE deleted_at IS NULL AND ephemeral = 0 AND created_by = ? ORDER BY created_at, id"
    ),
    "device_list_live": "SELECT * FROM devices WHERE deleted_at IS NULL",
    "device_delete": "UPDATE devices SET deleted_at = :now, updated_at = :now WHERE id = :id AND deleted_at IS NULL",
    "run_insert": (
        "INSERT INTO agent_runs (id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, "
        "metadata, env, status, ephemeral, idempotency_key, request_hash, created_at, updated_at, created_by) "
        "VALUES (:id, :target_kind, :target_id, :provider, :prompt, :command, :model, :cwd, :timeout, "
        ":metadata, :env, :status, :ephemeral, :idempotency_key, :request_hash, :created_at, :updated_at, "
        ":created_by)"
    ),
    "run_get": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE id = ?",
    "run_by_idempotency_key": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE created_by = ? AND idempotency_key = ?",
    "runs_unfinished": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE status IN ('queued', 'running') ORDER BY created_at",
    "runs_active_on_target": "SELECT id FROM agent_runs WHERE target_id = ? AND status IN ('queued', 'running')",
    "run_bump_seq": "UPDATE agent_runs SET last_event_seq = last_event_seq + 1 WHERE id = ? RETURNING last_event_seq",
    "event_insert": (
        "INSERT INTO run_events (id, run_id, sequence, type, message, payload, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "events_after": (
        "SELECT e.id, e.run_id, r.agent_run_group_id, e.sequence, e.type, e.message, e.payload, e.created_at "
        "FROM run_events e JOIN agent_runs r ON r.id = e.run_id "
        "WHERE e.run_id = ? AND e.sequence > ? ORDER BY e.sequence LIMIT ?"
    ),
    "artifact_upsert": (
        "INSERT OR REPLACE INTO artifacts (run_id, path, size, sha256, stored_as, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "artifacts_of_run": "SELECT * FROM artifacts WHERE run_id = ? ORDER BY path",
    "artifact_get": "SELECT * FROM artifacts WHERE run_id = ? AND path = ?",
}

# Columns a run update may set (a guard against building SQL from arbitrary keys).
RUN_UPDATABLE = frozenset(
    "status output stderr output_truncated stderr_truncated stdout_offset stderr_offset exit_code "
    "failure_kind error cancel_requested started_at finished_at target_id".split()
)


def ts(dt: datetime) -> str:
    """One sortable text form for every timestamp."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def migrations() -> list[tuple[int, str]]:
    """The numbered migrations shipped in engine/migrations, in order."""
    found = []
    for item in resources.files("engine.migrations").iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


class Tx:
    """One open write transaction."""

    def __init__(self, conn: aiosqlite.Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now

    async def insert_device(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["device_insert"], _encode(row))

    async def delete_device(self, device_id: str) -> None:
        await self.conn.execute(SQL["device_delete"], {"id": device_id, "now": ts(self.now)})

    async def insert_run(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["run_insert"], _encode(row))

    async def update_run(self, run_id: str, **fields: Any) -> None:
        bad = set(fields) - RUN_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {bad}")
        fields["updated_at"] = self.now
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        await self.conn.execute(f"UPDATE agent_runs SET {sets} WHERE id = :id", _encode({**fields, "id": run_id}))

    async def append_events(self, run_id: str, events: Iterable[tuple[str, str, dict[str, Any]]]) -> list[int]:
        """Append events with the run's next sequence numbers; returns them."""
        seqs = []
        for type_, message, payload in events:
            ((seq,),) = await self.conn.execute_fetchall(SQL["run_bump_seq"], (run_id,))  # drained: no open statement
            await self.conn.execute(
                SQL["event_insert"],
                (_new_id("ev"), run_id, seq, type_, message, json.dumps(payload), ts(self.now)),
            )
            seqs.append(seq)
        return seqs

    async def upsert_artifact(self, run_id: str, path: str, size: int, sha256: str, stored_as: str) -> None:
        await self.conn.execute(SQL["artifact_upsert"], (run_id, path, size, sha256, stored_as, ts(self.now)))


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await _connect(self.path)
        await self._writer.execute("PRAGMA journal_mode = WAL")
        await self.migrate()
        self._reader = await _connect(self.path)

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()

    async def migrate(self) -> int:
        """Apply every migration newer than the database's user_version, each in its own transaction."""
        assert self._writer is not None
        cur = await self._writer.execute("PRAGMA user_version")
        (current,) = await cur.fetchone()  # type: ignore[misc]
        # Foreign keys off while tables are rebuilt (SQLite's way to change a table), checked after.
        await self._writer.execute("PRAGMA foreign_keys = OFF")
        try:
            for version, script in migrations():
                if version <= current:
                    continue
                await self._writer.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
                current = version
            broken = await self._writer.execute_fetchall("PRAGMA foreign_key_check")
            if broken:
                raise RuntimeError(f"migrations left broken references: {list(broken)[:5]}")
        finally:
            await self._writer.execute("PRAGMA foreign_keys = ON")
        return current

    @asynccontextmanager
    async def write(self, now: datetime) -> AsyncIterator[Tx]:
        """One serialized write transaction, shielded from cancellation once begun."""
        assert self._writer is not None
        async with self._lock:
            with anyio.CancelScope(shield=True):
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(self._writer, now)
                except BaseException:
                    await self._writer.rollback()
                    raise
                else:
                    await self._writer.commit()

    async def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """One query, executed and drained in a single step on the reader's thread. Two reads must not
        interleave on the connection: the second would join the first's snapshot and could miss a
        commit made in between (read-your-writes would break)."""
        assert self._reader is not None
        return [dict(r) for r in await self._reader.execute_fetchall(sql, params)]

    async def _one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    # ------------------------------------------------------------ devices

    async def device(self, device_id: str) -> dict[str, Any] | None:
        return _decode(await self._one(SQL["device_get"], (device_id,)))

    async def devices(self, *, include_ephemeral: bool = False, created_by: str | None = None) -> list[dict[str, Any]]:
        if created_by is not None:
            return [_decode(r) for r in await self._all(SQL["device_list_by_creator"], (created_by,))]  # type: ignore[misc]
        sql = SQL["device_list_live"] if include_ephemeral else SQL["device_list"]
        return [_decode(r) for r in await self._all(sql)]  # type: ignore[misc]

    # ------------------------------------------------------------ runs

    async def run(self, run_id: str) -> dict[str, Any] | None:
        return _decode(await self._one(SQL["run_get"], (run_id,)))

    async def run_by_idempotency_key(self, created_by: str, key: str) -> dict[str, Any] | None:
        return _decode(await self._one(SQL["run_by_idempotency_key"], (created_by, key)))

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        return [_decode(r) for r in await self._all(SQL["runs_unfinished"])]  # type: ignore[misc]

    async def active_runs_on(self, target_id: str) -> list[str]:
        return [r["id"] for r in await self._all(SQL["runs_active_on_target"], (target_id,))]

    async def runs(self, q: models.RunListQuery, *, created_by: str | None = None) -> list[dict[str, Any]]:
        """Newest first, keyset-paged by (created_at, id); fetches one extra row to know if more follow."""
        where, params = [], []
        if created_by is not None:
            where.append("created_by = ?")
            params.append(created_by)
        if q.target_id:
            where.append("target_id = ?")
            params.append(q.target_id)
        if q.status:
            where.append("status = ?")
            params.append(q.status.value)
        if q.cursor:
            where.append("(created_at, id) < (SELECT created_at, id FROM agent_runs WHERE id = ?)")
            params.append(q.cursor)
        sql = f"SELECT {RUN_COLUMNS} FROM agent_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(q.limit + 1)
        return [_decode(r) for r in await self._all(sql, params)]  # type: ignore[misc]

    async def events(self, run_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        return [_decode(r) for r in await self._all(SQL["events_after"], (run_id, after, limit))]  # type: ignore[misc]

    async def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return await self._all(SQL["artifacts_of_run"], (run_id,))

    async def artifact(self, run_id: str, path: str) -> dict[str, Any] | None:
        return await self._one(SQL["artifact_get"], (run_id, path))

    async def schema(self) -> dict[str, str]:
        """Name -> normalized SQL of every table and index (for the migration test)."""
        rows = await self._all("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        return {r["name"]: " ".join(r["sql"].split()) for r in rows}


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA foreign_keys = ON")
    # WAL + NORMAL: a commit survives a crash or kill of the daemon (what we promise); only a power
    # loss may roll back the last commits. FULL would fsync every commit for that extra case.
    await conn.execute("PRAGMA synchronous = NORMAL")
    return conn


_JSON_COLUMNS = ("env", "metadata", "payload")
_BOOL_COLUMNS = ("network", "ephemeral", "output_truncated", "stderr_truncated")


def _encode(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = ts(v)
        elif k in _JSON_COLUMNS:
            v = json.dumps(v if v is not None else {})
        elif isinstance(v, bool):
            v = int(v)
        out[k] = v
    return out


def _decode(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    for k in _JSON_COLUMNS:
        if k in row and isinstance(row[k], str):
            row[k] = json.loads(row[k])
    for k in _BOOL_COLUMNS:
        if k in row and row[k] is not None:
            row[k] = bool(row[k])
    return row


def _new_id(prefix: str) -> str:
    import secrets

    return f"{prefix}_{secrets.token_hex(10)}"


new_id = _new_id
