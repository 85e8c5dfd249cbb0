"""The store's SQL and operations for agent run groups, their dispatches and entries (mixed into
`store.Tx` and `store.Store`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine import topics
from engine.groups.models import DispatchRow, EntryRow, GroupRow
from engine.sqlvalues import Connected, Reading, encode

ENTRIES = "agent_run_group_entries"
SQL = {
    "group_insert": (
        "INSERT INTO agent_run_groups (id, name, workspace_id, project_id, concurrency_limit, expected_runs, metadata, "
        "status, idempotency_key, request_hash, created_at, updated_at, created_by) VALUES (:id, :name, "
        ":workspace_id, :project_id, :concurrency_limit, :expected_runs, :metadata, :status, :idempotency_key, "
        ":request_hash, :created_at, :updated_at, :created_by)"
    ),
    "group_get": "SELECT * FROM agent_run_groups WHERE id = ?",
    "group_by_idempotency_key": "SELECT * FROM agent_run_groups WHERE created_by = ? AND idempotency_key = ?",
    "dispatch_insert": (
        "INSERT INTO agent_run_group_dispatches (id, group_id, first_index, count, is_async, idempotency_key, "
        "request_hash, created_at, created_by) VALUES (:id, :group_id, :first_index, :count, :is_async, "
        ":idempotency_key, :request_hash, :created_at, :created_by)"
    ),
    "dispatch_get": "SELECT * FROM agent_run_group_dispatches WHERE id = ?",
    "dispatch_by_idempotency_key": (
        "SELECT * FROM agent_run_group_dispatches WHERE created_by = ? AND idempotency_key = ?"
    ),
    "entry_insert": (
        f"INSERT INTO {ENTRIES} (id, group_id, dispatch_id, position, item_index, status, attempts, request, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)"
    ),
    "entry_next_position": f"SELECT COUNT(*) FROM {ENTRIES} WHERE group_id = ?",
    "entries_of_dispatch": f"SELECT * FROM {ENTRIES} WHERE dispatch_id = ? ORDER BY item_index",
    "entries_of_group": f"SELECT * FROM {ENTRIES} WHERE group_id = ? AND position >= ? ORDER BY position LIMIT ?",
    "entries_of_group_by_status": (
        f"SELECT * FROM {ENTRIES} WHERE group_id = ? AND position >= ? AND status = ? ORDER BY position LIMIT ?"
    ),
    "entry_counts": f"SELECT status, COUNT(*) AS n FROM {ENTRIES} WHERE group_id = ? GROUP BY status",
    "group_run_counts": "SELECT status, COUNT(*) AS n FROM agent_runs WHERE agent_run_group_id = ? GROUP BY status",
    # The oldest queued entries each group may start now: at most its concurrency_limit less its running
    # entries, in creation order, never from a group whose cancel was asked for.
    "entries_claimable": (
        "SELECT e.* FROM (SELECT q.*, q.rowid AS rid, ROW_NUMBER() OVER (PARTITION BY q.group_id ORDER BY q.rowid) "
        f"AS n FROM {ENTRIES} q WHERE q.status = 'queued') e JOIN agent_run_groups g ON g.id = e.group_id "
        "WHERE g.cancel_requested IS NULL AND e.n <= g.concurrency_limit - "
        f"(SELECT COUNT(*) FROM {ENTRIES} r WHERE r.group_id = g.id AND r.status = 'running') "
        "ORDER BY e.rid LIMIT ?"
    ),
    # Running entries whose child run has ended: the scheduler settles them (or retries a lost run).
    "entries_to_settle": (
        "SELECT e.*, r.status AS run_status, r.failure_kind AS run_failure_kind "
        f"FROM {ENTRIES} e JOIN agent_runs r ON r.id = e.run_id "
        "WHERE e.status = 'running' AND r.status IN ('succeeded', 'failed', 'canceled') ORDER BY e.rowid LIMIT ?"
    ),
    "entries_cancel_queued": (
        f"UPDATE {ENTRIES} SET status = 'canceled', updated_at = ? WHERE group_id = ? AND status = 'queued' "
        "RETURNING id, position"
    ),
    "entries_running_runs": f"SELECT run_id FROM {ENTRIES} WHERE group_id = ? AND status = 'running' ORDER BY position",
    "run_set_group": (
        "UPDATE agent_runs SET agent_run_group_id = :group_id, orchestration_role = :orchestration_role, "
        "parent_agent_run_id = :parent_agent_run_id WHERE id = :id"
    ),
    "group_open": (
        "UPDATE agent_run_groups SET status = 'running', updated_at = ? "
        "WHERE id = ? AND status IN ('queued', 'running') AND cancel_requested IS NULL RETURNING id"
    ),
    "group_request_cancel": (
        "UPDATE agent_run_groups SET cancel_requested = COALESCE(cancel_requested, ?), updated_at = ? "
        "WHERE id = ? AND status IN ('queued', 'running') RETURNING id"
    ),
}

GROUP_UPDATABLE = frozenset({"status", "cancel_requested", "finished_at"})
ENTRY_UPDATABLE = frozenset({"status", "attempts", "run_id", "diagnostic"})


class GroupWrites(Connected):
    """Groups, dispatches and entries in a write transaction (`store.Tx`)."""

    async def insert_group(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["group_insert"], encode(row))

    async def insert_dispatch(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["dispatch_insert"], encode(row))

    async def next_entry_position(self, group_id: str) -> int:
        ((n,),) = await self.conn.execute_fetchall(SQL["entry_next_position"], (group_id,))
        return int(n)

    async def insert_entries(self, group_id: str, dispatch_id: str, first: int, requests: list[dict[str, Any]],
                             ids: list[str]) -> None:
        """Queue one entry per manifest item (positions `first`, `first`+1, ...): the scheduler may claim."""
        now = self.stamp
        await self.conn.executemany(SQL["entry_insert"], [
            (entry_id, group_id, dispatch_id, first + i, i, json.dumps(req), now, now)
            for i, (entry_id, req) in enumerate(zip(ids, requests, strict=True))])
        self.touch(topics.ADMISSION)
        self.touch(topics.group(group_id))

    async def transition_group(self, group_id: str, expected: Iterable[str], **fields: Any) -> bool:
        """Compare-and-set on the group's status; says whether it applied."""
        return await self._cas("agent_run_groups", GROUP_UPDATABLE, group_id, list(expected), fields,
                               topics.group(group_id))

    async def transition_entry(self, entry_id: str, group_id: str, expected: Iterable[str], **fields: Any) -> bool:
        """Compare-and-set on an entry's status; says whether it applied (the scheduler may claim again)."""
        if "diagnostic" in fields and fields["diagnostic"] is not None:
            fields["diagnostic"] = json.dumps(fields["diagnostic"])
        applied = await self._cas(ENTRIES, ENTRY_UPDATABLE, entry_id, list(expected), fields, topics.group(group_id))
        if applied:
            self.touch(topics.ADMISSION)
        return applied

    async def group(self, group_id: str) -> GroupRow | None:
        """The group as this transaction sees it."""
        rows = await self.conn.execute_fetchall(SQL["group_get"], (group_id,))
        return GroupRow.model_validate(dict(rows[0])) if rows else None

    async def open_group(self, group_id: str) -> bool:
        """Mark the group running for a dispatch, unless it has ended or its cancel was asked for."""
        return await self.cas(SQL["group_open"], (self.stamp, group_id)) is not None

    async def request_group_cancel(self, group_id: str) -> bool:
        return await self.cas(SQL["group_request_cancel"], (self.stamp, self.stamp, group_id),
                              topics.group(group_id), topics.ADMISSION) is not None

    async def cancel_queued_entries(self, group_id: str) -> list[tuple[str, int]]:
        """End every queued entry of the group `canceled`; returns their (id, position)."""
        rows = await self.conn.execute_fetchall(SQL["entries_cancel_queued"], (self.stamp, group_id))
        self.touch(topics.group(group_id))
        return [(r[0], r[1]) for r in rows]

    async def entry_counts(self, group_id: str) -> dict[str, int]:
        """The group's entries by status, as this transaction sees them."""
        return {r[0]: r[1] for r in await self.conn.execute_fetchall(SQL["entry_counts"], (group_id,))}

    async def set_run_group(self, run_id: str, group_id: str, orchestration_role: str | None,
                            parent_agent_run_id: str | None) -> None:
        await self.conn.execute(SQL["run_set_group"], {"id": run_id, "group_id": group_id,
                                                      "orchestration_role": orchestration_role,
                                                      "parent_agent_run_id": parent_agent_run_id})


class GroupReads(Reading):
    """Groups, dispatches and entries read on the reader (`store.Store`)."""

    async def group(self, group_id: str) -> GroupRow | None:
        row = await self._one(SQL["group_get"], (group_id,))
        return GroupRow.model_validate(row) if row else None

    async def group_by_idempotency_key(self, created_by: str, key: str) -> GroupRow | None:
        row = await self._one(SQL["group_by_idempotency_key"], (created_by, key))
        return GroupRow.model_validate(row) if row else None

    async def list(self, *, status: str | None, workspace_id: str | None, project_id: str | None,
                     cursor: str | None, limit: int, created_by: str | None) -> list[GroupRow]:
        """Newest first, keyset-paged by (created_at, id); one extra row says whether more follow."""
        where, params = [], []
        for column, value in (("created_by", created_by), ("status", status), ("workspace_id", workspace_id),
                              ("project_id", project_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if cursor:
            where.append("(created_at, id) < (SELECT created_at, id FROM agent_run_groups WHERE id = ?)")
            params.append(cursor)
        sql = "SELECT * FROM agent_run_groups" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(limit + 1)
        return [GroupRow.model_validate(r) for r in await self._all(sql, params)]

    async def dispatch(self, dispatch_id: str) -> DispatchRow | None:
        row = await self._one(SQL["dispatch_get"], (dispatch_id,))
        return DispatchRow.model_validate(row) if row else None

    async def dispatch_by_idempotency_key(self, created_by: str, key: str) -> DispatchRow | None:
        row = await self._one(SQL["dispatch_by_idempotency_key"], (created_by, key))
        return DispatchRow.model_validate(row) if row else None

    async def dispatch_entries(self, dispatch_id: str) -> list[EntryRow]:
        return [EntryRow.model_validate(r) for r in await self._all(SQL["entries_of_dispatch"], (dispatch_id,))]

    async def group_entries(self, group_id: str, *, start: int = 0, limit: int = 1000,
                            status: str | None = None) -> list[EntryRow]:
        if status is None:
            rows = await self._all(SQL["entries_of_group"], (group_id, start, limit))
        else:
            rows = await self._all(SQL["entries_of_group_by_status"], (group_id, start, status, limit))
        return [EntryRow.model_validate(r) for r in rows]

    async def entry_counts(self, group_id: str) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self._all(SQL["entry_counts"], (group_id,))}

    async def group_run_counts(self, group_id: str) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self._all(SQL["group_run_counts"], (group_id,))}

    async def claimable_entries(self, limit: int) -> list[EntryRow]:
        return [EntryRow.model_validate(r) for r in await self._all(SQL["entries_claimable"], (limit,))]

    async def entries_to_settle(self, limit: int) -> list[tuple[EntryRow, str, str | None]]:
        """Running entries whose run has ended, with that run's status and failure_kind."""
        rows = await self._all(SQL["entries_to_settle"], (limit,))
        return [(EntryRow.model_validate(r), r["run_status"], r["run_failure_kind"]) for r in rows]

    async def running_entry_runs(self, group_id: str) -> list[str]:
        return [r["run_id"] for r in await self._all(SQL["entries_running_runs"], (group_id,))]
