"""Sessions: who an agent is. The local user is the root session; every other session was spawned
by one, with a lineage, a permission policy inside its parent's, effective limits inside its
parent's (`engine.authority`), a spawn budget and a TTL. A session calls in with its bearer token
(`authenticate`), and stopping it (or its TTL passing) stops every session below it, in the same
transaction, and cancels their runs. A spawn re-checks its parent in its writing transaction, so a
spawn and its parent's stop are serialized: none lands under a stopped parent. The TTL reaper is a
background service on the injected clock."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from engine import authority, errors, ids, lineage, masking, models, topics
from engine.daemons.leadership import Leadership
from engine.runs import models as rm
from engine.channels import service as channels
from engine.callers import DEFAULT_WORKSPACE, ROOT, Caller
from engine.clock import SystemClock
from engine.lineage import PermissionPolicy, SpawnBudget
from engine.ports import Clock
from engine.sessions.models import (CONTEXT_SECTION_LIMIT, MAX_ACTIVE_TASK_LEASES, PERMISSION_LISTS, Capability, Lineage,
                                    Limits, Me, MeSelf, Session, SessionList, SessionRow, SessionState, Spawned,
                                    SpawnRequest, Workspace)
from engine.profiles.service import ProfileService
from engine.runs.service import RunService, require_profile
from engine.settings import Settings
from engine.souls.service import SoulService
from engine.store import Store, new_id
from engine.tokens import Tokens

log = logging.getLogger("agentdock.sessions")

REAPER_IDLE_SECONDS = 3600.0
"""How long the reaper sleeps when no session has a TTL pending (a new session wakes it sooner)."""


class SessionService:
    def __init__(self, store: Store, runs: RunService, souls: SoulService, tokens: Tokens, clock: Clock | None,
                 settings: Settings, *, leases: Callable[[Caller], Awaitable[list[Any]]] | None = None,
                 channels: Callable[[Caller], Awaitable[list[Any]]] | None = None,
                 profiles: ProfileService | None = None, leadership: Leadership | None = None) -> None:
        self.store = store
        self.leadership = leadership or Leadership()
        self.profiles = profiles or runs.profiles
        self.leases = leases
        """The caller's live task leases (the task queue's), for `me`."""
        self.channels = channels
        """The channels the caller may use, for `me`."""
        self.runs = runs
        self.souls = souls
        self.tokens = tokens
        self.clock = clock or SystemClock()
        self.settings = settings
        self.root_budget = SpawnBudget()

    # ------------------------------------------------------------ the TTL reaper

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Expire sessions as their TTLs pass (woken early when a session is spawned or stopped)."""
        self.tokens.key  # noqa: B018 - the key file exists before any token is asked for
        await self.fill_limits()
        task_status.started()
        while True:
            await self.leadership.wait_held()  # one daemon reaps for all
            changed = self.store.topics.watch(topics.SESSIONS)
            await self.expire_due()
            nxt = await self.store.sessions.next_session_expiry()
            wait = REAPER_IDLE_SECONDS if nxt is None else (nxt - self.clock.now()).total_seconds()
            await self.clock.wait(changed, wait)

    async def fill_limits(self) -> int:
        """Record the effective limits of sessions spawned before they were recorded, parents first (each
        its profile's within its parent's; a profile pinning another image than its parent's keeps the
        parent's). Returns how many were filled in."""
        rows = await self.store.sessions.sessions_without_limits()
        known: dict[str, authority.Limits] = {}
        for row in rows:
            parent = await self.store.sessions.session(row.parent_session_id)
            above = authority.UNBOUNDED if parent is None else known.get(parent.id) or parent.effective_limits()
            own = authority.Limits.of_profile(row.profile_snapshot)
            if above.image is not None and own.image not in (None, above.image):
                own = own.model_copy(update={"image": None})
            known[row.id] = authority.narrow(above, own)
            async with self.store.write(self.clock.now()) as tx:
                await tx.sessions.set_session_limits(row.id, known[row.id].model_dump(mode="json"))
        return len(rows)

    async def expire_due(self) -> int:
        due = await self.store.sessions.expired_sessions(self.clock.now())
        for session_id in due:
            await self._end(session_id, "expired", "ttl_expired")
        return len(due)

    # ------------------------------------------------------------ who is asking

    async def authenticate(self, token: str | None) -> Caller:
        """The caller a bearer token stands for; `Unauthenticated` if none is valid."""
        if not token:
            raise errors.Unauthenticated(
                "this socket needs a session token: send `Authorization: Bearer $AGENTDOCK_TOKEN`",
                evidence={"field": "Authorization"})
        row = await self.store.sessions.session_by_token_hash(self.tokens.digest(token))
        if row is None:
            raise errors.Unauthenticated("the session token is not valid", evidence={"field": "Authorization"})
        if row.status == "active" and row.ttl_expires_at <= self.clock.now():
            await self._end(row.id, "expired", "ttl_expired")
            row = await self.store.sessions.session(row.id)
            assert row is not None
        if row.status != "active":
            raise errors.Unauthenticated(f"session {row.id} has {row.status} ({row.stop_reason}); its token no longer "
                                         "works", evidence={"field": "Authorization", "session_id": row.id})
        return await self.caller_of(row)

    async def caller_of(self, row: SessionRow) -> Caller:
        below = await self.store.sessions.descendants(row.id)
        return row.caller(visible=frozenset(d.id for d in below))

    # ------------------------------------------------------------ requests

    async def me(self, caller: Caller) -> Me:
        session = await self._session_of(caller)
        policy = session.lineage.permission_policy
        grants = None if caller.is_root else policy.grants()
        caps = [Capability(id=tool, source="always" if tool in lineage.ALWAYS_ALLOWED else toolset,
                           summary=f"{toolset} tool")
                for toolset, tools in lineage.TOOLS_BY_TOOLSET.items() for tool in tools
                if lineage.tool_allowed(grants, tool) and tool not in caller.denied]
        budget = session.lineage.spawn_budget
        return Me(self_=MeSelf(agent_name=session.agent_name, model=session.model, provider=session.provider,
                               session_id=session.id),
                  session=session, workspace=Workspace(id=session.workspace_id, name=session.workspace_id,
                                                       root_dir=models.WORKSPACE),
                  limits=Limits(context_section_limit=CONTEXT_SECTION_LIMIT,
                                max_active_task_leases=MAX_ACTIVE_TASK_LEASES, max_children=budget.max_children,
                                max_spawn_depth=budget.max_depth),
                  capabilities=caps,
                  channels=[c.model_dump(mode="json") for c in await self.channels(caller)] if self.channels else [],
                  active_task_leases=[lease.model_dump(mode="json") for lease in await self.leases(caller)]
                  if self.leases else [])

    async def get(self, caller: Caller, session_id: str) -> Session:
        caller.require("agent", "agent_me")
        if session_id == ROOT.session_id and caller.is_root:
            return self._root()
        row = await self.store.sessions.session(session_id) if ids.SESSION.matches(session_id) else None
        if row is None or not (caller.is_root or row.id == caller.session_id or row.id in caller.visible):
            raise errors.NotFound("session", session_id[:64], suggested_command="agentdock sessions list")
        return self._record(row)

    async def list(self, caller: Caller) -> SessionList:
        caller.require("agent", "agent_me")
        if caller.is_root:
            return SessionList(data=[self._root(), *(self._record(r) for r in await self.store.sessions.list())])
        own = await self.store.sessions.session(caller.session_id)
        below = await self.store.sessions.descendants(caller.session_id)
        return SessionList(data=[self._record(r) for r in ([own] if own else []) + below])

    async def list_all_live(self) -> list[Session]:
        """Every live session, the root first (for rosters; not filtered by caller)."""
        return [self._root(), *(self._record(r) for r in await self.store.sessions.list() if r.status == "active")]

    async def spawn(self, caller: Caller, req: SpawnRequest) -> Spawned:
        """A child session within the caller: its permissions, effective limits, workspace, budget and TTL
        all inside the caller's, checked before anything is written; its parent re-checked live in the
        transaction that writes it (a stop commits before it, and refuses it, or after, and stops it)."""
        caller.require("agent", "agent_spawn")
        if not req.auto_stop_on_parent:
            raise errors.InvalidInput(
                "auto_stop_on_parent", "a child always stops with its parent (authority narrows down a tree: "
                "a stopped session's tree is stopped); leave it out")
        mask = await self.runs.masks.masker(caller)
        req = masking.masked(mask, req, text=("prompt", "command"), ids=("agent_name", "model", "spawn_role",
                                                                         "workspace_id"))
        if req.permissions is not None:  # names a policy keeps as given
            masking.refuse(mask, {f"permissions.{field}.{i}": name for field in PERMISSION_LISTS
                                  for i, name in enumerate(getattr(req.permissions, field))})
        run_req = self._run_request(req)  # refused before anything is written
        if run_req is not None:
            caller.require("runs", "agent_run")  # starting the child as a run is running an agent
            if run_req.target_id is None and run_req.sandbox_id is None and run_req.computer_id is None:
                # its run's sandbox counts against the parent's tree: refuse before the child is written
                await self.runs.devices.check_room(caller)
        parent = await self._session_of(caller)
        if parent.state is not SessionState.active:
            raise errors.Unauthenticated(f"session {parent.id} has {parent.state}")
        workspace = caller.use_workspace(req.workspace_id)
        policy = lineage.narrowed(parent.lineage.permission_policy,
                                  req.permissions or lineage.inherited(parent.lineage.permission_policy))
        budget = parent.lineage.spawn_budget
        now = self.clock.now()
        expires = lineage.child_expiry(now, req.ttl_seconds, budget, parent.lineage.ttl_expires_at)
        resolved = await self.profiles.resolve(caller, skip=req.skip_agent_runtime_profile,
                                               explicit=req.agent_runtime_profile_id, workspace=workspace,
                                               allowed=policy.sandbox_profiles)
        limits = authority.narrow(caller.limits, authority.Limits.of_profile(resolved.snapshot() if resolved else None))
        if resolved is not None and run_req is not None and resolved.source == "explicit":
            run_req = run_req.model_copy(update={"agent_runtime_profile_id": resolved.profile.id})
        elif resolved is None and run_req is not None:
            run_req = run_req.model_copy(update={"skip_agent_runtime_profile": True})
        child_id = new_id("ses")
        soul_row, soul_doc, _ = await self.souls.snapshot_row(caller, req.agent_name)  # the soul it has now
        depth = parent.lineage.spawn_depth + 1
        async with self.store.write(now) as tx:
            await authority.require_active(tx, caller)
            await require_profile(tx, resolved.profile.id if resolved else None)
            lineage.check_room(depth=depth, children=await tx.sessions.live_children(parent.id),
                               active_in_workspace=await tx.sessions.live_in_workspace(workspace), budget=budget)
            await tx.souls.insert_soul_snapshot(soul_row, soul_doc)
            await tx.sessions.insert_session({
                "id": child_id, "agent_name": req.agent_name, "name": None,
                "token_hash": self.tokens.digest(self.tokens.token_for(child_id)),
                "parent_session_id": parent.id, "root_session_id": parent.lineage.root_session_id,
                "spawn_depth": depth, "spawn_role": req.spawn_role, "auto_stop_on_parent": req.auto_stop_on_parent,
                "permissions": policy.model_dump(), "spawn_budget": budget.model_dump(), "ttl_expires_at": expires,
                "workspace_id": workspace, "run_id": None, "soul_snapshot_id": soul_row["id"],
                "provider": run_req.provider.value if run_req and run_req.provider else None,
                "model": run_req.model if run_req else None, "created_by": caller.session_id,
                "created_at": now, "updated_at": now, "profile_id": resolved.profile.id if resolved else None,
                "profile_snapshot": resolved.snapshot() if resolved else None,
                "limits": limits.model_dump(mode="json")})
            await tx.channels.ensure_channel(channels.family_row(parent.id, parent.workspace_id), (parent.id, child_id))
        run = None
        if run_req is not None:
            try:
                # The run is the child's, held to the child's effective limits (its tool bundles aside: the
                # parent starts it); the device it targets must be one the parent sees.
                as_child = Caller(session_id=child_id, toolsets=frozenset({"runs", "devices"}),
                                  visible=frozenset({caller.session_id}) | caller.visible, workspace_id=workspace,
                                  limits=limits)
                run = await self.runs.create(as_child, run_req)
            except Exception:
                await self._end(child_id, "stopped", "spawn_failed")
                raise
            async with self.store.write(self.clock.now()) as tx:
                await tx.sessions.set_session_run(child_id, run.id)
        row = await self.store.sessions.session(child_id)
        assert row is not None
        session = self._record(row)
        return Spawned(session=session, lineage=session.lineage, permissions=policy,
                       token=self.tokens.token_for(child_id), run=run)

    async def stop(self, caller: Caller, session_id: str) -> Session:
        """Stop a session (itself or one below it), every session below it, and their runs. Stopping a
        stopped session changes nothing (but what is still live below it, if anything, stops)."""
        caller.require("agent", "agent_stop")
        if session_id == ROOT.session_id:
            raise errors.InvalidInput("session_id", "the root session (the local user) cannot be stopped")
        await self.get(caller, session_id)  # visible to the caller, or NotFound
        await self._end(session_id, "stopped", "stopped")
        row = await self.store.sessions.session(session_id)
        assert row is not None
        return self._record(row)

    # ------------------------------------------------------------ helpers

    async def _end(self, session_id: str, status: str, reason: str) -> None:
        """End a session and every live session below it in one transaction, then cancel the runs of
        every session that ended. The tree is read in that transaction: a spawn under it commits before
        (and is found here) or after (and finds its parent stopped), never in between."""
        ended: list[str] = []
        async with self.store.write(self.clock.now()) as tx:
            if await tx.sessions.end_session(session_id, status, reason):
                ended.append(session_id)
            for child in await tx.sessions.descendants(session_id):
                if child.status == SessionState.active and await tx.sessions.end_session(
                        child.id, "stopped" if status == "stopped" else status, "parent_stopped"):
                    ended.append(child.id)
        for sid in ended:
            for run_id in await self.store.sessions.unfinished_runs_of(sid):
                try:
                    await self.runs.request_cancel(run_id)
                except errors.EngineError as exc:  # it ended meanwhile
                    log.info("run %s of ended session %s: %s", run_id, sid, exc.message)

    async def _session_of(self, caller: Caller) -> Session:
        if caller.is_root:
            return self._root()
        row = await self.store.sessions.session(caller.session_id)
        if row is None:
            raise errors.Unauthenticated(f"no session {caller.session_id}")
        return self._record(row)

    def _run_request(self, req: SpawnRequest) -> rm.RunCreate | None:
        if req.prompt is None:
            for field in ("provider", "command", "model", "target_id", "timeout"):
                if getattr(req, field) is not None:
                    raise errors.InvalidInput(field, "starts the child's run, so it needs a prompt too")
            return None
        fields = {k: getattr(req, k) for k in ("prompt", "provider", "command", "model", "target_id", "timeout")}
        return models.parse(rm.RunCreate, {k: v for k, v in fields.items() if v is not None})

    def _root(self) -> Session:
        return Session(
            id=ROOT.session_id, agent_name=self.settings.soul_agent_name, type="user", state=SessionState.active,
            workspace_id=DEFAULT_WORKSPACE,
            lineage=Lineage(auto_stop_on_parent=False, parent_session_id=None,
                            permission_policy=PermissionPolicy.everything(), root_session_id=ROOT.session_id,
                            spawn_budget=self.root_budget, spawn_depth=0, spawn_role=None, ttl_expires_at=None))

    @staticmethod
    def _record(row: SessionRow) -> Session:
        return Session(
            id=row.id, agent_name=row.agent_name, name=row.name, type="agent", state=SessionState(row.status),
            stop_reason=row.stop_reason, workspace_id=row.workspace_id, run_id=row.run_id, provider=row.provider,
            model=row.model, created_at=row.created_at, updated_at=row.updated_at, stopped_at=row.stopped_at,
            profile_id=row.profile_id, profile=row.profile_snapshot, effective_limits=row.effective_limits(),
            lineage=Lineage(auto_stop_on_parent=row.auto_stop_on_parent, parent_session_id=row.parent_session_id,
                            permission_policy=PermissionPolicy(**row.permissions), root_session_id=row.root_session_id,
                            spawn_budget=SpawnBudget(**row.spawn_budget), spawn_depth=row.spawn_depth,
                            spawn_role=row.spawn_role, ttl_expires_at=row.ttl_expires_at))

