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

This module holds the connections, the transaction, migrations and the core records (devices, runs,
events, sessions, souls); each later area keeps its SQL and operations in its own module, mixed into
`Tx` and `Store` here: the `repository` module of each area package (tasks, channels, profiles,
groups, quotas, approvals).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import anyio

from engine import errors, models, topics
from engine.approvals import repository as approval_store
from engine.channels import repository as channel_store
from engine.groups import repository as group_store
from engine.profiles import repository as profile_store
from engine.quotas import repository as quota_store
from engine.tasks import repository as task_store
from engine.records import ArtifactRow, DeviceRow, EventRow, RunRow, SessionRow, Shape, SoulSnapshotRow
from engine.sqlvalues import encode, new_id, ts

__all__ = ["SQL", "Store", "Tx", "migrations", "new_id", "ts"]

_KEPT = (
    "{t}.output || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks c "
    "WHERE c.run_id = {t}.id AND c.stream = 'stdout' ORDER BY c.seq)), '') AS output, "
    "{t}.stderr || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks c "
    "WHERE c.run_id = {t}.id AND c.stream = 'stderr' ORDER BY c.seq)), '') AS stderr"
)
RUN_COLUMNS = (
    "agent_runs.id, target_kind, target_id, provider, prompt, command, model, cwd, timeout, metadata, env, secrets, "
    "status, " + _KEPT.format(t="agent_runs") + ", output_truncated, stderr_truncated, stdout_offset, "
    "stderr_offset, exit_code, failure_kind, error, pids_peak, memory_peak_bytes, model_requests, input_tokens, "
    "output_tokens, ephemeral, cancel_requested, "
    "agent_run_group_id, "
    "orchestration_role, parent_agent_run_id, profile_id, profile_snapshot, workspace_id, idempotency_key, "
    "request_hash, started_at, "
    "finished_at, created_at, updated_at, created_by"
)

# A run list weighs each run of its page by its output and stderr (what can be a MiB each) and carries
# them only while the page's running total is within its byte budget; past it they are left out.
_BODY_SIZE = (
    "length(CAST(r.output AS BLOB)) + length(CAST(r.stderr AS BLOB)) + COALESCE((SELECT sum(length(CAST(c.text AS "
    "BLOB))) FROM output_chunks c WHERE c.run_id = r.id), 0)"
)
_LISTED = RUN_COLUMNS.replace(
    _KEPT.format(t="agent_runs"),
    "CASE WHEN w.running <= :budget THEN agent_runs.output || COALESCE((SELECT group_concat(text, '') FROM (SELECT "
    "text FROM output_chunks c WHERE c.run_id = agent_runs.id AND c.stream = 'stdout' ORDER BY c.seq)), '') ELSE '' "
    "END AS output, CASE WHEN w.running <= :budget THEN agent_runs.stderr || COALESCE((SELECT group_concat(text, '') "
    "FROM (SELECT text FROM output_chunks c WHERE c.run_id = agent_runs.id AND c.stream = 'stderr' ORDER BY c.seq)), "
    "'') ELSE '' END AS stderr, w.running > :budget AS output_omitted")
_SUMMARY = RUN_COLUMNS.replace(_KEPT.format(t="agent_runs"), "'' AS output, '' AS stderr, 1 AS output_omitted")
assert _LISTED != RUN_COLUMNS and _SUMMARY != RUN_COLUMNS

SQL = {
    "device_insert": (
        "INSERT INTO devices (id, kind, name, image, cpus, memory_mb, pids_limit, workspace_mb, tmp_mb, network, "
        "env, metadata, ephemeral, run_id, created_at, updated_at, created_by, pool) "
        "VALUES (:id, :kind, :name, :image, :cpus, :memory_mb, :pids_limit, :workspace_mb, :tmp_mb, :network, "
        ":env, :metadata, :ephemeral, :run_id, :created_at, :updated_at, :created_by, :pool)"
    ),
    "device_claim": (
        "UPDATE devices SET run_id = :run_id, created_by = :created_by, updated_at = :now "
        "WHERE id = :id AND pool IS NOT NULL AND run_id IS NULL AND deleted_at IS NULL"
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
        "metadata, env, secrets, status, ephemeral, idempotency_key, request_hash, created_at, updated_at, created_by, "
        "profile_id, profile_snapshot, workspace_id) "
        "VALUES (:id, :target_kind, :target_id, :provider, :prompt, :command, :model, :cwd, :timeout, "
        ":metadata, :env, :secrets, :status, :ephemeral, :idempotency_key, :request_hash, :created_at, :updated_at, "
        ":created_by, :profile_id, :profile_snapshot, :workspace_id)"
    ),
    "run_get": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE id = ?",
    "run_grant": "SELECT status, secrets, agent_run_group_id FROM agent_runs WHERE id = ?",
    "run_model_usage": (
        "UPDATE agent_runs SET model_requests = model_requests + 1, input_tokens = input_tokens + :input_tokens, "
        "output_tokens = output_tokens + :output_tokens, updated_at = :now WHERE id = :id"
    ),
    "run_by_idempotency_key": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE created_by = ? AND idempotency_key = ?",
    "runs_unfinished": f"SELECT {RUN_COLUMNS} FROM agent_runs WHERE status IN ('queued', 'running') ORDER BY rowid",
    "runs_queued": (
        "SELECT r.id, r.target_id, r.agent_run_group_id, r.created_by, d.image, d.cpus, d.memory_mb, d.pids_limit, "
        "d.workspace_mb, d.tmp_mb "
        "FROM agent_runs r LEFT JOIN devices d ON r.ephemeral = 1 AND d.id = r.target_id AND d.deleted_at IS NULL "
        "AND d.kind = 'sandbox' AND d.network = 0 AND d.pool IS NULL "
        "WHERE r.status = 'queued' ORDER BY r.rowid LIMIT ?"
    ),
    "runs_active_on_target": "SELECT id FROM agent_runs WHERE target_id = ? AND status IN ('queued', 'running')",
    "stream_bump": (
        "INSERT INTO streams (name, last_sequence) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET last_sequence = last_sequence + ? RETURNING last_sequence"
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
        "WHERE s.stream = ? AND s.sequence > ? ORDER BY s.sequence LIMIT ?) x) WHERE running <= ? OR n = 1 "
        "ORDER BY sequence"
    ),
    "chunk_insert": (
        "INSERT INTO output_chunks (run_id, stream, seq, text) VALUES (:run_id, :stream, "
        "(SELECT COALESCE(MAX(seq), 0) + 1 FROM output_chunks WHERE run_id = :run_id AND stream = :stream), :text)"
    ),
    "chunks_fold": (
        "UPDATE agent_runs SET "
        "output = output || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks "
        "WHERE run_id = :id AND stream = 'stdout' ORDER BY seq)), ''), "
        "stderr = stderr || COALESCE((SELECT group_concat(text, '') FROM (SELECT text FROM output_chunks "
        "WHERE run_id = :id AND stream = 'stderr' ORDER BY seq)), '') WHERE id = :id"
    ),
    "chunks_delete": "DELETE FROM output_chunks WHERE run_id = ?",
    "artifact_upsert": (
        "INSERT OR REPLACE INTO artifacts (run_id, path, size, sha256, stored_as, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    ),
    "artifacts_of_run": "SELECT * FROM artifacts WHERE run_id = ? ORDER BY path",
    "artifact_get": "SELECT * FROM artifacts WHERE run_id = ? AND path = ?",
    "session_insert": (
        "INSERT INTO sessions (id, agent_name, name, token_hash, status, parent_session_id, root_session_id, "
        "spawn_depth, spawn_role, auto_stop_on_parent, permissions, spawn_budget, ttl_expires_at, workspace_id, "
        "run_id, soul_snapshot_id, provider, model, created_by, created_at, updated_at, profile_id, profile_snapshot, "
        "limits) VALUES (:id, :agent_name, "
        ":name, :token_hash, 'active', :parent_session_id, :root_session_id, :spawn_depth, :spawn_role, "
        ":auto_stop_on_parent, :permissions, :spawn_budget, :ttl_expires_at, :workspace_id, :run_id, "
        ":soul_snapshot_id, :provider, :model, :created_by, :created_at, :updated_at, :profile_id, :profile_snapshot, "
        ":limits)"
    ),
    "session_get": "SELECT * FROM sessions WHERE id = ?",
    "session_by_token": "SELECT * FROM sessions WHERE token_hash = ?",
    "session_end": (
        "UPDATE sessions SET status = :status, stop_reason = :reason, stopped_at = :now, updated_at = :now "
        "WHERE id = :id AND status = 'active'"
    ),
    "session_set_run": "UPDATE sessions SET run_id = :run_id, updated_at = :now WHERE id = :id",
    "session_active": "SELECT 1 FROM sessions WHERE id = ? AND status = 'active'",
    "session_set_limits": "UPDATE sessions SET limits = :limits WHERE id = :id AND limits IS NULL",
    "sessions_without_limits": "SELECT * FROM sessions WHERE limits IS NULL ORDER BY spawn_depth, created_at",
    "sessions_live_children": "SELECT count(*) AS n FROM sessions WHERE parent_session_id = ? AND status = 'active'",
    "sessions_live_in_workspace": "SELECT count(*) AS n FROM sessions WHERE workspace_id = ? AND status = 'active'",
    "sessions_descendants": (
        "WITH RECURSIVE below(id) AS (SELECT id FROM sessions WHERE parent_session_id = :id "
        "UNION SELECT s.id FROM sessions s JOIN below b ON s.parent_session_id = b.id) "
        "SELECT s.* FROM sessions s JOIN below b ON s.id = b.id ORDER BY s.spawn_depth, s.created_at"
    ),
    "sessions_all": "SELECT * FROM sessions ORDER BY created_at, id",
    "sessions_next_expiry": "SELECT min(ttl_expires_at) AS at FROM sessions WHERE status = 'active'",
    "sessions_expired": "SELECT id FROM sessions WHERE status = 'active' AND ttl_expires_at <= ? ORDER BY spawn_depth",
    "runs_unfinished_of": "SELECT id FROM agent_runs WHERE created_by = ? AND status IN ('queued', 'running')",
    "soul_document_insert": "INSERT OR IGNORE INTO soul_documents (digest, content, created_at) VALUES (?, ?, ?)",
    "soul_snapshot_insert": (
        "INSERT INTO soul_snapshots (id, agent_name, digest, source, source_path, document_modified, created_at, "
        "created_by) VALUES (:id, :agent_name, :digest, :source, :source_path, :document_modified, :created_at, "
        ":created_by)"
    ),
    "soul_snapshot_get": (
        "SELECT s.*, d.content FROM soul_snapshots s LEFT JOIN soul_documents d ON d.digest = s.digest WHERE s.id = ?"
    ),
    "session_workspace": "SELECT workspace_id FROM sessions WHERE id = ?",
    "stream_last": "SELECT last_sequence FROM streams WHERE name = ?",
}





SQL.update({**group_store.SQL, **task_store.SQL, **channel_store.SQL, **profile_store.SQL, **quota_store.SQL,
            **approval_store.SQL})
"""Every named query (the areas' too): a test compiles each against the migrated schema."""

# Columns a run update may set (a guard against building SQL from arbitrary keys).
RUN_UPDATABLE = frozenset(
    "status output stderr output_truncated stderr_truncated stdout_offset stderr_offset exit_code "
    "failure_kind error cancel_requested started_at finished_at target_id pids_peak memory_peak_bytes".split()
)


def migrations() -> list[tuple[int, str]]:
    """The numbered migrations shipped in engine/migrations, in order."""
    found = []
    for item in resources.files("engine.migrations").iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


Draft = tuple[str, str, dict[str, Any]]
"""An event to append: type, message, payload."""


class Queued(NamedTuple):
    """What admission needs of a queued run."""

    id: str
    target_id: str
    group_id: str | None
    created_by: str = "ses_root"
    shape: Shape | None = None
    """The shape of its ephemeral sandbox when a pooled device could serve it (no network)."""


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

    async def begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write lock without blocking the loop."""
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


class Tx(group_store.GroupWrites, task_store.TaskWrites, channel_store.ChannelWrites, profile_store.ProfileWrites,
         quota_store.QuotaWrites, approval_store.ApprovalWrites):
    """One open write transaction; `touched` are the topics to wake once it commits."""

    def __init__(self, conn: InlineConnection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.stamp = ts(now)
        """`now` as stored (formatted once per transaction)."""
        self.touched: set[str] = set()

    def touch(self, topic: str) -> None:
        self.touched.add(topic)

    async def insert_device(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["device_insert"], encode({"pool": None, **row}))

    async def claim_device(self, device_id: str, run_id: str, created_by: str) -> bool:
        """Compare-and-set: give a ready pooled device to a run (counted from now on as its creator's);
        False if it is not a ready pooled device."""
        cur = await self.conn.execute(SQL["device_claim"], {"id": device_id, "run_id": run_id,
                                                            "created_by": created_by, "now": self.stamp})
        return cur.rowcount == 1

    async def delete_device(self, device_id: str) -> None:
        await self.conn.execute(SQL["device_delete"], {"id": device_id, "now": self.stamp})

    async def insert_run(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["run_insert"], encode({"secrets": [], "profile_id": None,
                                                            "profile_snapshot": None, "workspace_id": None, **row}))
        self.touch(topics.ADMISSION)

    async def update_run(self, run_id: str, **fields: Any) -> None:
        await self._update_run(run_id, None, fields)

    async def transition_run(self, run_id: str, expected: Iterable[models.RunStatus], **fields: Any) -> bool:
        """Compare-and-set: update the run only if its status is one of `expected`; says whether it did."""
        return await self._update_run(run_id, [s.value for s in expected], fields)

    async def _update_run(self, run_id: str, expected: list[str] | None, fields: dict[str, Any]) -> bool:
        bad = set(fields) - RUN_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {bad}")
        fields["updated_at"] = self.now
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        sql, params = f"UPDATE agent_runs SET {sets} WHERE id = :id", {**fields, "id": run_id}
        if expected is not None:
            sql += " AND status IN (" + ", ".join(f":expected_{i}" for i in range(len(expected))) + ")"
            params.update({f"expected_{i}": s for i, s in enumerate(expected)})
        cur = await self.conn.execute(sql, encode(params))
        applied = cur.rowcount == 1
        if applied:
            self.touch(topics.run(run_id))
            if "status" in fields:
                self.touch(topics.ADMISSION)
        return applied

    async def append_output(self, run_id: str, stream: str, text: str) -> None:
        """Keep more of a run's stdout or stderr: one new chunk, not a rewrite of what is kept."""
        if text:
            await self.conn.execute(SQL["chunk_insert"], {"run_id": run_id, "stream": stream, "text": text})

    async def add_model_usage(self, run_id: str, input_tokens: int, output_tokens: int) -> None:
        """Count one model request of a run, and the tokens its answer reported, onto its record."""
        await self.conn.execute(SQL["run_model_usage"], encode({"id": run_id, "input_tokens": input_tokens,
                                                                "output_tokens": output_tokens, "now": self.now}))
        self.touch(topics.run(run_id))

    async def fold_output(self, run_id: str) -> None:
        """Move a run's chunks into its record (once, when its result is recorded)."""
        await self.conn.execute(SQL["chunks_fold"], {"id": run_id})
        await self.conn.execute(SQL["chunks_delete"], (run_id,))

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

    async def insert_session(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["session_insert"], encode({"profile_id": None, "profile_snapshot": None, **row}))
        self.touch(topics.SESSIONS)

    async def end_session(self, session_id: str, status: str, reason: str) -> bool:
        """Compare-and-set: stop or expire a session that is still active; says whether it did."""
        cur = await self.conn.execute(SQL["session_end"], {"id": session_id, "status": status, "reason": reason,
                                                           "now": self.stamp})
        self.touch(topics.SESSIONS)
        return cur.rowcount == 1

    async def set_session_run(self, session_id: str, run_id: str) -> None:
        await self.conn.execute(SQL["session_set_run"], {"id": session_id, "run_id": run_id, "now": self.stamp})

    async def session_active(self, session_id: str) -> bool:
        """Whether a session is live, read in this transaction (a stop commits in one before or after it)."""
        return bool(await self.conn.execute_fetchall(SQL["session_active"], (session_id,)))

    async def session(self, session_id: str) -> SessionRow | None:
        rows = await self.conn.execute_fetchall(SQL["session_get"], (session_id,))
        return SessionRow.model_validate(dict(rows[0])) if rows else None

    async def descendants(self, session_id: str) -> list[SessionRow]:
        """Every session below `session_id`, shallowest first, as this transaction sees them."""
        rows = await self.conn.execute_fetchall(SQL["sessions_descendants"], {"id": session_id})
        return [SessionRow.model_validate(dict(r)) for r in rows]

    async def set_session_limits(self, session_id: str, limits: dict[str, Any]) -> None:
        """Record the effective limits of a session spawned before they were recorded (once)."""
        await self.conn.execute(SQL["session_set_limits"], {"id": session_id, "limits": json.dumps(limits)})

    async def live_children(self, session_id: str) -> int:
        """Counted inside the transaction, so two spawns cannot both take the last place."""
        ((n,),) = await self.conn.execute_fetchall(SQL["sessions_live_children"], (session_id,))
        return int(n)

    async def live_in_workspace(self, workspace_id: str) -> int:
        ((n,),) = await self.conn.execute_fetchall(SQL["sessions_live_in_workspace"], (workspace_id,))
        return int(n)

    async def upsert_artifact(self, run_id: str, path: str, size: int, sha256: str, stored_as: str) -> None:
        await self.conn.execute(SQL["artifact_upsert"], (run_id, path, size, sha256, stored_as, self.stamp))

    async def insert_soul_snapshot(self, row: dict[str, Any], content: bytes | None) -> None:
        """A snapshot of a soul; its document stored once per digest (none when there was no soul)."""
        if content is not None:
            await self.conn.execute(SQL["soul_document_insert"], (row["digest"], content, self.stamp))
        await self.conn.execute(SQL["soul_snapshot_insert"], encode(row))

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
        cur = await self.conn.execute(f"UPDATE {table} SET {sets} WHERE id = :id AND status IN ({marks})",
                                      {k: ts(v) if isinstance(v, datetime) else v for k, v in params.items()})
        if cur.rowcount == 1:
            self.touch(topic)
            return True
        return False


class Store(group_store.GroupReads, task_store.TaskReads, channel_store.ChannelReads, profile_store.ProfileReads,
            quota_store.QuotaReads, approval_store.ApprovalReads):
    def __init__(self, path: Path, notifier: topics.Topics | None = None) -> None:
        self.path = path
        self.topics = notifier or topics.Topics()
        self._writer: InlineConnection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = anyio.Lock(fast_acquire=True)
        self.commits = 0
        """Write transactions committed since this store was opened."""

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

    @asynccontextmanager
    async def write(self, now: datetime) -> AsyncIterator[Tx]:
        """One serialized write transaction, shielded from cancellation once begun; its topics are
        published after it commits."""
        assert self._writer is not None
        async with self._lock:
            with anyio.CancelScope(shield=True):
                try:
                    await self._writer.begin()
                except sqlite3.OperationalError as exc:
                    raise _translated(exc) from exc
                tx = Tx(self._writer, now)
                try:
                    yield tx
                except BaseException as exc:
                    await self._writer.rollback()
                    if isinstance(exc, sqlite3.Error):
                        raise _translated(exc) from exc
                    raise
                else:
                    await self._writer.commit()
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

    # ------------------------------------------------------------ devices

    async def device(self, device_id: str) -> DeviceRow | None:
        row = await self._one(SQL["device_get"], (device_id,))
        return DeviceRow.model_validate(row) if row else None

    async def devices(self, *, include_ephemeral: bool = False, created_by: str | None = None) -> list[DeviceRow]:
        if created_by is not None:
            rows = await self._all(SQL["device_list_by_creator"], (created_by,))
        else:
            rows = await self._all(SQL["device_list_live"] if include_ephemeral else SQL["device_list"])
        return [DeviceRow.model_validate(r) for r in rows]

    # ------------------------------------------------------------ runs

    async def run(self, run_id: str) -> RunRow | None:
        row = await self._one(SQL["run_get"], (run_id,))
        return RunRow.model_validate(row) if row else None

    async def run_grant(self, run_id: str) -> tuple[models.RunStatus, list[str], str | None] | None:
        """What the gateway checks on each request, without reading the run's output: its status, its
        secrets' names and its group."""
        row = await self._one(SQL["run_grant"], (run_id,))
        if row is None:
            return None
        return models.RunStatus(row["status"]), json.loads(row["secrets"] or "[]"), row["agent_run_group_id"]

    async def run_by_idempotency_key(self, created_by: str, key: str) -> RunRow | None:
        row = await self._one(SQL["run_by_idempotency_key"], (created_by, key))
        return RunRow.model_validate(row) if row else None

    async def unfinished_runs(self) -> list[RunRow]:
        return [RunRow.model_validate(r) for r in await self._all(SQL["runs_unfinished"])]

    async def queued_runs(self, limit: int) -> list[Queued]:
        """The oldest queued runs, in the order they were created."""
        return [Queued(r["id"], r["target_id"], r["agent_run_group_id"], r["created_by"],
                       Shape(r["image"], r["cpus"], r["memory_mb"], r["pids_limit"], r["workspace_mb"], r["tmp_mb"])
                       if r["image"] and r["workspace_mb"] else None)
                for r in await self._all(SQL["runs_queued"], (limit,))]

    async def active_runs_on(self, target_id: str) -> list[str]:
        return [r["id"] for r in await self._all(SQL["runs_active_on_target"], (target_id,))]

    async def runs(self, q: models.RunListQuery, *, created_by: str | None = None,
                   budget: int = 1 << 62) -> list[RunRow]:
        """Newest first, keyset-paged by (created_at, id); fetches one extra row to know if more follow.
        Output and stderr only while the page's running total of them is within `budget` bytes; past it
        the runs come without them (`output_omitted`), and are never read."""
        where, params = [], {}
        if created_by is not None:
            where.append("created_by = :created_by")
            params["created_by"] = created_by
        if q.target_id:
            where.append("target_id = :target_id")
            params["target_id"] = q.target_id
        if q.status:
            where.append("status = :status")
            params["status"] = q.status.value
        if q.cursor:
            where.append("(created_at, id) < (SELECT created_at, id FROM agent_runs WHERE id = :cursor)")
            params["cursor"] = q.cursor
        page = "SELECT id, created_at FROM agent_runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql = (f"WITH page AS ({page} ORDER BY created_at DESC, id DESC LIMIT :limit), weighed AS (SELECT p.id AS "
               f"wid, p.created_at AS wat, sum({_BODY_SIZE}) OVER (ORDER BY p.created_at DESC, p.id DESC) AS running "
               f"FROM page p JOIN agent_runs r ON r.id = p.id) SELECT {_LISTED} FROM weighed w JOIN agent_runs ON "
               "agent_runs.id = w.wid ORDER BY w.wat DESC, w.wid DESC")
        params |= {"limit": q.limit + 1, "budget": budget}
        return [RunRow.model_validate(r) for r in await self._all(sql, params)]

    async def events(self, stream: str, after: int, limit: int, budget: int | None = None) -> list[EventRow]:
        """A stream's events after a sequence number (`topics.run(id)`, `topics.group(id)`); with `budget`,
        no more once their payloads and messages pass that many bytes (the first always)."""
        rows = await (self._all(SQL["stream_after"], (stream, after, limit)) if budget is None else
                      self._all(SQL["stream_after_within"], (stream, after, limit, budget)))
        return [EventRow.model_validate(r) for r in rows]

    async def artifacts(self, run_id: str) -> list[ArtifactRow]:
        return [ArtifactRow.model_validate(r) for r in await self._all(SQL["artifacts_of_run"], (run_id,))]

    async def artifact(self, run_id: str, path: str) -> ArtifactRow | None:
        row = await self._one(SQL["artifact_get"], (run_id, path))
        return ArtifactRow.model_validate(row) if row else None

    # ------------------------------------------------------------ sessions

    async def session(self, session_id: str) -> SessionRow | None:
        row = await self._one(SQL["session_get"], (session_id,))
        return SessionRow.model_validate(row) if row else None

    async def session_by_token_hash(self, token_hash: str) -> SessionRow | None:
        row = await self._one(SQL["session_by_token"], (token_hash,))
        return SessionRow.model_validate(row) if row else None

    async def sessions(self) -> list[SessionRow]:
        return [SessionRow.model_validate(r) for r in await self._all(SQL["sessions_all"])]

    async def descendants(self, session_id: str) -> list[SessionRow]:
        """Every session below `session_id`, shallowest first."""
        return [SessionRow.model_validate(r) for r in await self._all(SQL["sessions_descendants"], {"id": session_id})]

    async def sessions_without_limits(self) -> list[SessionRow]:
        """Sessions spawned before effective limits were recorded, parents before their children."""
        return [SessionRow.model_validate(r) for r in await self._all(SQL["sessions_without_limits"])]

    async def next_session_expiry(self) -> datetime | None:
        row = await self._one(SQL["sessions_next_expiry"])
        return datetime.fromisoformat(row["at"]) if row and row["at"] else None

    async def expired_sessions(self, now: datetime) -> list[str]:
        return [r["id"] for r in await self._all(SQL["sessions_expired"], (ts(now),))]

    async def unfinished_runs_of(self, session_id: str) -> list[str]:
        return [r["id"] for r in await self._all(SQL["runs_unfinished_of"], (session_id,))]

    # ------------------------------------------------------------ souls

    async def soul_snapshot(self, snapshot_id: str) -> SoulSnapshotRow | None:
        row = await self._one(SQL["soul_snapshot_get"], (snapshot_id,))
        return SoulSnapshotRow.model_validate(row) if row else None

    async def runs_by_ids(self, run_ids: list[str], *, budget: int | None = None) -> dict[str, RunRow]:
        """The runs by id. With `budget`, output and stderr only of the first runs (in `run_ids`' order)
        whose outputs together are within it; the rest come without (`output_omitted`), never read."""
        carried = set(run_ids)
        if budget is not None:
            sizes: dict[str, int] = {}
            for chunk in _chunks(run_ids):
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT r.id, {_BODY_SIZE} AS size FROM agent_runs r WHERE r.id IN ({marks})"
                sizes.update({r["id"]: r["size"] for r in await self._all(sql, chunk)})
            carried, total = set(), 0
            for run_id in run_ids:
                total += sizes.get(run_id, 0)
                if total > budget:
                    break
                carried.add(run_id)
        found: dict[str, RunRow] = {}
        for columns, ids in ((RUN_COLUMNS, [i for i in run_ids if i in carried]),
                             (_SUMMARY, [i for i in run_ids if i not in carried])):
            for chunk in _chunks(ids):
                sql = f"SELECT {columns} FROM agent_runs WHERE id IN ({', '.join('?' * len(chunk))})"
                found.update({r["id"]: RunRow.model_validate(r) for r in await self._all(sql, chunk)})
        return found

    async def session_workspace(self, session_id: str) -> str | None:
        row = await self._one(SQL["session_workspace"], (session_id,))
        return row["workspace_id"] if row else None

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


def _chunks(items: list[str], size: int = 500) -> list[list[str]]:
    """`items` in pieces small enough for one `IN (...)` each."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def _translated(exc: sqlite3.Error) -> errors.EngineError:
    """The driver's errors in the engine's terms, once, here."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in text:
        return errors.Conflict(f"already exists ({text})", evidence={"constraint": text})
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return errors.Busy(f"the database is busy ({text}); retry", suggested_command="agentdock daemon status")
    return errors.EngineError(f"database error: {text}")
