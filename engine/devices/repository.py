"""The store's SQL and operations for devices (mixed into `store.Tx` and `store.Store`)."""

from __future__ import annotations

from typing import Any

from engine.devices.models import DeviceRow
from engine.sqlvalues import Connected, Reading, encode

SQL = {
    "device_insert": (
        "INSERT INTO devices (id, kind, name, image, cpus, memory_mb, pids_limit, workspace_mb, tmp_mb, network, "
        "env, metadata, ephemeral, run_id, created_at, updated_at, created_by, pool, daemon_id) "
        "VALUES (:id, :kind, :name, :image, :cpus, :memory_mb, :pids_limit, :workspace_mb, :tmp_mb, :network, "
        ":env, :metadata, :ephemeral, :run_id, :created_at, :updated_at, :created_by, :pool, :daemon_id)"
    ),
    "device_claim": (
        "UPDATE devices SET run_id = :run_id, created_by = :created_by, updated_at = :now "
        "WHERE id = :id AND pool IS NOT NULL AND run_id IS NULL AND deleted_at IS NULL RETURNING id"
    ),
    "device_get": "SELECT * FROM devices WHERE id = ? AND deleted_at IS NULL",
    "device_list": "SELECT * FROM devices WHERE deleted_at IS NULL AND ephemeral = 0 ORDER BY created_at, id",
    "device_list_by_creator": (
        "SELECT * FROM devices WHERE deleted_at IS NULL AND ephemeral = 0 AND created_by = ? ORDER BY created_at, id"
    ),
    "device_list_live": "SELECT * FROM devices WHERE deleted_at IS NULL",
    "device_own": "UPDATE devices SET daemon_id = :daemon_id, updated_at = :now WHERE id = :id",
    "device_delete": "UPDATE devices SET deleted_at = :now, updated_at = :now WHERE id = :id AND deleted_at IS NULL",
}


class DeviceWrites(Connected):
    """Devices in a write transaction (`store.Tx`)."""

    async def insert_device(self, row: dict[str, Any]) -> None:
        await self.conn.execute(SQL["device_insert"], encode({"pool": None, "daemon_id": None, **row}))

    async def own_device(self, device_id: str, daemon_id: str) -> None:
        """Record the daemon whose Docker engine makes (an ephemeral run's) device."""
        await self.conn.execute(SQL["device_own"], {"id": device_id, "daemon_id": daemon_id, "now": self.stamp})

    async def claim_device(self, device_id: str, run_id: str, created_by: str) -> bool:
        """Compare-and-set: give a ready pooled device to a run (counted from now on as its creator's);
        False if it is not a ready pooled device."""
        return await self.cas(SQL["device_claim"], {"id": device_id, "run_id": run_id, "created_by": created_by,
                                                    "now": self.stamp}) is not None

    async def delete_device(self, device_id: str) -> None:
        await self.conn.execute(SQL["device_delete"], {"id": device_id, "now": self.stamp})


class DeviceReads(Reading):
    """Devices as the store reads them (`store.Store`)."""

    async def device(self, device_id: str) -> DeviceRow | None:
        row = await self._one(SQL["device_get"], (device_id,))
        return DeviceRow.model_validate(row) if row else None

    async def list(self, *, include_ephemeral: bool = False, created_by: str | None = None) -> list[DeviceRow]:
        if created_by is not None:
            rows = await self._all(SQL["device_list_by_creator"], (created_by,))
        else:
            rows = await self._all(SQL["device_list_live"] if include_ephemeral else SQL["device_list"])
        return [DeviceRow.model_validate(r) for r in rows]
