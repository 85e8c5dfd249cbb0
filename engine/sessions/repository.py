"""The store's SQL and operations for sessions (mixed into `store.Tx` and `store.Store`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from engine import topics
from engine.sessions.models import SessionRow
from engine.sqlvalues import Connected, Reading, encode, ts

SQL = {
    "runs_unfinished_of": "SELECT id FROM agent_runs WHERE created_by = ? AND status IN ('queued', 'running')",
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
        "WHERE id = :id AND status = 'active' RETURNING id"
    ),
    "session_set_run": "UPDATE sessions SET run_id = :run_id, updated_at = :now WHERE id = :id",
    # Locked while the transaction lasts (PostgreSQL): a stop waits for what it saw the session live for.
    "session_active": "SELECT 1 FROM sessions WHERE id = ? AND status = 'active' /*FOR SHARE*/",
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
    "session_workspace": "SELECT workspace_id FROM sessions WHERE id = ?",
}


class SessionWrites(Connected):
    """Sessions in a write transaction (`store.Tx`)."""

    async def insert_session(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["session_insert"], encode({"profile_id": None, "profile_snapshot": None, **row}))
        self.touch(topics.SESSIONS)

    async def end_session(self, session_id: str, status: str, reason: str) -> bool:
        """Compare-and-set: stop or expire a session that is still active; says whether it did."""
        return await self.cas(SQL["session_end"], {"id": session_id, "status": status, "reason": reason,
                                                   "now": self.stamp}, topics.SESSIONS) is not None

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


class SessionReads(Reading):
    """Sessions as the store reads them (`store.Store`)."""

    async def session(self, session_id: str) -> SessionRow | None:
        row = await self._one(SQL["session_get"], (session_id,))
        return SessionRow.model_validate(row) if row else None

    async def session_by_token_hash(self, token_hash: str) -> SessionRow | None:
        row = await self._one(SQL["session_by_token"], (token_hash,))
        return SessionRow.model_validate(row) if row else None

    async def list(self) -> list[SessionRow]:
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

    async def session_workspace(self, session_id: str) -> str | None:
        row = await self._one(SQL["session_workspace"], (session_id,))
        return row["workspace_id"] if row else None
