"""The store's SQL and operations for agent runtime profiles (mixed into `store.Tx` and `store.Store`)."""

from __future__ import annotations

from typing import Any

from engine.groups.repository import ENTRIES
from engine.profiles.models import ProfileRow
from engine.sqlvalues import Connected, Reading, encode

# Agent runtime profiles (issue 10). A scope is the tenant ('' : workspace_id NULL) or one workspace.
PROFILE_SCOPE = "COALESCE(workspace_id, '')"
SQL = {
    "profile_insert": (
        "INSERT INTO agent_runtime_profiles (id, workspace_id, name, runtime, description, applies_to, tools, "
        "connectors, env, secrets, model, image, resources, network, policy, metadata, is_default, created_by, "
        "created_at, updated_at) VALUES (:id, :workspace_id, :name, :runtime, :description, :applies_to, :tools, "
        ":connectors, :env, :secrets, :model, :image, :resources, :network, :policy, :metadata, :is_default, "
        ":created_by, :created_at, :updated_at)"
    ),
    "profile_get": "SELECT * FROM agent_runtime_profiles WHERE id = ?",
    "profile_list": (
        "SELECT * FROM agent_runtime_profiles WHERE (:all_ws = 1 AND (:ws IS NULL OR workspace_id = :ws)) "
        "OR (:all_ws = 0 AND (workspace_id IS NULL OR workspace_id = :own) AND (:ws IS NULL OR workspace_id = :ws)) "
        "ORDER BY COALESCE(workspace_id, ''), name"
    ),
    "profile_by_name": f"SELECT id FROM agent_runtime_profiles WHERE {PROFILE_SCOPE} = ? AND name = ? AND id != ?",
    "profile_default": f"SELECT * FROM agent_runtime_profiles WHERE {PROFILE_SCOPE} = ? AND is_default = 1",
    "profile_clear_default": (
        f"UPDATE agent_runtime_profiles SET is_default = 0, updated_at = :now WHERE {PROFILE_SCOPE} = :scope "
        "AND is_default = 1 AND id != :id"
    ),
    "profile_delete": "DELETE FROM agent_runtime_profiles WHERE id = ?",
    "profile_live_runs": (
        "SELECT id FROM agent_runs WHERE profile_id = ? AND status IN ('queued', 'running') ORDER BY rowid LIMIT 5"
    ),
    "profile_live_sessions": (
        "SELECT id FROM sessions WHERE profile_id = ? AND status = 'active' ORDER BY created_at LIMIT 5"
    ),
    "profile_queued_entries": (
        f"SELECT id FROM {ENTRIES} WHERE status = 'queued' AND (json_extract(request, '$.agent_runtime_profile_id') = "
        ":id OR json_extract(request, '$.agent_profile_id') = :id) LIMIT 5"
    ),
    "devices_live_created_by_tree": (
        "WITH RECURSIVE tree(id) AS (SELECT :id UNION SELECT s.id FROM sessions s JOIN tree t "
        "ON s.parent_session_id = t.id) "
        "SELECT count(*) FROM devices WHERE deleted_at IS NULL AND created_by IN (SELECT id FROM tree)"
    ),
}
PROFILE_UPDATABLE = frozenset(
    "name runtime description applies_to tools connectors env secrets model image resources network policy "
    "metadata is_default".split())


class ProfileWrites(Connected):
    """Profiles in a write transaction, and the counts a profile's limits need (`store.Tx`)."""

    async def profile(self, profile_id: str) -> ProfileRow | None:
        rows = await self.conn.execute_fetchall(SQL["profile_get"], (profile_id,))
        return ProfileRow.model_validate(dict(rows[0])) if rows else None

    async def profile_named(self, workspace_id: str | None, name: str, other_than: str = "") -> str | None:
        """The id of another profile of that name in that scope, if one exists."""
        rows = await self.conn.execute_fetchall(SQL["profile_by_name"], (workspace_id or "", name, other_than))
        return rows[0][0] if rows else None

    async def insert_profile(self, row: dict[str, Any]) -> None:
        if row.get("is_default"):
            await self._clear_default(row["workspace_id"], row["id"])
        await self.conn.execute(SQL["profile_insert"], encode(row))

    async def update_profile(self, profile_id: str, workspace_id: str | None, **fields: Any) -> None:
        bad = set(fields) - PROFILE_UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {bad}")
        if fields.get("is_default"):
            await self._clear_default(workspace_id, profile_id)
        fields["updated_at"] = self.now
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        await self.conn.execute(f"UPDATE agent_runtime_profiles SET {sets} WHERE id = :id",
                                encode({**fields, "id": profile_id}))

    async def _clear_default(self, workspace_id: str | None, profile_id: str) -> None:
        """A new default takes over its scope: the old one stops being it, in this transaction."""
        await self.conn.execute(SQL["profile_clear_default"], {"scope": workspace_id or "", "id": profile_id,
                                                                "now": self.stamp})

    async def delete_profile(self, profile_id: str) -> None:
        await self.conn.execute(SQL["profile_delete"], (profile_id,))

    async def profile_users(self, profile_id: str) -> dict[str, list[str]]:
        """What still uses a profile: unfinished runs, live sessions, queued group entries that name it."""
        out = {}
        for kind, sql in (("runs", "profile_live_runs"), ("sessions", "profile_live_sessions"),
                          ("group_entries", "profile_queued_entries")):
            params: Any = {"id": profile_id} if kind == "group_entries" else (profile_id,)
            found = [r[0] for r in await self.conn.execute_fetchall(SQL[sql], params)]
            if found:
                out[kind] = found
        return out

    async def live_devices_of_tree(self, session_id: str) -> int:
        """Live devices (sandboxes, computers, ephemeral ones of unfinished runs) created by a session or
        any session spawned below it."""
        ((n,),) = await self.conn.execute_fetchall(SQL["devices_live_created_by_tree"], {"id": session_id})
        return int(n)


class ProfileReads(Reading):
    """Profiles read on the reader (`store.Store`)."""

    async def profile(self, profile_id: str) -> ProfileRow | None:
        row = await self._one(SQL["profile_get"], (profile_id,))
        return ProfileRow.model_validate(row) if row else None

    async def list(self, *, workspace_id: str | None, own_workspace: str | None) -> list[ProfileRow]:
        """Profiles by scope then name: all (or one workspace's) for the local user (`own_workspace` None);
        for a session, the tenant's and its own workspace's."""
        rows = await self._all(SQL["profile_list"], {"all_ws": int(own_workspace is None), "ws": workspace_id,
                                                     "own": own_workspace})
        return [ProfileRow.model_validate(r) for r in rows]

    async def live_devices_of_tree(self, session_id: str) -> int:
        row = await self._one(SQL["devices_live_created_by_tree"], {"id": session_id})
        return int(next(iter(row.values()))) if row else 0

    async def default_profile(self, workspace_id: str | None) -> ProfileRow | None:
        """The default of a workspace (None: the tenant's)."""
        row = await self._one(SQL["profile_default"], (workspace_id or "",))
        return ProfileRow.model_validate(row) if row else None
