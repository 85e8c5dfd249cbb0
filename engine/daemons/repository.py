"""The store's SQL and operations for daemons and the leader's lease (mixed into `store.Tx` and `store.Store`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.records import Row
from engine.sqlvalues import Connected, Reading, ts

SQL = {
    "daemon_register": (
        "INSERT INTO daemons (id, home, host, pid, started_at, heartbeat_at) VALUES (:id, :home, :host, :pid, :now, "
        ":now) ON CONFLICT (id) DO UPDATE SET home = excluded.home, host = excluded.host, pid = excluded.pid, "
        "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, lost_at = NULL"
    ),
    "daemon_beat": "UPDATE daemons SET heartbeat_at = :now WHERE id = :id AND lost_at IS NULL RETURNING id",
    "daemons_all": "SELECT * FROM daemons ORDER BY started_at, id",
    "daemons_silent": (
        "SELECT * FROM daemons WHERE lost_at IS NULL AND heartbeat_at < :before AND id != :me ORDER BY id"
    ),
    "daemon_lost": (
        "UPDATE daemons SET lost_at = :now WHERE id = :id AND lost_at IS NULL AND heartbeat_at < :before RETURNING id"
    ),
    "lease_offer": "INSERT INTO leases (name, holder, expires_at) VALUES (:name, :me, :until) ON CONFLICT DO NOTHING",
    "lease_take": (
        "UPDATE leases SET holder = :me, expires_at = :until WHERE name = :name AND (holder = :me OR expires_at < :now) "
        "RETURNING holder"
    ),
    "lease_get": "SELECT * FROM leases WHERE name = ?",
    "runs_running_on": (
        "SELECT id, agent_run_group_id, ephemeral, target_id FROM agent_runs WHERE daemon_id = ? AND status = 'running' "
        "ORDER BY created_at, id"
    ),
}


class DaemonRow(Row):
    id: str
    home: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    lost_at: datetime | None = None


class LeaseRow(Row):
    name: str
    holder: str
    expires_at: datetime


class DaemonWrites(Connected):
    async def register_daemon(self, daemon_id: str, home: str, host: str, pid: int) -> None:
        """Record this daemon as started and beating now (again, when it comes back: no longer lost)."""
        await self.conn.execute(SQL["daemon_register"], {"id": daemon_id, "home": home, "host": host, "pid": pid,
                                                         "now": self.stamp})

    async def beat(self, daemon_id: str) -> bool:
        """This daemon is alive now; False once the leader has declared it lost."""
        return await self.cas(SQL["daemon_beat"], {"id": daemon_id, "now": self.stamp}) is not None

    async def declare_lost(self, daemon_id: str, before: datetime) -> bool:
        """Mark a daemon lost if it has still not beaten since `before`."""
        return await self.cas(SQL["daemon_lost"], {"id": daemon_id, "now": self.stamp, "before": ts(before)}) is not None

    async def hold_lease(self, name: str, me: str, until: datetime) -> bool:
        """Take or renew the lease `name` until `until`: True when this holder has it (it was free, expired
        or already its own)."""
        params = {"name": name, "me": me, "until": ts(until), "now": self.stamp}
        await self.conn.execute(SQL["lease_offer"], params)
        return await self.cas(SQL["lease_take"], params) is not None

    async def running_on(self, daemon_id: str) -> list[dict[str, Any]]:
        """The runs a daemon started that have not ended, read in this transaction."""
        return [dict(r) for r in await self.conn.execute_fetchall(SQL["runs_running_on"], (daemon_id,))]


class DaemonReads(Reading):
    async def list(self) -> list[DaemonRow]:
        return [DaemonRow.model_validate(r) for r in await self._all(SQL["daemons_all"])]

    async def silent_daemons(self, me: str, before: datetime) -> list[DaemonRow]:
        """Daemons not lost that have not beaten since `before` (not this one)."""
        rows = await self._all(SQL["daemons_silent"], {"me": me, "before": ts(before)})
        return [DaemonRow.model_validate(r) for r in rows]

    async def lease(self, name: str) -> LeaseRow | None:
        row = await self._one(SQL["lease_get"], (name,))
        return LeaseRow.model_validate(row) if row else None

    async def runs_running_on(self, daemon_id: str) -> list[dict[str, Any]]:
        return await self._all(SQL["runs_running_on"], (daemon_id,))
