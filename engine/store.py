"""The SQLite store: one writer connection (WAL, BEGIN IMMEDIATE, serialized), one reader, named SQL.

Every state change goes through `Store.write()`, which holds the writer for one transaction and
shields it from cancellation, so a cancelled caller never leaves a half-known state. A transaction
notes the topics it touches; they are published to their waiters once it has committed. Reads
return typed records (`engine.records`); driver errors become the engine's (`Conflict`, `Busy`).

The writer runs on the event loop's own thread (`InlineConnection`): a write transaction here is a
handful of small statements on a WAL database whose commits do not fsync, each a few microseconds,
where a hop to a connection thread per statement costs ten times that and capped the engine at a
few hundred runs a second. What could stall the loop is kept off it: a busy database is waited for
with `anyio.sleep`, not SQLite's busy handler, and the WAL is checkpointed from the reader's thread.
Reads, which may carry a run's whole output, stay on the reader's own thread (aiosqlite).

This module is the core: the connections, the transaction, migrations, events and their streams, and
the one compare-and-set. Each area keeps its SQL and operations in its package's `repository` module
(runs, devices, sessions, souls, tasks, channels, profiles, groups, quotas, approvals, daemons): its
reads are `store.<area>` (`store.tasks.task(id)`), its writes `tx.<area>` in a transaction
(`tx.tasks.claim_task(...)`), so each line says which area it touches.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from engine import errors, topics
from engine.approvals import repository as approvals
from engine.channels import repository as channels
from engine.daemons import repository as daemons
from engine.devices import repository as devices
from engine.groups import repository as groups
from engine.profiles import repository as profiles
from engine.quotas import repository as quotas
from engine.runs import repository as runs
from engine.sessions import repository as sessions
from engine.souls import repository as souls
from engine.tasks import repository as tasks
from engine.records import EventRow
from engine.sqlvalues import new_id, ts

__all__ = ["SQL", "Store", "Tx", "migrations", "new_id", "open_store", "ts"]


SQL = {
    "stream_bump": (
        "INSERT INTO streams (name, last_sequence) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET last_sequence = streams.last_sequence + ? RETURNING last_sequence"
    ),
    "event_insert": (
        "INSERT INTO events (id, run_id, group_id, type, message, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "stream_event_insert": "INSERT INTO stream_events (stream, sequence, event_id) VALUES (?, ?, ?)",
    "stream_after": (
        "SELECT e.id, e.run_id, e.group_id, s.sequence, e.type, e.message, e.payload, e.created_at "
        "FROM stream_events s JOIN events e ON e.id = s.event_id "
        "WHERE s.stream = ? AND s.sequence > ? ORDER BY s.sequence LIMIT ?"
    ),
    # The same page cut where its events' payloads and messages pass a byte budget (always the first).
    "stream_after_within": (
        "SELECT id, run_id, group_id, sequence, type, message, payload, created_at FROM (SELECT x.*, "
        "sum(length(CAST(x.payload AS BLOB)) + length(CAST(x.message AS BLOB))) OVER (ORDER BY x.sequence) AS running, "
        "row_number() OVER (ORDER BY x.sequence) AS n FROM (SELECT e.id, e.run_id, e.group_id, s.sequence, e.type, "
        "e.message, e.payload, e.created_at FROM stream_events s JOIN events e ON e.id = s.event_id "
        "WHERE s.stream = ? AND s.sequence > ? ORDER BY s.sequence LIMIT ?) x) w WHERE running <= ? OR n = 1 "
        "ORDER BY sequence"
    ),
    "stream_last": "SELECT last_sequence FROM streams WHERE name = ?",
}


AREAS = (runs, devices, sessions, souls, groups, tasks, channels, profiles, quotas, approvals, daemons)
for _area in AREAS:
    assert not set(_area.SQL) & set(SQL), f"{_area.__name__} names a query another area names"
    SQL.update(_area.SQL)
"""Every named query (the areas' too): a test compiles each against the migrated schema."""


def migrations() -> list[tuple[int, str]]:
    """The numbered migrations shipped in engine/migrations, in order."""
    found = []
    for item in resources.files("engine.migrations").iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


Draft = tuple[str, str, dict[str, Any]]
"""An event to append: type, message, payload."""


BUSY_WAIT_SECONDS = 5.0
"""How long a write waits for another process (a second daemon, a manual `sqlite3`) to let go."""
CHECKPOINT_EVERY = 1000
"""Commits between two WAL checkpoints (SQLite's own default, run here off the loop's thread)."""


class InlineCursor:
    """The part of a cursor the store uses, awaitable like aiosqlite's."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self.rowcount = cursor.rowcount
        self._cursor = cursor

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class InlineConnection:
    """A sqlite3 connection used directly on the event loop's thread, with aiosqlite's async surface
    (so a transaction body reads the same whichever connection it runs on)."""

    def __init__(self, path: Path) -> None:
        self.raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.raw.row_factory = sqlite3.Row

    async def execute(self, sql: str, params: Any = ()) -> InlineCursor:
        return InlineCursor(self.raw.execute(sql, params))

    async def executemany(self, sql: str, rows: Iterable[Any]) -> InlineCursor:
        return InlineCursor(self.raw.executemany(sql, rows))

    async def execute_fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        return self.raw.execute(sql, params).fetchall()

    async def executescript(self, script: str) -> None:
        self.raw.executescript(script)

    async def hold(self, key: str) -> None:
        """Nothing to lock: this connection is the one writer."""

    async def begin(self, alone: bool = True) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write lock without blocking the loop (every
        transaction is alone on SQLite)."""
        delay, waited = 0.001, 0.0
        while True:
            try:
                self.raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or waited >= BUSY_WAIT_SECONDS:
                    raise
            await anyio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.1)

    async def commit(self) -> None:
        self.raw.execute("COMMIT")

    async def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    async def close(self) -> None:
        self.raw.close()


class Tx:
    """One open write transaction; `touched` are the topics to wake once it commits."""

    def __init__(self, conn: Any, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.stamp = ts(now)
        """`now` as stored (formatted once per transaction)."""
        self.touched: set[str] = set()
        # each area's writes in this transaction
        self.runs = runs.RunWrites(self)
        self.devices = devices.DeviceWrites(self)
        self.sessions = sessions.SessionWrites(self)
        self.souls = souls.SoulWrites(self)
        self.groups = groups.GroupWrites(self)
        self.tasks = tasks.TaskWrites(self)
        self.channels = channels.ChannelWrites(self)
        self.profiles = profiles.ProfileWrites(self)
        self.quotas = quotas.QuotaWrites(self)
        self.approvals = approvals.ApprovalWrites(self)
        self.daemons = daemons.DaemonWrites(self)

    def touch(self, topic: str) -> None:
        self.touched.add(topic)

    async def hold(self, key: str) -> None:
        """Lock `key` (a name, such as a session's id) until this transaction ends, for what it reads and
        then relies on that no row of its own stands for (PostgreSQL; SQLite's one writer holds all)."""
        await self.conn.hold(key)

    async def append_events(self, run_id: str | None, events: Iterable[Draft], *,
                            group_id: str | None = None) -> list[int]:
        """Append events to the run's stream and, when it has one, its group's: each stream gets its
        next gapless sequences in this transaction (one counter bump per stream for the whole batch).
        Returns the run-stream sequences."""
        events = list(events)
        if not events:
            return []
        streams = ([topics.run(run_id)] if run_id else []) + ([topics.group(group_id)] if group_id else [])
        ids = [new_id("ev") for _ in events]
        await self.conn.executemany(SQL["event_insert"], [
            (event_id, run_id, group_id, type_, message, json.dumps(payload), self.stamp)
            for event_id, (type_, message, payload) in zip(ids, events, strict=True)])
        first_stream_seqs: list[int] = []
        for i, stream in enumerate(streams):
            ((last,),) = await self.conn.execute_fetchall(SQL["stream_bump"], (stream, len(events), len(events)))
            seqs = list(range(last - len(events) + 1, last + 1))
            await self.conn.executemany(SQL["stream_event_insert"], [
                (stream, seq, event_id) for seq, event_id in zip(seqs, ids, strict=True)])
            if i == 0:
                first_stream_seqs = seqs
            self.touch(stream)
        return first_stream_seqs

    async def append_group_events(self, group_id: str, events: Iterable[tuple[str | None, str, str, dict[str, Any]]],
                                  ) -> list[int]:
        """Append events to the group's stream only (entry and group events): each a (run_id or None,
        type, message, payload); they get the group's next gapless sequences in this transaction."""
        return await self._append_to_stream(topics.group(group_id), group_id, list(events))

    async def append_stream_events(self, stream: str, events: Iterable[Draft]) -> list[int]:
        """Append events to a stream of their own, of no run and no group (`topics.APPROVALS`): they get
        its next gapless sequences in this transaction."""
        return await self._append_to_stream(stream, None, [(None, *event) for event in events])

    async def _append_to_stream(self, stream: str, group_id: str | None,
                                events: list[tuple[str | None, str, str, dict[str, Any]]]) -> list[int]:
        if not events:
            return []
        ids = [new_id("ev") for _ in events]
        await self.conn.executemany(SQL["event_insert"], [
            (event_id, run_id, group_id, type_, message, json.dumps(payload), self.stamp)
            for event_id, (run_id, type_, message, payload) in zip(ids, events, strict=True)])
        ((last,),) = await self.conn.execute_fetchall(SQL["stream_bump"], (stream, len(events), len(events)))
        seqs = list(range(last - len(events) + 1, last + 1))
        await self.conn.executemany(SQL["stream_event_insert"], [
            (stream, seq, event_id) for seq, event_id in zip(seqs, ids, strict=True)])
        self.touch(stream)
        return seqs

    async def _cas(self, table: str, allowed: frozenset[str], id_: str, expected: list[str], fields: dict[str, Any],
                   topic: str) -> bool:
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"not updatable: {bad}")
        fields["updated_at"] = self.now
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        marks = ", ".join(f":expected_{i}" for i in range(len(expected)))
        params = {**fields, "id": id_, **{f"expected_{i}": s for i, s in enumerate(expected)}}
        return await self.cas(f"UPDATE {table} SET {sets} WHERE id = :id AND status IN ({marks}) RETURNING id",
                              {k: ts(v) if isinstance(v, datetime) else v for k, v in params.items()}, topic) is not None

    async def cas(self, sql: str, params: Any, *touched: str) -> dict[str, Any] | None:
        """The one compare-and-set: `sql` is an UPDATE whose WHERE holds the state it expects and which
        returns (RETURNING) what it changed. The changed row, or None when that state no longer held; the
        `touched` topics wake once the transaction commits, when it applied."""
        rows = await self.conn.execute_fetchall(sql, params)
        if not rows:
            return None
        for topic in touched:
            self.touch(topic)
        return dict(rows[0])


class Store:
    def __init__(self, path: Path, notifier: topics.Topics | None = None) -> None:
        self.path = path
        self.topics = notifier or topics.Topics()
        self._writer: InlineConnection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = anyio.Lock(fast_acquire=True)
        self.commits = 0
        """Write transactions committed since this store was opened."""
        self.shared = False
        """Whether other daemons share this database (PostgreSQL): their commits reach this one's waiters."""
        # each area's reads
        self.runs = runs.RunReads(self)
        self.devices = devices.DeviceReads(self)
        self.sessions = sessions.SessionReads(self)
        self.souls = souls.SoulReads(self)
        self.groups = groups.GroupReads(self)
        self.tasks = tasks.TaskReads(self)
        self.channels = channels.ChannelReads(self)
        self.profiles = profiles.ProfileReads(self)
        self.quotas = quotas.QuotaReads(self)
        self.approvals = approvals.ApprovalReads(self)
        self.daemons = daemons.DaemonReads(self)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = InlineConnection(self.path)
        for pragma in _PRAGMAS + ("journal_mode = WAL", "wal_autocheckpoint = 0", "busy_timeout = 0"):
            await self._writer.execute(f"PRAGMA {pragma}")
        await self.migrate()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader.row_factory = aiosqlite.Row
        for pragma in _PRAGMAS + ("busy_timeout = 5000",):
            await self._reader.execute(f"PRAGMA {pragma}")

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

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """What the store does in the background while the engine runs: nothing for one SQLite file
        (PostgreSQL's listens for the other daemons' commits)."""
        task_status.started()

    driver_error: type[Exception] = sqlite3.Error
    """The driver's errors, which `write` translates (`translated`)."""

    @staticmethod
    def translated(exc: Exception) -> errors.EngineError:
        return _translated(exc)  # type: ignore[arg-type]

    async def commit(self, tx: Tx) -> None:
        """Commit `tx` (PostgreSQL's store notifies its topics in the same round trip)."""
        await tx.conn.commit()

    @asynccontextmanager
    async def write(self, now: datetime, *, rows: bool = False) -> AsyncIterator[Tx]:
        """One serialized write transaction, shielded from cancellation once begun; its topics are
        published after it commits.

        `rows=True` says the transaction relies on no other's being serialized with it: each of its
        writes is a compare-and-set or an insert of its own rows, and what it reads and then relies on
        it has locked (`Tx.hold`, a claim's `FOR UPDATE SKIP LOCKED`). SQLite has one writer and serializes
        it all the same; PostgreSQL runs it beside the others on a connection of its own."""
        assert self._writer is not None
        async with self._lock:
            async with self._transaction(self._writer, now) as tx:
                yield tx
        await self._committed(tx)

    @asynccontextmanager
    async def _transaction(self, conn: Any, now: datetime, *, alone: bool = True) -> AsyncIterator[Tx]:
        """BEGIN on `conn` (`alone`: serialized with every other `alone` transaction), the body, then
        COMMIT, or ROLLBACK on any error; shielded from cancellation once begun."""
        with anyio.CancelScope(shield=True):
            try:
                await conn.begin(alone)
            except self.driver_error as exc:
                raise self.translated(exc) from exc
            tx = Tx(conn, now)
            try:
                yield tx
            except BaseException as exc:
                await conn.rollback()
                if isinstance(exc, self.driver_error):
                    raise self.translated(exc) from exc
                raise
            else:
                try:
                    await self.commit(tx)
                except self.driver_error as exc:
                    await conn.rollback()
                    raise self.translated(exc) from exc

    async def _committed(self, tx: Tx) -> None:
        self.topics.publish(tx.touched)
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Copy the WAL back into the database file, on the reader's thread (it may fsync)."""
        assert self._reader is not None
        await self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """One query, executed and drained in a single step on the reader's thread. Two reads must not
        interleave on the connection: the second would join the first's snapshot and could miss a
        commit made in between (read-your-writes would break)."""
        assert self._reader is not None
        return [dict(r) for r in await self._reader.execute_fetchall(sql, params)]

    async def _one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def events(self, stream: str, after: int, limit: int, budget: int | None = None) -> list[EventRow]:
        """A stream's events after a sequence number (`topics.run(id)`, `topics.group(id)`); with `budget`,
        no more once their payloads and messages pass that many bytes (the first always)."""
        rows = await (self._all(SQL["stream_after"], (stream, after, limit)) if budget is None else
                      self._all(SQL["stream_after_within"], (stream, after, limit, budget)))
        return [EventRow.model_validate(r) for r in rows]

    async def stream_last(self, stream: str) -> int:
        """The last sequence given out in a stream (0 when it has none)."""
        row = await self._one(SQL["stream_last"], (stream,))
        return int(row["last_sequence"]) if row else 0

    async def schema(self) -> dict[str, str]:
        """Name -> normalized SQL of every table and index (for the migration test)."""
        rows = await self._all("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        return {r["name"]: " ".join(r["sql"].split()) for r in rows}


# WAL + synchronous NORMAL: a commit survives a crash or kill of the daemon (what we promise); only
# a power loss may roll back the last commits. FULL would fsync every commit for that extra case.
_PRAGMAS = ("foreign_keys = ON", "synchronous = NORMAL")


def _translated(exc: sqlite3.Error) -> errors.EngineError:
    """The driver's errors in the engine's terms, once, here."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in text:
        return errors.Conflict(f"already exists ({text})", evidence={"constraint": text})
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return errors.Busy(f"the database is busy ({text}); retry", suggested_command="agentdock daemon status")
    return errors.EngineError(f"database error: {text}")


def open_store(settings: Any, notifier: topics.Topics) -> Store:
    """The store the settings name: PostgreSQL at `database_url` when set, else the home's SQLite file."""
    if settings.database_url:
        from engine.postgres import PostgresStore  # only a daemon that uses PostgreSQL loads psycopg

        return PostgresStore(settings.database_url, notifier)
    return Store(settings.db_path, notifier)
