"""The store's SQL and operations for soul snapshots (mixed into `store.Tx` and `store.Store`)."""

from __future__ import annotations

from typing import Any

from engine.souls.models import SoulSnapshotRow
from engine.sqlvalues import Connected, Reading, encode

SQL = {
    "soul_document_insert": "INSERT INTO soul_documents (digest, content, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    "soul_snapshot_insert": (
        "INSERT INTO soul_snapshots (id, agent_name, digest, source, source_path, document_modified, created_at, "
        "created_by) VALUES (:id, :agent_name, :digest, :source, :source_path, :document_modified, :created_at, "
        ":created_by)"
    ),
    "soul_snapshot_get": (
        "SELECT s.*, d.content FROM soul_snapshots s LEFT JOIN soul_documents d ON d.digest = s.digest WHERE s.id = ?"
    ),
}


class SoulWrites(Connected):
    """Soul snapshots in a write transaction (`store.Tx`)."""

    async def insert_soul_snapshot(self, row: dict[str, Any], content: bytes | None) -> None:
        """A snapshot of a soul; its document stored once per digest (none when there was no soul)."""
        if content is not None:
            await self.conn.execute(SQL["soul_document_insert"], (row["digest"], content, self.stamp))
        await self.conn.execute(SQL["soul_snapshot_insert"], encode(row))


class SoulReads(Reading):
    """Soul snapshots as the store reads them (`store.Store`)."""

    async def soul_snapshot(self, snapshot_id: str) -> SoulSnapshotRow | None:
        row = await self._one(SQL["soul_snapshot_get"], (snapshot_id,))
        return SoulSnapshotRow.model_validate(row) if row else None
