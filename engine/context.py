"""What an agent is told about itself and its surroundings: seed 002's context bundle and its
coordinator config. Every section comes from real records; a section with nothing to show (no
family channel yet, no task held) says so (`available: false`, `source`), never invents one.
Every list section carries `limit, returned, truncated`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from engine.channels import models as cm
from engine import models
from engine.souls import models as souls
from engine.callers import Caller
from engine.channels.service import ChannelService
from engine.ports import Clock
from engine.souls.service import SoulService
from engine.tasks.service import TaskService
from engine.sessions.service import SessionService
from engine.sessions.models import CONTEXT_SECTION_LIMIT, Capability, Limits, MeSelf, Session, Workspace

RECENT_TASK_EVENTS = 20


class Section(models.Record):
    limit: int
    returned: int
    truncated: bool


class Capabilities(models.Record):
    capabilities: list[Capability]
    section: Section


class Peer(models.Record):
    peer_id: str
    session_id: str
    display_name: str
    channel_id: str | None = None
    capabilities: list[str]


class PeerRoster(models.Record):
    peers: list[Peer]
    section: Section


class CoordinationChannel(models.Record):
    available: bool
    channel: dict[str, Any] | None = None
    source: str


class InboxSummary(models.Record):
    items: list[cm.InboxItem]
    section: Section
    unread_count: int
    source: str


class TaskSection(models.Record):
    available: bool
    bundle: dict[str, Any] | None = None
    source: str


class Provenance(models.Record):
    generated_at: datetime
    source: str


class Context(models.Record):
    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    self_: MeSelf = Field(alias="self")
    session: Session
    workspace: Workspace
    soul: souls.SoulContext
    """The caller's soul as it took it at spawn (the root: its file), cut to the context projection."""
    coordination_channel: CoordinationChannel
    inbox_summary: InboxSummary
    peer_roster: PeerRoster
    capabilities: Capabilities
    task: TaskSection
    limits: Limits
    provenance: Provenance


class CoordinatorConfig(models.Record):
    agent_name: str
    default_ttl_seconds: int
    enabled: bool
    max_active_sessions_per_workspace: int
    max_children: int
    model: str | None
    provider: str | None
    source: str
    """`default`: the daemon's built-in spawn budget (no workspace sets its own yet)."""
    workspace_id: str


def _section(total: int, limit: int) -> Section:
    return Section(limit=limit, returned=min(total, limit), truncated=total > limit)


class ContextService:
    def __init__(self, sessions: SessionService, souls: SoulService, channels: ChannelService, tasks: TaskService,
                 clock: Clock) -> None:
        self.sessions = sessions
        self.souls = souls
        self.channels = channels
        self.tasks = tasks
        self.clock = clock

    async def context(self, caller: Caller, limit: int = CONTEXT_SECTION_LIMIT) -> Context:
        caller.require("agent", "agent_context")
        me = await self.sessions.me(caller)
        session = me.session
        peers = await self._peers(session)
        caps = me.capabilities
        soul = await self.souls.own(caller)
        items, unread = await self.channels.inbox(caller, limit)
        return Context(
            self_=me.self_, session=session, workspace=me.workspace, soul=souls.projection(soul),
            coordination_channel=await self._coordination(caller, session),
            inbox_summary=InboxSummary(items=items, section=_section(unread, limit), unread_count=unread,
                                       source="channels: messages not yet received"),
            peer_roster=PeerRoster(peers=peers[:limit], section=_section(len(peers), limit)),
            capabilities=Capabilities(capabilities=caps[:limit], section=_section(len(caps), limit)),
            task=await self._task(caller),
            limits=me.limits,
            provenance=Provenance(generated_at=self.clock.now(), source="agentdock daemon: live records"))

    async def coordinator_config(self, caller: Caller, workspace: str | None = None) -> CoordinatorConfig:
        caller.require("agent", "coordinator_config")
        me = await self.sessions.me(caller)
        budget = me.session.lineage.spawn_budget
        return CoordinatorConfig(
            agent_name=me.session.agent_name, default_ttl_seconds=budget.ttl_seconds, enabled=True,
            max_active_sessions_per_workspace=budget.max_active_per_workspace, max_children=budget.max_children,
            model=me.session.model, provider=me.session.provider, source="default",
            workspace_id=workspace or me.session.workspace_id)

    async def _coordination(self, caller: Caller, session: Session) -> CoordinationChannel:
        """Where this session coordinates: its parent's family channel (the root: its own)."""
        owner = session.lineage.parent_session_id or session.id
        channel = await self.channels.channel(caller, cm.channel_id(cm.family_name(owner)))
        if channel is None:
            return CoordinationChannel(available=False, source=f"no family channel of {owner} that you may use "
                                       "(one is made when it spawns a child)")
        return CoordinationChannel(available=True, channel=channel.model_dump(mode="json"),
                                   source=f"family channel of {owner}")

    async def _task(self, caller: Caller) -> TaskSection:
        """The task the caller holds (its newest live lease), with its attempts and recent events."""
        bundle = await self.tasks.bundle(caller, RECENT_TASK_EVENTS)
        if bundle is None:
            return TaskSection(available=False, source="no task held: claim one with task_claim_next")
        return TaskSection(available=True, bundle=bundle, source="task queue: your newest live lease")

    async def _peers(self, session: Session) -> list[Peer]:
        """The live sessions next to this one: its parent, its siblings and its children, each with the
        family channel this session shares with it."""
        parent = session.lineage.parent_session_id
        near = [s for s in (await self.sessions.list_all_live()) if s.id != session.id and (
            s.id == parent or s.lineage.parent_session_id in (session.id, parent))]
        return [Peer(peer_id=s.id, session_id=s.id, display_name=s.name or s.agent_name,
                     channel_id=cm.channel_id(cm.family_name(
                         session.id if s.lineage.parent_session_id == session.id else parent or session.id)),
                     capabilities=list(s.lineage.permission_policy.tools)) for s in near]
