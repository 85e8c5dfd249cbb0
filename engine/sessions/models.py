"""Sessions: the spawn request, the records a session and `agent_me` show, and the store's row."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field

from engine import authority, ids, models
from engine.callers import Caller
from engine.lineage import TOOLS_BY_TOOLSET, PermissionPolicy, SpawnBudget
from engine.profiles import models as pm
from engine.records import Row
from engine.runs import models as rm
from engine.souls import models as souls


LABEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SessionState(StrEnum):
    active = "active"
    stopped = "stopped"
    expired = "expired"


class SpawnRequest(models.Input):
    """Seed 002's spawn fields, plus an optional run to start the child with."""

    agent_name: souls.AgentName
    """Who the child is: names its soul (`$AGENTDOCK_HOME/souls/<agent_name>.md`)."""
    auto_stop_on_parent: bool = True
    """Stop the child when its parent stops: always (a stop takes the whole tree below it); `false` is refused."""
    permissions: PermissionPolicy | None = None
    """What the child may use; within the parent's. Omitted: the parent's own, less `approvals` (deciding
    approvals is given only by naming it)."""
    spawn_role: str | None = Field(default=None, pattern=LABEL)
    """What the child is for (`reviewer`, `worker`): a label kept in its lineage."""
    ttl_seconds: int | None = Field(default=None, ge=1)
    """The child's life; at most the spawn budget's `ttl_seconds`, and never past its parent's."""
    workspace_id: str | None = Field(default=None, pattern=LABEL)
    """Omitted: the parent's workspace; a session may name only its own (the local user any)."""
    prompt: str | None = None
    """Start the child as an agent run with this prompt (in a fresh sandbox unless `target_id`)."""
    provider: models.Provider | None = None
    """The child's run: its runtime, as `agent_run`'s `provider`."""
    command: str | None = None
    """The child's run: the command of a `custom` provider, as `agent_run`'s."""
    model: str | None = None
    """The child's run: a provider-specific model override."""
    target_id: str | None = None
    """The child's run: the sandbox or computer to run in (default: a fresh ephemeral sandbox)."""
    timeout: int | None = None
    """The child's run: its timeout in seconds."""
    agent_runtime_profile_id: ids.ProfileId | None = None
    """Spawn the child under this agent runtime profile (its permissions' sandbox_profiles must allow it);
    omitted: the workspace's default profile, else the tenant's."""
    skip_agent_runtime_profile: bool = False
    """Spawn the child under no profile at all, not even a default (it keeps its parent's effective limits)."""


class Lineage(models.Record):
    auto_stop_on_parent: bool
    parent_session_id: str | None
    permission_policy: PermissionPolicy
    root_session_id: str
    spawn_budget: SpawnBudget
    spawn_depth: int
    spawn_role: str | None
    ttl_expires_at: datetime | None


class Session(models.Record):
    id: str
    agent_name: str
    name: str | None = None
    type: str
    """`user` for the root session (the local user), `agent` for a spawned one."""
    state: SessionState
    stop_reason: str | None = None
    """`stopped` (asked), `parent_stopped`, `ttl_expired`, `spawn_failed`."""
    workspace_id: str
    run_id: str | None = None
    """The agent run the session was started with."""
    provider: str | None = None
    model: str | None = None
    lineage: Lineage
    profile_id: str | None = None
    """The agent runtime profile the session runs under (None: none)."""
    profile: dict[str, Any] | None = None
    """That profile as it was at spawn."""
    effective_limits: authority.Limits = authority.UNBOUNDED
    """What governs the session: its profile's limits within its parent's effective limits, down the tree
    (network, tools bundles, image, resources, max_child_sandboxes, approval)."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    stopped_at: datetime | None = None


class SessionList(models.Record):
    data: list[Session]


class Spawned(models.Record):
    session: Session
    lineage: Lineage
    permissions: PermissionPolicy
    token: str
    """The child's bearer token, shown this once (its runs receive it as AGENTDOCK_TOKEN)."""
    run: rm.Run | None = None


class MeSelf(models.Record):
    agent_name: str
    model: str | None
    provider: str | None
    session_id: str


class Workspace(models.Record):
    id: str
    name: str
    root_dir: str


class Limits(models.Record):
    context_section_limit: int
    max_active_task_leases: int
    max_children: int
    max_spawn_depth: int


class Capability(models.Record):
    id: str
    """A tool this session may call."""
    source: str
    """The toolset it comes from, or `always` for what every session may call."""
    summary: str


class Me(models.Record):
    """Seed 002's `me`: who the caller is and what it may do, the channels it may use and the task
    leases it holds."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    self_: MeSelf = Field(alias="self")
    session: Session
    workspace: Workspace
    limits: Limits
    capabilities: list[Capability]
    channels: list[dict[str, Any]] = Field(default_factory=list)
    active_task_leases: list[dict[str, Any]] = Field(default_factory=list)


PERMISSION_LISTS = ("network_channels", "sandbox_profiles", "skills", "mcp_servers", "workspace_paths")


CONTEXT_SECTION_LIMIT = 50


MAX_ACTIVE_TASK_LEASES = 4


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

    def effective_limits(self) -> authority.Limits:
        """Its effective limits as recorded at spawn (a session from before they were recorded, until the
        daemon fills them in: its own profile's)."""
        return authority.Limits.model_validate(self.limits) if self.limits is not None else \
            authority.Limits.of_profile(self.profile_snapshot)

    def caller(self, *, visible: frozenset[str] = frozenset(), toolsets: frozenset[str] | None = None) -> Caller:
        """The caller this session is: its permissions (or `toolsets`, for a step taken on its behalf), the
        tools its effective limits' bundles leave out, its workspace and those limits."""
        limits = self.effective_limits()
        denied = pm.denied_tools(limits.tools)
        return Caller(session_id=self.id, toolsets=toolsets if toolsets is not None else PermissionPolicy(
            **self.permissions).grants(), visible=visible, denied=denied,
            denied_toolsets=frozenset(ts for ts, tools in TOOLS_BY_TOOLSET.items() if tools and set(tools) <= denied),
            workspace_id=self.workspace_id, limits=limits)
