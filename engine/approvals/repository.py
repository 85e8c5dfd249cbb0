"""The store's SQL and operations for approvals (mixed into `store.Tx` and `store.Store`).

Every change of an approval's status is one compare-and-set that also checks its time (`expires_at`
against the transaction's `now`), so a decision or a use that comes too late applies to nothing, and
it touches the approval's topic, which wakes whoever waits on it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from engine import topics
from engine.approvals.models import ApprovalRow
from engine.sqlvalues import Connected, Reading, encode, ts

OPEN = "('pending', 'approved')"
SQL = {
    "approval_insert": (
        "INSERT INTO approvals (id, session_id, workspace_id, profile_id, action, summary, detail, status, "
        "expires_at, created_at, updated_at) VALUES (:id, :session_id, :workspace_id, :profile_id, :action, "
        ":summary, :detail, 'pending', :expires_at, :created_at, :created_at)"
    ),
    "approval_get": "SELECT * FROM approvals WHERE id = ?",
    "approval_latest": (
        "SELECT * FROM approvals WHERE session_id = ? AND action = ? ORDER BY created_at DESC, rowid DESC LIMIT 1"
    ),
    "approvals_pending_of": (
        "SELECT count(*) FROM approvals WHERE session_id = ? AND status = 'pending' AND expires_at > ?"
    ),
    "approval_decide": (
        "UPDATE approvals SET status = :status, decided_by = :decided_by, decided_at = :now, reason = :reason, "
        "expires_at = :expires_at, updated_at = :now WHERE id = :id AND status = 'pending' AND expires_at > :now "
        "RETURNING id"
    ),
    "approval_use": (
        "UPDATE approvals SET status = 'used', used_at = :now, updated_at = :now WHERE id = :id "
        "AND session_id = :session_id AND action = :action AND status = 'approved' AND expires_at > :now RETURNING id"
    ),
    "approval_expire": (
        f"UPDATE approvals SET status = 'expired', updated_at = :now WHERE id = :id AND status IN {OPEN} "
        "AND expires_at <= :now RETURNING id"
    ),
    "approvals_due": f"SELECT * FROM approvals WHERE status IN {OPEN} AND expires_at <= ? ORDER BY expires_at LIMIT 500",
    "approvals_next_expiry": f"SELECT min(expires_at) AS at FROM approvals WHERE status IN {OPEN}",
    # A session's view: its own approvals and those of the sessions below it (the local user's: all).
    # The status filter sees what a reader would: an open one past its time is expired.
    "approvals_list": (
        "WITH RECURSIVE tree(id) AS (SELECT :me UNION SELECT s.id FROM sessions s JOIN tree t "
        "ON s.parent_session_id = t.id) "
        "SELECT * FROM approvals WHERE (:all = 1 OR session_id IN (SELECT id FROM tree)) AND (:status IS NULL OR "
        f"(CASE WHEN status IN {OPEN} AND expires_at <= :now THEN 'expired' ELSE status END) = :status) "
        "ORDER BY created_at DESC, rowid DESC LIMIT :limit"
    ),
}


class ApprovalWrites(Connected):
    """Approvals in a write transaction (`store.Tx`)."""

    async def latest_approval(self, session_id: str, action: str) -> ApprovalRow | None:
        """The newest approval a session has for an action (whatever its status)."""
        rows = await self.conn.execute_fetchall(SQL["approval_latest"], (session_id, action))
        return ApprovalRow.model_validate(dict(rows[0])) if rows else None

    async def approval(self, approval_id: str) -> ApprovalRow | None:
        rows = await self.conn.execute_fetchall(SQL["approval_get"], (approval_id,))
        return ApprovalRow.model_validate(dict(rows[0])) if rows else None

    async def pending_approvals_of(self, session_id: str) -> int:
        ((n,),) = await self.conn.execute_fetchall(SQL["approvals_pending_of"], (session_id, self.stamp))
        return int(n)

    async def insert_approval(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["approval_insert"], encode({**row, "detail": json.dumps(row["detail"])}))
        self.touch(topics.approval(row["id"]))

    async def decide_approval(self, approval_id: str, status: str, decided_by: str, reason: str | None,
                              expires_at: datetime) -> bool:
        """Compare-and-set: decide a pending approval whose time has not run out; says whether it did."""
        return await self.cas(SQL["approval_decide"], {
            "id": approval_id, "status": status, "decided_by": decided_by, "reason": reason,
            "expires_at": ts(expires_at), "now": self.stamp}, topics.approval(approval_id)) is not None

    async def use_approval(self, approval_id: str, session_id: str, action: str) -> bool:
        """Compare-and-set: use an approved, unexpired approval of this session for this action, once."""
        return await self.cas(SQL["approval_use"], {"id": approval_id, "session_id": session_id, "action": action,
                                                    "now": self.stamp}, topics.approval(approval_id)) is not None

    async def expire_approval(self, approval_id: str) -> bool:
        return await self.cas(SQL["approval_expire"], {"id": approval_id, "now": self.stamp},
                              topics.approval(approval_id)) is not None


class ApprovalReads(Reading):
    """Approvals read on the reader (`store.Store`)."""

    async def approval(self, approval_id: str) -> ApprovalRow | None:
        row = await self._one(SQL["approval_get"], (approval_id,))
        return ApprovalRow.model_validate(row) if row else None

    async def list(self, *, session_id: str | None, status: str | None, limit: int,
                        now: datetime) -> list[ApprovalRow]:
        """Newest first: all of them (`session_id` None), or a session's and those of the sessions below it."""
        rows = await self._all(SQL["approvals_list"], {"me": session_id, "all": int(session_id is None),
                                                       "status": status, "now": ts(now), "limit": limit})
        return [ApprovalRow.model_validate(r) for r in rows]

    async def approvals_due(self, now: datetime) -> list[ApprovalRow]:
        return [ApprovalRow.model_validate(r) for r in await self._all(SQL["approvals_due"], (ts(now),))]

    async def next_approval_expiry(self) -> datetime | None:
        row = await self._one(SQL["approvals_next_expiry"])
        return datetime.fromisoformat(row["at"]) if row and row["at"] else None
