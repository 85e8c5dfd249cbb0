"""The store's typed records: one frozen model per table row, decoded once (JSON, booleans, times),
and their mapping to the records callers see (`models.Run`, `models.Device`, `models.RunEvent`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, field_validator

from engine import models


class Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @field_validator("metadata", "env", "payload", "secrets", "permissions", "spawn_budget", "profile_snapshot",
                     "limits", mode="before",
                     check_fields=False)
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class DeviceRow(Row):
    id: str
    kind: models.TargetKind
    name: str | None
    image: str
    cpus: float
    memory_mb: int
    pids_limit: int
    workspace_mb: int | None = None
    tmp_mb: int | None = None
    network: bool
    env: dict[str, str]
    metadata: dict[str, Any]
    ephemeral: bool
    run_id: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    pool: str | None = None
    """The pool (a `Shape.key`) a pooled device was started for: ready while `run_id` is None."""

    def record(self, status: models.DeviceStatus) -> models.Device:
        return models.Device(
            id=self.id, kind=self.kind, name=self.name, image=self.image, status=status, cpus=self.cpus,
            memory_mb=self.memory_mb, pids_limit=self.pids_limit, workspace_mb=self.workspace_mb,
            tmp_mb=self.tmp_mb, network=self.network, ephemeral=self.ephemeral,
            run_id=self.run_id, metadata=self.metadata, created_at=self.created_at, updated_at=self.updated_at,
        )


class RunRow(Row):
    id: str
    target_kind: models.TargetKind
    target_id: str
    provider: models.Provider
    prompt: str
    command: str | None
    model: str | None
    cwd: str
    timeout: int
    metadata: dict[str, Any]
    env: dict[str, str]
    secrets: list[str] = []
    """The names of the secrets the run asked for (values live only under the home's secrets/)."""
    status: models.RunStatus
    output: str
    """What was kept of stdout (or the structured runtime's answer), pending chunks included."""
    stderr: str
    output_truncated: bool
    stderr_truncated: bool
    stdout_offset: int
    stderr_offset: int
    exit_code: int | None
    failure_kind: str | None
    error: str | None
    pids_peak: int | None = None
    memory_peak_bytes: int | None = None
    model_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ephemeral: bool
    cancel_requested: datetime | None
    agent_run_group_id: str | None
    orchestration_role: str | None
    parent_agent_run_id: str | None
    profile_id: str | None
    profile_snapshot: dict[str, Any] | None = None
    """What the run's profile resolved to when it was created (None: no profile)."""
    workspace_id: str | None = None
    idempotency_key: str | None
    request_hash: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    created_by: str
    output_omitted: bool = False
    """Read in a list past its byte budget: output and stderr were not read."""

    def record(self) -> models.Run:
        return models.Run(
            id=self.id, target_kind=self.target_kind, target_id=self.target_id, provider=self.provider,
            prompt=self.prompt, command=self.command, model=self.model, cwd=self.cwd, timeout=self.timeout,
            metadata=self.metadata, env_keys=sorted(self.env), secrets=list(self.secrets), status=self.status, output=self.output,
            stderr=self.stderr, output_truncated=self.output_truncated, stderr_truncated=self.stderr_truncated,
            exit_code=self.exit_code, failure_kind=self.failure_kind, error=self.error, ephemeral=self.ephemeral,
            pids_peak=self.pids_peak, memory_peak_bytes=self.memory_peak_bytes,
            model_requests=self.model_requests, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            agent_run_group_id=self.agent_run_group_id, orchestration_role=self.orchestration_role,
            parent_agent_run_id=self.parent_agent_run_id, profile_id=self.profile_id,
            profile_snapshot=self.profile_snapshot, workspace_id=self.workspace_id, idempotency_key=self.idempotency_key, started_at=self.started_at, finished_at=self.finished_at,
            created_at=self.created_at, updated_at=self.updated_at, output_omitted=self.output_omitted,
        )


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

    def run_event(self) -> models.RunEvent:
        return models.RunEvent(
            id=self.id, agent_run_id=self.run_id or "", agent_run_group_id=self.group_id, sequence=self.sequence,
            type=self.type, message=self.message, payload=self.payload, created_at=self.created_at,
        )


class ArtifactRow(Row):
    run_id: str
    path: str
    size: int
    sha256: str
    stored_as: str
    created_at: datetime

    def record(self) -> models.Artifact:
        return models.Artifact(agent_run_id=self.run_id, path=self.path, size=self.size, sha256=self.sha256,
                               created_at=self.created_at)


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


class SoulSnapshotRow(Row):
    id: str
    agent_name: str
    digest: str | None
    """None: there was no soul at spawn."""
    content: bytes | None
    source: str
    source_path: str | None
    document_modified: datetime | None
    created_at: datetime
    created_by: str


class GroupRow(Row):
    id: str
    name: str | None
    workspace_id: str | None
    project_id: str | None
    concurrency_limit: int
    expected_runs: int | None
    metadata: dict[str, Any]
    status: str
    cancel_requested: datetime | None
    idempotency_key: str | None
    request_hash: str | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    created_by: str


class EntryRow(Row):
    id: str
    group_id: str
    dispatch_id: str
    position: int
    item_index: int
    status: str
    attempts: int
    run_id: str | None
    request: dict[str, Any]
    diagnostic: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    @field_validator("request", "diagnostic", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class DispatchRow(Row):
    id: str
    group_id: str
    first_index: int
    count: int
    is_async: bool
    idempotency_key: str | None
    request_hash: str
    created_at: datetime
    created_by: str


class Shape(NamedTuple):
    """The image and resources of a sandbox without network: a run without a target may use a pooled
    device only of its own shape (`engine.pool`)."""

    image: str
    cpus: float
    memory_mb: int
    pids_limit: int
    workspace_mb: int
    tmp_mb: int

    @property
    def key(self) -> str:
        """The pool's name: on the pooled device's record and its container's `agentdock.pool` label."""
        return (f"{self.image}|{self.cpus:g}cpu|{self.memory_mb}m|{self.pids_limit}pids|"
                f"{self.workspace_mb}+{self.tmp_mb}disk")
