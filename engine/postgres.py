"""The store on PostgreSQL (psycopg 3, async), for several daemons sharing one database.

The same `Store` and `Tx`, the same areas' repositories and the same named SQL as on SQLite: the
connections here take SQLite's words and say them in PostgreSQL's (`engine.dialect`), and give rows
that read like sqlite3's (by position and by name). What differs is underneath:

- one writer connection per daemon, its transactions serialized in the daemon as on SQLite, and
  across daemons by one advisory lock each transaction holds: the same one-writer semantics as
  SQLite's, which every area's read-then-write relies on (measured in bench/task_queue.py);
- the topics a transaction touched are NOTIFYed in it, so they reach the other daemons when it
  commits; each daemon LISTENs and wakes its own waiters (a hint: every waiter looks again, bounded);
- statements are bound on the server and prepared once used a few times (psycopg's default), and rows
  are named from the result itself: each statement then costs its round trip and little Python;
- migrations are recorded in `schema_migrations`, applied under an advisory lock (two daemons
  starting at once migrate once); the schema starts at the SQLite schema's version 18, in one step.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg.adapt import Dumper, Loader
from psycopg.rows import RowMaker

from engine import errors, topics
from engine.dialect import postgres
from engine.store import Store, Tx

CHANNEL = "agentdock"
"""The NOTIFY channel: a payload is the committing daemon's origin, then the topics it touched."""
NOTIFY_BYTES = 7_000
"""Under PostgreSQL's 8,000-byte payload limit: more topics go in several notifications."""
MIGRATION_LOCK = 0x61676E74
"""The advisory lock that serializes migrations between daemons."""
WRITE_LOCK = 0x61676E75
"""The advisory lock every serialized write transaction holds until it ends."""
HOLD_SPACE = 0x61676E76
"""The first key of `Tx.hold`'s advisory locks (the second is the held name's hash)."""
ROW_WRITERS = 4
"""Connections of a daemon for transactions that lock only their rows (`Store.write(rows=True)`)."""


def migrations() -> list[tuple[int, str]]:
    """The PostgreSQL migrations, numbered like SQLite's: the first holds SQLite's 1-18 at once."""
    found = []
    for item in resources.files("engine.migrations.postgres").iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


class Record(tuple):  # type: ignore[type-arg]
    """A row read by position or by name, with `keys()` (so `dict(row)` works), like `sqlite3.Row`."""

    names: dict[str, int] = {}

    def keys(self) -> list[str]:
        return list(self.names)

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)


def _records(cursor: Any) -> RowMaker[Record]:
    # The names straight from the result: `cursor.description` builds a Column object per column per
    # statement, which cost more than the statement's round trip.
    res = cursor.pgresult
    if res is None or res.status not in _ROWS:
        return tuple  # type: ignore[return-value]
    return _record_of(tuple(res.fname(i) for i in range(res.nfields)))  # type: ignore[return-value]


_ROWS = (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.SINGLE_TUPLE)


@lru_cache(maxsize=512)
def _record_of(names: tuple[bytes, ...]) -> type[Record]:
    return type("Record", (Record,), {"names": {name.decode(): i for i, name in enumerate(names)}})


class _FlagDumper(Dumper):
    """Python's booleans are stored as SQLite stores them: 0 and 1 in an integer column."""

    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class _NumberLoader(Loader):
    """A `numeric` (what `sum` of integers gives) as the int or float SQLite would give."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


class _Cursor:
    def __init__(self, cursor: psycopg.AsyncCursor[Any]) -> None:
        self.rowcount = cursor.rowcount
        self._cursor = cursor
        res = cursor.pgresult
        self._rows = res is not None and res.status in _ROWS

    async def fetchone(self) -> Any:
        return await self._cursor.fetchone() if self._rows else None

    async def fetchall(self) -> list[Any]:
        return await self._cursor.fetchall() if self._rows else []

    async def close(self) -> None:
        await self._cursor.close()


class PgConnection:
    """One psycopg connection with the surface the store's SQLite connections have, taking their SQL."""

    def __init__(self, raw: psycopg.AsyncConnection[Any]) -> None:
        self.raw = raw

    @classmethod
    async def connect(cls, url: str) -> PgConnection:
        raw = await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=_records)
        raw.adapters.register_dumper(bool, _FlagDumper)
        raw.adapters.register_loader("numeric", _NumberLoader)
        return cls(raw)

    async def execute(self, sql: str, params: Any = ()) -> _Cursor:
        cursor = self.raw.cursor()
        await cursor.execute(postgres(sql), _params(params))
        return _Cursor(cursor)

    async def executemany(self, sql: str, rows: Iterable[Any]) -> _Cursor:
        cursor = self.raw.cursor()
        await cursor.executemany(postgres(sql), [_params(r) for r in rows])
        return _Cursor(cursor)

    async def execute_fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        cursor = await self.execute(sql, params)
        return await cursor.fetchall()

    async def executescript(self, script: str) -> None:
        await self.raw.execute(script.encode())  # type: ignore[arg-type]  # bytes: no parameters in it

    async def begin(self, alone: bool = True) -> None:
        """BEGIN; `alone`, then wait for the one write lock every daemon takes: those transactions are
        serialized across daemons as SQLite serializes writers, so what an area reads in one still
        holds when it writes (a group's free slots, a budget, a quota) without each area locking its
        rows. The others (`Store.write(rows=True)`) lock only their rows."""
        if alone:
            await self.raw.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})".encode())  # one round trip
        else:
            await self.raw.execute(b"BEGIN")

    async def hold(self, key: str) -> None:
        """An advisory lock on `key` until the transaction ends (two-key form: apart from WRITE_LOCK's)."""
        await self.raw.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (HOLD_SPACE, key))

    async def commit(self, notify: str | None = None) -> None:
        """COMMIT, after a NOTIFY of `notify` when given (one round trip)."""
        if notify is None:
            await self.raw.execute("COMMIT")
        else:
            said = psycopg.AsyncClientCursor(self.raw).mogrify("SELECT pg_notify(%s, %s); COMMIT", (CHANNEL, notify))
            await self.raw.execute(said.encode())

    async def rollback(self) -> None:
        if self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await self.raw.execute("ROLLBACK")

    async def close(self) -> None:
        await self.raw.close()


def _params(params: Any) -> Any:
    """Parameters as psycopg takes them: a mapping or a sequence (a tuple for sqlite3's lists too)."""
    if params is None:
        return ()
    if isinstance(params, dict):
        return params
    return tuple(params) if not isinstance(params, Sequence) or isinstance(params, list) else params


class PostgresStore(Store):
    """`Store` on PostgreSQL at `url` (`AGENTDOCK_DATABASE_URL`)."""

    driver_error = psycopg.Error

    def __init__(self, url: str, notifier: topics.Topics | None = None) -> None:
        super().__init__(path=None, notifier=notifier)  # type: ignore[arg-type]
        self.url = url
        self.shared = True
        self.origin = secrets.token_hex(6)
        """Names this store's notifications, so it does not wake its own waiters twice."""
        self._listener: PgConnection | None = None
        self._row_writers: list[PgConnection] = []
        """Idle connections for `write(rows=True)`, made as needed up to ROW_WRITERS."""
        self._row_slots = anyio.Semaphore(ROW_WRITERS)

    async def open(self) -> None:
        try:
            self._writer = await PgConnection.connect(self.url)  # type: ignore[assignment]
            await self.migrate()
            self._reader = await PgConnection.connect(self.url)  # type: ignore[assignment]
        except psycopg.OperationalError as exc:
            await self.close()
            raise errors.EngineError(
                f"cannot reach the PostgreSQL database of AGENTDOCK_DATABASE_URL: {_first_line(exc)}",
                suggested_command="psql \"$AGENTDOCK_DATABASE_URL\" -c 'select 1'") from None

    async def close(self) -> None:
        for conn in (self._reader, self._writer, self._listener, *self._row_writers):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = self._listener = None
        self._row_writers = []

    @asynccontextmanager
    async def write(self, now: datetime, *, rows: bool = False) -> AsyncIterator[Tx]:
        """As `Store.write`; with `rows=True`, on a connection of its own without the write lock, so the
        task queue's claims and leases of several workers and daemons commit side by side."""
        if not rows:
            async with super().write(now) as tx:
                yield tx
            return
        async with self._row_slots:
            try:
                conn = self._row_writers.pop() if self._row_writers else await PgConnection.connect(self.url)
            except psycopg.Error as exc:
                raise self.translated(exc) from exc
            try:
                async with self._transaction(conn, now, alone=False) as tx:
                    yield tx
            finally:
                if conn.raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE and not conn.raw.closed:
                    self._row_writers.append(conn)
                else:  # broken midway: not given to the next transaction
                    with anyio.CancelScope(shield=True):
                        await conn.close()
        await self._committed(tx)

    async def migrate(self) -> int:
        """Apply every PostgreSQL migration not yet recorded, under a lock other daemons wait for."""
        writer = self._writer
        assert writer is not None
        await writer.begin()
        try:
            await writer.raw.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await writer.raw.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)")
            rows = await (await writer.raw.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")).fetchall()
            current = int(rows[0][0])
            for version, script in migrations():
                if version <= current:
                    continue
                await writer.executescript(script)
                await writer.raw.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, now()::text)", (version,))
                current = version
            await writer.commit()
        except BaseException:
            await writer.rollback()
            raise
        return current

    async def commit(self, tx: Tx) -> None:
        """NOTIFY the topics `tx` touched (delivered to the other daemons when it commits) and commit."""
        payloads: list[str] = []
        chunk: list[str] = [self.origin]
        for topic in sorted(tx.touched):
            if len(chunk) > 1 and sum(len(t) + 1 for t in chunk) + len(topic) > NOTIFY_BYTES:
                payloads.append(" ".join(chunk))
                chunk = [self.origin]
            chunk.append(topic)
        if len(chunk) > 1:
            payloads.append(" ".join(chunk))
        for payload in payloads[:-1]:
            await tx.conn.raw.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        await tx.conn.commit(payloads[-1] if payloads else None)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Wake this daemon's waiters when another daemon's transaction touched their topics."""
        self._listener = listener = await PgConnection.connect(self.url)
        await listener.raw.execute(f"LISTEN {CHANNEL}")
        task_status.started()
        pgconn = listener.raw.pgconn
        while True:
            # Wait here, not in psycopg: a cancelled wait inside a query makes it give the connection up
            # noisily. A readable socket holds notifications: read them off it without a round trip.
            await anyio.wait_readable(listener.raw.fileno())
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listening connection to PostgreSQL was lost")
            while (note := pgconn.notifies()) is not None:
                self._heard(note.relname, note.extra)

    def _heard(self, channel: bytes, payload: bytes) -> None:
        origin, _, touched = payload.decode().partition(" ")
        if channel == CHANNEL.encode() and origin != self.origin:
            self.topics.publish(touched.split())

    @staticmethod
    def translated(exc: Exception) -> errors.EngineError:
        text = _first_line(exc)
        if isinstance(exc, pg_errors.UniqueViolation):
            return errors.Conflict(f"already exists ({text})", evidence={"constraint": text})
        if isinstance(exc, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.LockNotAvailable,
                            psycopg.OperationalError)):
            return errors.Busy(f"the database is busy ({text}); retry", suggested_command="agentdock daemon status")
        return errors.EngineError(f"database error: {text}")

    async def checkpoint(self) -> None:
        """PostgreSQL checkpoints by itself."""

    async def _all(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """One query on the reader, shielded like a write: psycopg answers a cancelled query by closing
        its connection, which is every reader's here (a read takes milliseconds)."""
        assert self._reader is not None
        with anyio.CancelScope(shield=True):
            try:
                return [dict(r) for r in await self._reader.execute_fetchall(sql, params)]
            except psycopg.Error as exc:
                raise self.translated(exc) from exc

    async def schema(self) -> dict[str, str]:
        rows = await self._all(
            "SELECT table_name AS name, string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) "
            "AS sql FROM information_schema.columns WHERE table_schema = current_schema() GROUP BY table_name")
        return {r["name"]: r["sql"] for r in rows}


def _first_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
