"""Sessions: the store's rows (the requests and records live with the service for now)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.records import Row


class SessionRow(Row):
    id: str
    agent_name: str
    name: str | None
    status: str
    stop_reason: str | None
    parent_session_id: str
    root_session_id: str
    spawn_depth: int
    spawn_role: str | None
    auto_stop_on_parent: bool
    permissions: dict[str, Any]
    spawn_budget: dict[str, Any]
    ttl_expires_at: datetime
    workspace_id: str
    run_id: str | None
    soul_snapshot_id: str | None
    provider: str | None
    model: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    stopped_at: datetime | None
    profile_id: str | None = None
    profile_snapshot: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    """Its effective limits (`engine.authority.Limits`); None only before the daemon filled them in."""
