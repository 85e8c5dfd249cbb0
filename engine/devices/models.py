"""Devices (sandboxes and computers): the requests and records of the surfaces, and the store's rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from pydantic import Field, field_validator

from engine import ids, models
from engine.models import IMAGE_REF, DeviceStatus, Input, Record, TargetKind, _check_env, _check_metadata, _check_text
from engine.records import Row


class DeviceCreate(Input):
    """Create a sandbox (small, disposable) or a computer (larger, with a persistent home volume)."""

    kind: TargetKind = TargetKind.sandbox
    """`sandbox` or `computer`."""
    name: str | None = Field(default=None, max_length=100)
    """A label for people."""
    image: str | None = Field(default=None, max_length=200)
    """Docker image; defaults to the daemon's configured image."""
    cpus: float | None = Field(default=None, gt=0, le=16)
    """CPU limit in cores (default 1 for a sandbox, 2 for a computer)."""
    memory_mb: int | None = Field(default=None, ge=32, le=65_536)
    """Memory limit in MiB (default 512 for a sandbox, 2048 for a computer)."""
    pids_limit: int | None = Field(default=None, ge=16, le=32_768)
    """Most processes at once (default 256 for a sandbox, 1024 for a computer)."""
    workspace_mb: int | None = Field(default=None, ge=16, le=1_048_576)
    """Size of /workspace in MiB, enforced by the kernel (default: the daemon's setting for the kind, 1024 for
    a sandbox, 8192 for a computer; a session may not ask for more than that)."""
    tmp_mb: int | None = Field(default=None, ge=16, le=65_536)
    """Size of /tmp in MiB (default: the daemon's setting, 256 for a sandbox, 1024 for a computer)."""
    network: bool = False
    """Give the device a network. Off by default."""
    env: dict[str, str] | None = None
    """Environment for every run in the device."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Your own ids and labels (at most 64 KiB of JSON)."""
    agent_runtime_profile_id: ids.ProfileId | None = None
    """Take image, resources and network (those not given here) from this profile; omitted: your session's
    profile, else the workspace's default, else the tenant's."""
    skip_agent_runtime_profile: bool = False
    """Take nothing from any profile (your session's effective limits still apply)."""
    workspace_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    """The workspace whose default profile applies (default: yours; a session may name only its own)."""

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _check_env(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_text(v, "name")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        return _check_text(v, "image reference", IMAGE_REF)

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, v: Any) -> dict[str, Any]:
        return _check_metadata(v)


class Device(Record):
    id: str
    kind: TargetKind
    name: str | None
    image: str
    status: DeviceStatus
    cpus: float
    memory_mb: int
    pids_limit: int
    workspace_mb: int | None
    """Size of /workspace in MiB (None: made before sizes were recorded)."""
    tmp_mb: int | None
    network: bool
    ephemeral: bool
    """Created for one run and removed after it."""
    run_id: str | None
    """For an ephemeral device, the run it serves."""
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class DeviceList(Record):
    data: list[Device]


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
    daemon_id: str | None = None
    """The daemon whose Docker engine holds it (None: made before daemons were recorded)."""

    def record(self, status: models.DeviceStatus) -> Device:
        return Device(
            id=self.id, kind=self.kind, name=self.name, image=self.image, status=status, cpus=self.cpus,
            memory_mb=self.memory_mb, pids_limit=self.pids_limit, workspace_mb=self.workspace_mb,
            tmp_mb=self.tmp_mb, network=self.network, ephemeral=self.ephemeral,
            run_id=self.run_id, metadata=self.metadata, created_at=self.created_at, updated_at=self.updated_at,
        )


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
