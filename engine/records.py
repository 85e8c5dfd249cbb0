"""The store's typed records: the base of every row model (decoded once: JSON, booleans, times) and the
event row every stream shares. Each area's rows are in its package's models.py."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @field_validator("metadata", "env", "payload", "secrets", "permissions", "spawn_budget", "profile_snapshot",
                     "limits", mode="before",
                     check_fields=False)
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class EventRow(Row):
    id: str
    run_id: str | None
    group_id: str | None
    sequence: int
    """The event's place in the stream it was read from."""
    type: str
    message: str
    payload: dict[str, Any]
    created_at: datetime


