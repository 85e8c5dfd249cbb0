"""The store's SQL and operations for the leased task queue (mixed into `store.Tx` and `store.Store`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from engine import topics
from engine.sqlvalues import Connected, Reading, encode, ts
from engine.tasks.models import TaskRow, TaskRunRow

SUMMARY_COLUMNS = (
    "id", "title", "identifier", "priority", "max_attempts", "workspace_id", "scope", "status", "paused", "attempts",
    "failures", "available_at", "current_run_id", "failure_kind", "latest_event_seq", "created_by", "created_at",
    "updated_at", "finished_at", "body_bytes")
"""What a task list reads of every task; its bodies (payload, result, error) only within the page's budget."""

# The task queue (issue 9). A claim picks the highest-priority, oldest claimable task of a workspace
# (any workspace for the local user); every change to a run is a compare-and-set on its status, its
# claim token's hash and its lease, so a stale holder's call applies to nothing. A claim takes its task
# with the row locked, skipping those other claims hold (PostgreSQL; a comment to SQLite): claims,
# heartbeats and ends run side by side there (`Store.write(rows=True)`).
SQL = {
    "task_insert": (
        "INSERT INTO tasks (id, title, identifier, priority, payload, max_attempts, workspace_id, scope, status, "
        "paused, available_at, created_by, created_at, updated_at, body_bytes) VALUES (:id, :title, :identifier, "
        ":priority, :payload, :max_attempts, :workspace_id, :scope, 'queued', :paused, :available_at, :created_by, "
        ":created_at, :updated_at, :body_bytes)"
    ),
    "task_get": "SELECT * FROM tasks WHERE id = ?",
    # A page weighs its bodies by `body_bytes` (never reading them): those within :budget are read whole,
    # the rest are summaries (no payload or result, the error cut). :budget -1: summaries only.
    "task_list": (
        "WITH page AS (SELECT rowid AS rid, sum(body_bytes) OVER (ORDER BY created_at DESC, rowid DESC) AS running "
        "FROM tasks WHERE (:ws IS NULL OR workspace_id = :ws) AND (:status IS NULL OR status = :status) "
        "ORDER BY created_at DESC, rowid DESC LIMIT :limit) "
        f"SELECT {', '.join('t.' + c for c in SUMMARY_COLUMNS)}, "
        "CASE WHEN p.running <= :budget THEN t.payload END AS payload, "
        "CASE WHEN p.running <= :budget THEN t.result END AS result, "
        "CASE WHEN p.running <= :budget THEN t.error ELSE substr(t.error, 1, 200) END AS error, "
        "p.running > :budget AS bodies_omitted FROM page p JOIN tasks t ON t.rowid = p.rid "
        "ORDER BY t.created_at DESC, t.rowid DESC"
    ),
    "task_next_claimable": (
        "SELECT id FROM tasks WHERE status = 'queued' AND workspace_id = :ws AND paused = 0 AND available_at <= :now "
        "ORDER BY priority DESC, created_at, rowid LIMIT 1 /*FOR UPDATE SKIP LOCKED*/"
    ),
    "task_next_claimable_anywhere": (
        "SELECT id FROM tasks WHERE status = 'queued' AND paused = 0 AND available_at <= :now "
        "ORDER BY priority DESC, created_at, rowid LIMIT 1 /*FOR UPDATE SKIP LOCKED*/"
    ),
    "task_next_available": (
        "SELECT min(available_at) AS at FROM tasks WHERE status = 'queued' AND paused = 0 "
        "AND (:ws IS NULL OR workspace_id = :ws)"
    ),
    "task_claim": (
        "UPDATE tasks SET status = 'claimed', attempts = attempts + 1, current_run_id = :run_id, updated_at = :now "
        "WHERE id = :id AND status = 'queued' RETURNING attempts, current_run_id"
    ),
    "task_requeue": (
        "UPDATE tasks SET status = 'queued', failures = failures + :failed, available_at = :available_at, "
        "current_run_id = NULL, updated_at = :now WHERE id = :id AND status = 'claimed' AND current_run_id = :run_id "
        "RETURNING id"
    ),
    "task_finish": (
        "UPDATE tasks SET status = :status, failures = failures + :failed, failure_kind = :failure_kind, "
        "error = :error, result = :result, finished_at = :now, updated_at = :now, "
        "body_bytes = body_bytes + COALESCE(length(CAST(:result AS BLOB)), 0) "
        "+ COALESCE(length(CAST(:error AS BLOB)), 0) WHERE id = :id AND status = 'claimed' AND current_run_id = :run_id "
        "RETURNING id"
    ),
    "task_event_bump": "UPDATE tasks SET latest_event_seq = latest_event_seq + 1 WHERE id = ? RETURNING *",
    "task_event_insert": (
        "INSERT INTO task_events (task_id, sequence, run_id, type, message, payload, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "task_events": "SELECT * FROM task_events WHERE task_id = ? ORDER BY sequence",
    "task_run_insert": (
        "INSERT INTO task_runs (id, task_id, attempt, status, session_id, claim_token_hash, lease_seconds, "
        "claimed_at, heartbeat_at, lease_until, previous_run_id) VALUES (:id, :task_id, :attempt, 'running', "
        ":session_id, :claim_token_hash, :lease_seconds, :now, :now, :lease_until, "
        "(SELECT p.id FROM task_runs p WHERE p.task_id = :task_id ORDER BY p.attempt DESC LIMIT 1)) RETURNING *"
    ),
    "task_run_get": "SELECT * FROM task_runs WHERE id = ?",
    "task_runs_of": "SELECT * FROM task_runs WHERE task_id = ? ORDER BY attempt",
    "task_run_heartbeat": (
        "UPDATE task_runs SET heartbeat_at = :now, lease_until = :lease_until, lease_seconds = :lease_seconds "
        "WHERE id = :id AND claim_token_hash = :hash AND session_id = :session_id AND status = 'running' "
        "AND lease_until > :now RETURNING *"
    ),
    "task_run_end": (
        "UPDATE task_runs SET status = :status, ended_at = :now, error = :error, failure_kind = :failure_kind, "
        "result = :result WHERE id = :id AND claim_token_hash = :hash AND session_id = :session_id "
        "AND status = 'running' AND lease_until > :now RETURNING *"
    ),
    "task_run_expire": (
        "UPDATE task_runs SET status = 'expired', ended_at = :now, failure_kind = 'lease_expired', "
        "error = 'the lease ran out without a heartbeat' WHERE id = :id AND status = 'running' AND lease_until <= :now "
        "RETURNING id"
    ),
    "task_runs_expired": "SELECT * FROM task_runs WHERE status = 'running' AND lease_until <= ? ORDER BY lease_until",
    "task_runs_next_expiry": "SELECT min(lease_until) AS at FROM task_runs WHERE status = 'running'",
    "task_runs_held_by": (
        "SELECT count(*) AS n FROM task_runs WHERE session_id = ? AND status = 'running' AND lease_until > ?"
    ),
    "task_runs_live_of": (
        "SELECT * FROM task_runs WHERE session_id = ? AND status = 'running' AND lease_until > ? ORDER BY claimed_at"
    ),
}


class TaskWrites(Connected):
    """The task queue in a write transaction: claims, leases and their compare-and-sets (`store.Tx`)."""

    async def insert_task(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["task_insert"], encode(row))
        self.touch(topics.TASKS)

    async def task(self, task_id: str) -> TaskRow | None:
        rows = await self.conn.execute_fetchall(SQL["task_get"], (task_id,))
        return TaskRow.model_validate(dict(rows[0])) if rows else None

    async def task_run(self, run_id: str) -> TaskRunRow | None:
        rows = await self.conn.execute_fetchall(SQL["task_run_get"], (run_id,))
        return TaskRunRow.model_validate(dict(rows[0])) if rows else None

    async def next_claimable_task(self, workspace_id: str | None) -> str | None:
        sql = SQL["task_next_claimable_anywhere" if workspace_id is None else "task_next_claimable"]
        rows = await self.conn.execute_fetchall(sql, {"now": self.stamp, "ws": workspace_id})
        return rows[0][0] if rows else None

    async def leases_held(self, session_id: str) -> int:
        ((n,),) = await self.conn.execute_fetchall(SQL["task_runs_held_by"], (session_id, self.stamp))
        return int(n)

    async def claim_task(self, task_id: str, run: dict[str, Any]) -> TaskRunRow | None:
        """Compare-and-set: the queued task becomes claimed by a new run; returns the run, or None."""
        rows = await self.conn.execute_fetchall(SQL["task_claim"], {"id": task_id, "run_id": run["id"],
                                                                    "now": self.stamp})
        if not rows:
            return None
        (inserted,) = await self.conn.execute_fetchall(SQL["task_run_insert"], encode({
            **run, "task_id": task_id, "attempt": rows[0][0], "now": self.stamp}))
        self.touch(topics.TASKS)
        return TaskRunRow.model_validate(dict(inserted))

    async def heartbeat_task_run(self, run_id: str, token_hash: str, session_id: str, lease_seconds: float,
                                 lease_until: datetime) -> TaskRunRow | None:
        """Compare-and-set: extend the lease only for the current holder of a live lease; the run as it
        is now, or None."""
        return self._run_changed(await self.conn.execute_fetchall(SQL["task_run_heartbeat"], {
            "id": run_id, "hash": token_hash, "session_id": session_id, "lease_seconds": lease_seconds,
            "lease_until": ts(lease_until), "now": self.stamp}))

    def _run_changed(self, rows: list[Any]) -> TaskRunRow | None:
        if not rows:
            return None
        self.touch(topics.TASKS)
        return TaskRunRow.model_validate(dict(rows[0]))

    async def end_task_run(self, run_id: str, token_hash: str, session_id: str, status: str, *,
                           error: str | None = None, failure_kind: str | None = None,
                           result: Any = None) -> TaskRunRow | None:
        """Compare-and-set: end a run only for the current holder of a live lease; the ended run, or None."""
        return self._run_changed(await self.conn.execute_fetchall(SQL["task_run_end"], {
            "id": run_id, "hash": token_hash, "session_id": session_id, "status": str(status), "error": error,
            "failure_kind": None if failure_kind is None else str(failure_kind),
            "result": None if result is None else json.dumps(result), "now": self.stamp}))

    async def expire_task_run(self, run_id: str) -> bool:
        """Compare-and-set: a running run whose lease has passed becomes expired."""
        return await self.cas(SQL["task_run_expire"], {"id": run_id, "now": self.stamp}, topics.TASKS) is not None

    async def requeue_task(self, task_id: str, run_id: str, *, failed: bool, available_at: datetime) -> bool:
        return await self.cas(SQL["task_requeue"], {
            "id": task_id, "run_id": run_id, "failed": int(failed), "available_at": ts(available_at),
            "now": self.stamp}, topics.TASKS) is not None

    async def finish_task(self, task_id: str, run_id: str, status: str, *, failed: bool = False,
                          failure_kind: str | None = None, error: str | None = None, result: Any = None) -> bool:
        return await self.cas(SQL["task_finish"], {
            "id": task_id, "run_id": run_id, "status": str(status), "failed": int(failed),
            "failure_kind": None if failure_kind is None else str(failure_kind),
            "error": error, "result": None if result is None else json.dumps(result), "now": self.stamp},
            topics.TASKS) is not None

    async def task_event(self, task_id: str, run_id: str | None, type_: str, message: str,
                         payload: dict[str, Any]) -> TaskRow:
        """Append to the task's own event stream (its next sequence, in this transaction); returns the
        task as it is now."""
        (row,) = await self.conn.execute_fetchall(SQL["task_event_bump"], (task_id,))
        task = TaskRow.model_validate(dict(row))
        await self.conn.execute(SQL["task_event_insert"], (task_id, task.latest_event_seq, run_id, type_, message,
                                                           json.dumps(payload), self.stamp))
        return task


class TaskReads(Reading):
    """The task queue read on the reader (`store.Store`)."""

    async def task(self, task_id: str) -> TaskRow | None:
        row = await self._one(SQL["task_get"], (task_id,))
        return TaskRow.model_validate(row) if row else None

    async def list(self, workspace_id: str | None, status: str | None, limit: int,
                    budget: int = -1) -> list[TaskRow]:
        """Newest first; the bodies of those within `budget` bytes (-1: none), the rest as summaries."""
        rows = await self._all(SQL["task_list"], {"ws": workspace_id, "status": status, "limit": limit,
                                                  "budget": budget})
        return [TaskRow.model_validate(r) for r in rows]

    async def task_run(self, run_id: str) -> TaskRunRow | None:
        row = await self._one(SQL["task_run_get"], (run_id,))
        return TaskRunRow.model_validate(row) if row else None

    async def task_runs(self, task_id: str) -> list[TaskRunRow]:
        return [TaskRunRow.model_validate(r) for r in await self._all(SQL["task_runs_of"], (task_id,))]

    async def task_events(self, task_id: str) -> list[dict[str, Any]]:
        return await self._all(SQL["task_events"], (task_id,))

    async def expired_task_runs(self, now: datetime) -> list[TaskRunRow]:
        return [TaskRunRow.model_validate(r) for r in await self._all(SQL["task_runs_expired"], (ts(now),))]

    async def next_lease_expiry(self) -> datetime | None:
        row = await self._one(SQL["task_runs_next_expiry"])
        return datetime.fromisoformat(row["at"]) if row and row["at"] else None

    async def next_task_available(self, workspace_id: str | None) -> datetime | None:
        row = await self._one(SQL["task_next_available"], {"ws": workspace_id})
        return datetime.fromisoformat(row["at"]) if row and row["at"] else None

    async def live_task_runs_of(self, session_id: str, now: datetime) -> list[TaskRunRow]:
        return [TaskRunRow.model_validate(r) for r in await self._all(SQL["task_runs_live_of"], (session_id, ts(now)))]
