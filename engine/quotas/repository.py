"""The store's SQL for quotas and for what a tree of sessions holds (mixed into `store.Tx` and
`store.Store`): usage per tree and per workspace, counted in the transaction that writes; the tree a
session belongs to; its live devices; the secrets its runs and profiles were given."""

from __future__ import annotations

import json
from typing import NamedTuple

from engine.sqlvalues import Connected, Reading

ROOT_SESSION = "ses_root"

# A tree is a child of the local user and every session spawned below it: its id is that child's.
TREE_SESSIONS = (
    "WITH RECURSIVE tree(id) AS (SELECT :tree UNION SELECT s.id FROM sessions s JOIN tree t "
    "ON s.parent_session_id = t.id) "
)
SQL = {
    "usage_add": (
        "INSERT INTO usage (scope, messages, message_bytes, tasks, task_bytes) VALUES (:scope, :messages, "
        ":message_bytes, :tasks, :task_bytes) ON CONFLICT (scope) DO UPDATE SET messages = usage.messages + "
        "excluded.messages, message_bytes = usage.message_bytes + excluded.message_bytes, tasks = usage.tasks + "
        "excluded.tasks, task_bytes = usage.task_bytes + excluded.task_bytes RETURNING messages, message_bytes, tasks, task_bytes"
    ),
    "usage_get": "SELECT messages, message_bytes, tasks, task_bytes FROM usage WHERE scope = ?",
    "session_tree": (
        "WITH RECURSIVE up(id, parent) AS (SELECT id, parent_session_id FROM sessions WHERE id = ? "
        "UNION ALL SELECT s.id, s.parent_session_id FROM sessions s JOIN up ON s.id = up.parent) "
        f"SELECT id, (SELECT workspace_id FROM sessions WHERE id = ?) AS workspace_id FROM up "
        f"WHERE parent = '{ROOT_SESSION}'"
    ),
    "devices_live_of_workspace": (
        "SELECT count(*) FROM devices d JOIN sessions s ON s.id = d.created_by "
        "WHERE d.deleted_at IS NULL AND s.workspace_id = ?"
    ),
    # The secrets the runs of a tree were given, those of every run on a device one of its runs used
    # (a device's files outlive a run), and those its sessions' profiles name.
    "secrets_of_tree": (
        TREE_SESSIONS + ", mine AS (SELECT target_id, secrets FROM agent_runs WHERE created_by IN "
        "(SELECT id FROM tree)) "
        "SELECT secrets AS names FROM mine WHERE secrets != '[]' "
        "UNION SELECT r.secrets FROM agent_runs r WHERE r.target_id IN (SELECT target_id FROM mine) "
        "AND r.secrets != '[]' "
        "UNION SELECT json_extract(profile_snapshot, '$.secrets') FROM sessions WHERE id IN (SELECT id FROM tree) "
        "AND profile_snapshot IS NOT NULL"
    ),
}


class Usage(NamedTuple):
    """What a scope has written in all."""

    messages: int = 0
    message_bytes: int = 0
    tasks: int = 0
    task_bytes: int = 0


class Tree(NamedTuple):
    """The tree a session belongs to (the id of its root-most ancestor below the local user) and the
    session's workspace."""

    tree: str
    workspace_id: str


class QuotaWrites(Connected):
    """Usage counted in the writing transaction (`store.Tx`): a write past a quota raises, and the
    rollback takes the count back with it."""

    async def add_usage(self, scope: str, added: Usage) -> Usage:
        """Add to a scope's usage; its totals now."""
        (row,) = await self.conn.execute_fetchall(SQL["usage_add"], {"scope": scope, **added._asdict()})
        return Usage(*map(int, row))

    async def session_tree(self, session_id: str) -> Tree | None:
        rows = await self.conn.execute_fetchall(SQL["session_tree"], (session_id, session_id))
        return Tree(rows[0][0], rows[0][1]) if rows else None

    async def live_devices_of_workspace(self, workspace_id: str) -> int:
        """Live devices (ephemeral ones of unfinished runs too) created by the workspace's sessions."""
        ((n,),) = await self.conn.execute_fetchall(SQL["devices_live_of_workspace"], (workspace_id,))
        return int(n)


class QuotaReads(Reading):
    """Usage and trees read on the reader (`store.Store`)."""

    async def usage(self, scope: str) -> Usage:
        row = await self._one(SQL["usage_get"], (scope,))
        return Usage(**row) if row else Usage()

    async def live_devices_of_workspace(self, workspace_id: str) -> int:
        row = await self._one(SQL["devices_live_of_workspace"], (workspace_id,))
        return int(next(iter(row.values()))) if row else 0

    async def session_tree(self, session_id: str) -> Tree | None:
        row = await self._one(SQL["session_tree"], (session_id, session_id))
        return Tree(row["id"], row["workspace_id"]) if row else None

    async def secrets_of_tree(self, tree: str) -> set[str]:
        """The names of the secrets a tree of sessions holds (see `engine.masking`)."""
        names: set[str] = set()
        for row in await self._all(SQL["secrets_of_tree"], {"tree": tree}):
            if row["names"]:
                names.update(n for n in json.loads(row["names"]) if isinstance(n, str))
        return names
