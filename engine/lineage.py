"""Who a session is allowed to be: its permission policy, its spawn budget and the rules that keep a
child inside its parent (seed 002's `lineage`, `permission_policy`, `spawn_budget`).

Pure rules, no I/O: `engine.sessions` applies them under a transaction. A child's permissions are
always a subset of its parent's, its depth below the budget's `max_depth`, and its life inside its
parent's (`ttl_expires_at` never later than the parent's). What a session's row stands for when it
calls is `SessionRow.caller` (`engine.sessions.models`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from engine import errors, models
from engine.callers import TOOLSETS

TOOLS_BY_TOOLSET: dict[str, tuple[str, ...]] = {
    "devices": ("sandbox_create", "sandbox_list", "sandbox_get", "sandbox_delete"),
    "runs": ("agent_run", "agent_run_get", "agent_run_list", "agent_run_cancel", "agent_run_events",
             "agent_run_artifacts"),
    "groups": ("group_create", "group_dispatch", "group_get", "group_list", "group_runs", "group_events",
               "group_cancel"),
    "agent": ("agent_me", "agent_context", "agent_spawn", "agent_stop", "coordinator_config"),
    "soul": ("soul_get", "soul_validate"),
    "channels": ("channel_list", "channel_send", "channel_recv", "channel_reply"),
    "tasks": ("task_create", "task_get", "task_list", "task_claim_next", "task_heartbeat", "task_complete",
              "task_fail", "task_release"),
    "profiles": ("profile_create", "profile_get", "profile_list", "profile_update", "profile_delete"),
    "secrets": (),  # no tools: naming secrets for a run (their values never leave the local CLI)
    "approvals": ("approval_get", "approval_list", "approval_approve", "approval_deny", "approval_review"),
}
"""Every tool a permission may name, by the toolset that holds it."""
TOOLSET_OF = {tool: toolset for toolset, tools in TOOLS_BY_TOOLSET.items() for tool in tools}
ALWAYS_ALLOWED = frozenset({"agent_me", "approval_get"})
"""What every session may call, whatever its permissions name: who it is, and the approvals it waits on."""
USER_ONLY = frozenset({"approval_review"})
"""Tools only the local user's own `agentdock serve` has: the human answers there (MCP elicitation)."""
SESSIONS_ONLY = frozenset({"approval_approve", "approval_deny"})
"""Tools only a session's serve has (one holding the `approvals` permission). The local user's LLM gets
`approval_review` instead, so that a person, not the model, decides: what a child writes can steer a
model, not the person answering the elicitation."""
NEVER_INHERITED = frozenset({"approvals", *TOOLS_BY_TOOLSET["approvals"]}) - ALWAYS_ALLOWED
"""What a spawn that names no permissions does not get of its parent's: deciding approvals is given
only by naming it."""

Name = Annotated[str, StringConstraints(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199})$")]
"""A name in a permission list (a channel, a profile, a skill, an MCP server), or `*` for any."""
MAX_NAMES = 64


class PermissionPolicy(models.Input):
    """What a session may touch. Each list is a ceiling a child's policy must stay under."""

    tools: list[str] = Field(default_factory=list, max_length=MAX_NAMES)
    """Toolsets (`devices, runs, groups, agent, soul, channels, tasks, profiles, approvals`) or single tool
    names (`agent_run_get`); `agent_me` and `approval_get` are always allowed. `approvals` (deciding the
    approvals of the sessions below) is never inherited: a spawn names it or does not get it."""
    network_channels: list[Name] = Field(default_factory=list, max_length=MAX_NAMES)
    """Channels it may send on and receive from, by name (`family:<session id>`, `task:<task id>`) or id
    (`*`: any). Left out of a spawn's permissions: the parent's."""
    sandbox_profiles: list[Name] = Field(default_factory=list, max_length=MAX_NAMES)
    """Runtime profiles it may start runs with (`*`: any)."""
    skills: list[Name] = Field(default_factory=list, max_length=MAX_NAMES)
    """Skills it may use, by name (`*`: any)."""
    mcp_servers: list[Name] = Field(default_factory=list, max_length=MAX_NAMES)
    """MCP servers it may use, by name (`*`: any)."""
    workspace_paths: list[str] = Field(default_factory=list, max_length=MAX_NAMES)
    """Paths under /workspace it may use (`/workspace`: all of it)."""

    @model_validator(mode="after")
    def _known_tools(self) -> PermissionPolicy:
        for tool in self.tools:
            if tool not in TOOLS_BY_TOOLSET and tool not in TOOLSET_OF:
                raise ValueError(f"tools: {tool!r} is neither a toolset ({', '.join(TOOLSETS)}) nor a tool name")
        self.workspace_paths = [models.workspace_path(p, "workspace_paths") for p in self.workspace_paths]
        return self

    @classmethod
    def everything(cls) -> PermissionPolicy:
        """The root session's: every toolset, any name."""
        return cls(tools=list(TOOLSETS), network_channels=["*"], sandbox_profiles=["*"], skills=["*"],
                   mcp_servers=["*"], workspace_paths=[models.WORKSPACE])

    def grants(self) -> frozenset[str]:
        """Toolsets and tool names, as a caller holds them."""
        return frozenset(self.tools) | ALWAYS_ALLOWED


class SpawnBudget(models.Input):
    """How far a lineage may grow."""

    max_children: int = Field(default=8, ge=0, le=1000)
    """Live children one session may have at once."""
    max_depth: int = Field(default=3, ge=0, le=32)
    """Deepest spawn below the root session (the root is depth 0)."""
    max_active_per_workspace: int = Field(default=32, ge=1, le=10_000)
    """Live sessions in one workspace at once."""
    ttl_seconds: int = Field(default=3600, ge=1, le=7 * 86_400)
    """Longest life of a spawned session (a child asks for less with `ttl_seconds`)."""


def tool_allowed(grants: frozenset[str] | None, tool: str) -> bool:
    """Whether a caller holding `grants` (None: the root) may call `tool` as an MCP tool."""
    if grants is None:
        return tool not in SESSIONS_ONLY
    if tool in USER_ONLY:
        return False
    return tool in ALWAYS_ALLOWED or tool in grants or TOOLSET_OF.get(tool) in grants


def inherited(parent: PermissionPolicy) -> PermissionPolicy:
    """A child's policy when its spawn names none: its parent's, less what is never inherited."""
    return parent.model_copy(update={"tools": [t for t in parent.tools if t not in NEVER_INHERITED]})


def covers(parent: list[str], child: list[str], *, field: str, tools: bool = False,
           paths: bool = False) -> None:
    """Refuse, naming the field and the entry, a child list that asks for more than the parent's."""
    for entry in child:
        if "*" in parent or entry in parent:
            continue
        if tools and TOOLSET_OF.get(entry) in parent:
            continue  # a single tool of a toolset the parent holds
        if paths and any(entry == p or entry.startswith(p.rstrip("/") + "/") for p in parent):
            continue
        raise errors.PermissionDenied(
            f"{field}: {entry!r} is not among the parent session's permissions, and a child can never be "
            f"given more than its parent has", evidence={"field": field, "entry": entry})


def narrowed(parent: PermissionPolicy, asked: PermissionPolicy) -> PermissionPolicy:
    """The child's policy: what it asked for, if all of it is within the parent's. `network_channels`
    left out is the parent's: a child talks on its family's channel unless its parent says otherwise."""
    if "network_channels" not in asked.model_fields_set:
        asked = asked.model_copy(update={"network_channels": list(parent.network_channels)})
    covers(parent.tools, asked.tools, field="permissions.tools", tools=True)
    for field in ("network_channels", "sandbox_profiles", "skills", "mcp_servers"):
        covers(getattr(parent, field), getattr(asked, field), field=f"permissions.{field}")
    covers(parent.workspace_paths, asked.workspace_paths, field="permissions.workspace_paths", paths=True)
    return asked


def child_expiry(now: datetime, asked_ttl: int | None, budget: SpawnBudget,
                 parent_expires: datetime | None) -> datetime:
    """When a child ends: what it asked for, at most the budget's TTL, never after its parent."""
    ttl = budget.ttl_seconds if asked_ttl is None else asked_ttl
    if ttl > budget.ttl_seconds:
        raise errors.LimitExceeded(f"ttl_seconds: {ttl} is above the spawn budget's {budget.ttl_seconds}",
                                   evidence={"field": "ttl_seconds", "limit": budget.ttl_seconds})
    expires = now + timedelta(seconds=ttl)
    return min(expires, parent_expires) if parent_expires is not None else expires


def check_room(*, depth: int, children: int, active_in_workspace: int, budget: SpawnBudget) -> None:
    """Refuse a spawn that would pass the budget, naming which bound."""
    if depth > budget.max_depth:
        raise errors.LimitExceeded(
            f"max_depth: a child here would be {depth} levels below the root session; the budget allows "
            f"{budget.max_depth}", evidence={"field": "max_depth", "limit": budget.max_depth})
    if children >= budget.max_children:
        raise errors.LimitExceeded(
            f"max_children: this session already has {children} live children; the budget allows "
            f"{budget.max_children}", suggested_command="agentdock sessions list",
            evidence={"field": "max_children", "limit": budget.max_children})
    if active_in_workspace >= budget.max_active_per_workspace:
        raise errors.LimitExceeded(
            f"max_active_per_workspace: {active_in_workspace} sessions are live in this workspace; the budget "
            f"allows {budget.max_active_per_workspace}",
            evidence={"field": "max_active_per_workspace", "limit": budget.max_active_per_workspace})
