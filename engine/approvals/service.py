"""Approvals a person gives (issue 16, part 3).

A risky action (a device with network, deleting a device, cancelling a group) of a session whose
approval policy is `confirm-risky` calls `require` right before it acts. With an approved, unexpired,
unused approval of that session for that same action (its canonical key), the approval is used (a
compare-and-set, so once) and the action goes ahead. Otherwise the pending approval is found or a new
one recorded, and the call is refused with `approval_required`, whose evidence names the approval to
wait on (`get` with a wait) before repeating the call. Nothing of the action happens before that.

Who decides: the local user (the root session: control.sock, the CLI, `agentdock serve` without a
token, which asks the human through MCP elicitation), or a session holding the `approvals` permission
(only ever given explicitly, down the spawn tree from the user) for the sessions below it, never its
own, and only when its own risky actions need no approval (else it could approve through a child what
it may not do itself). Nothing a session sends about itself counts.

Time: a pending approval expires after `approval_ttl_seconds` (expiry denies); an approved one must be
used within as long; a denied one refuses the same call for as long, after which asking again makes a
new one. A reaper on the injected clock marks expiries. Every change is one transaction together with
its event in the `approvals` stream: who asked, who decided, when, and why."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio

from engine.daemons.leadership import Leadership
from engine.approvals import models as am
from engine import errors, ids, topics
from engine.profiles import service as profiles
from engine.callers import Caller
from engine.clock import SystemClock
from engine.ports import Clock
from engine.settings import Settings
from engine.store import Store, Tx, new_id


class ApprovalService:
    def __init__(self, store: Store, clock: Clock | None, settings: Settings, *,
                 leadership: Leadership | None = None) -> None:
        self.store = store
        self.leadership = leadership or Leadership()
        self.clock = clock or SystemClock()
        self.settings = settings

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.approval_ttl_seconds)

    # ------------------------------------------------------------ the hook of every risky action

    async def require(self, caller: Caller, action: am.Action) -> None:
        """Go ahead (returning) if `caller` needs no approval for `action` or holds an approved one,
        which is used up here; else raise `ApprovalRequired` (a pending approval to wait on) or
        `ApprovalDenied`. Call it after every other check and right before acting."""
        if not profiles.asks_approval(caller):
            return
        session = await self.store.sessions.session(caller.session_id)
        if session is None:
            raise errors.Unauthenticated(f"no session {caller.session_id}")
        now = self.clock.now()
        async with self.store.write(now) as tx:
            latest = await tx.approvals.latest_approval(caller.session_id, action.key)
            status = latest.effective(now) if latest else None
            if latest is not None and status is am.ApprovalStatus.approved:
                if await tx.approvals.use_approval(latest.id, caller.session_id, action.key):
                    await self._event(tx, "approval_used", f"{caller.session_id} used approval {latest.id}: "
                                      f"{latest.summary}", latest.id, caller.session_id, action.key)
                    return
            if latest is not None and (status is am.ApprovalStatus.pending or (
                    status is am.ApprovalStatus.denied and latest.expires_at > now)):
                found = latest
            else:
                pending = await tx.approvals.pending_approvals_of(caller.session_id)
                if pending >= am.MAX_PENDING_PER_SESSION:
                    raise errors.LimitExceeded(
                        f"approvals: session {caller.session_id} already has {pending} pending approvals; wait for "
                        "a person to decide them before asking for more",
                        suggested_command="agentdock approvals list --status pending",
                        evidence={"field": "approvals", "limit": am.MAX_PENDING_PER_SESSION})
                approval_id = new_id("apr")
                await tx.approvals.insert_approval({
                    "id": approval_id, "session_id": session.id, "workspace_id": session.workspace_id,
                    "profile_id": session.profile_id, "action": action.key, "summary": action.summary,
                    "detail": action.detail, "expires_at": now + self.ttl, "created_at": now})
                await self._event(tx, "approval_requested", f"{session.id} asks to {action.summary}", approval_id,
                                  session.id, action.key)
                found = await tx.approvals.approval(approval_id)
                assert found is not None
        if found.status is am.ApprovalStatus.denied:
            raise errors.ApprovalDenied(
                f"approval: {found.decided_by} denied session {caller.session_id} to {found.summary} (approval "
                f"{found.id}{': ' + found.reason if found.reason else ''}); the same call is refused until "
                f"{found.expires_at.isoformat()}. Do something else, or ask the person who decides",
                evidence=_evidence(found))
        raise errors.ApprovalRequired(
            f"approval: session {caller.session_id} runs under profile {found.profile_id}, whose policy is "
            f"confirm-risky, so a person must approve before it may {found.summary}. Approval {found.id} is "
            f"pending until {found.expires_at.isoformat()}: wait for it (GET /api/agent/approvals/{found.id}"
            f"?wait=45, or the approval_get tool with wait_seconds), then repeat this same call",
            suggested_command=f"agentdock approvals get {found.id} --wait 45", evidence=_evidence(found))

    # ------------------------------------------------------------ reading and waiting

    async def get(self, caller: Caller, approval_id: str, wait: float = 0) -> am.Approval:
        """An approval the caller may see (its own, one below it); with `wait`, once it is no longer
        pending or `wait` seconds have passed (a decision's commit, or its expiry, ends the wait)."""
        ids.APPROVAL.check(approval_id, "approval_id")
        bound = min(am.MAX_WAIT_SECONDS, self.settings.mcp_max_wait_seconds)
        if not 0 <= wait <= bound:
            raise errors.InvalidInput("wait", f"between 0 and {bound:g} seconds; ask again to wait longer",
                                      evidence={"limit": bound})
        expires_at = None

        async def look() -> tuple[bool, am.Approval]:
            nonlocal expires_at
            row = await self._visible(caller, approval_id)
            expires_at = row.expires_at
            record = row.record(self.clock.now())
            return record.status is not am.ApprovalStatus.pending, record

        async def due() -> float | None:  # its expiry ends the wait without a commit
            return None if expires_at is None else (expires_at - self.clock.now()).total_seconds()

        return await topics.until(self.store.topics, self.clock, topics.approval(approval_id), wait, look, due=due)

    async def list(self, caller: Caller, q: am.ApprovalListQuery) -> am.ApprovalList:
        """Newest first: every approval for the local user; for a session holding the `approvals`
        permission, its own and those of the sessions below it."""
        caller.require("approvals", "approval_list")
        now = self.clock.now()
        rows = await self.store.approvals.list(session_id=None if caller.is_root else caller.session_id,
                                          status=q.status.value if q.status else None, limit=q.limit, now=now)
        return am.ApprovalList(data=[r.record(now) for r in rows])

    async def events(self, caller: Caller, q: am.ApprovalEventsQuery) -> am.ApprovalEventList:
        """The approvals' history (who asked, who decided, expiries, uses): the local user's to read."""
        if not caller.is_root:
            raise errors.PermissionDenied("approval events are the local user's audit trail; a session reads the "
                                          "approvals it may see with approval_list",
                                          evidence={"session_id": caller.session_id})
        rows = await self.store.events(topics.APPROVALS, q.after_sequence, q.limit)
        data = [am.ApprovalEvent(id=r.id, sequence=r.sequence, type=r.type, message=r.message, payload=r.payload,
                                 created_at=r.created_at) for r in rows]
        return am.ApprovalEventList(data=data, next_after_sequence=data[-1].sequence if data else q.after_sequence)

    # ------------------------------------------------------------ deciding

    async def approve(self, caller: Caller, approval_id: str, req: am.Decision) -> am.Approval:
        return await self._decide(caller, approval_id, req, am.ApprovalStatus.approved, "approval_approve")

    async def deny(self, caller: Caller, approval_id: str, req: am.Decision) -> am.Approval:
        return await self._decide(caller, approval_id, req, am.ApprovalStatus.denied, "approval_deny")

    async def _decide(self, caller: Caller, approval_id: str, req: am.Decision, outcome: am.ApprovalStatus,
                      tool: str) -> am.Approval:
        ids.APPROVAL.check(approval_id, "approval_id")
        if not caller.is_root:
            caller.require("approvals", tool)
        row = await self._visible(caller, approval_id)
        if not caller.is_root and row.session_id == caller.session_id:
            raise errors.PermissionDenied(
                f"approval {approval_id} is session {caller.session_id}'s own: a session never decides its own "
                "approvals; a person (or a session above it holding the approvals permission) does",
                evidence={"field": "approval_id", "approval_id": approval_id})
        if profiles.asks_approval(caller):
            raise errors.PermissionDenied(
                f"session {caller.session_id} runs under a confirm-risky policy itself, so it may not decide "
                "approvals (it could approve through a child what it may not do); the local user decides",
                suggested_command=f"agentdock approvals {tool.removeprefix('approval_')} {approval_id}",
                evidence={"field": "approval", "session_id": caller.session_id})
        now = self.clock.now()
        async with self.store.write(now) as tx:
            if await tx.approvals.decide_approval(approval_id, outcome.value, caller.session_id, req.reason, now + self.ttl):
                who = "the local user" if caller.is_root else f"session {caller.session_id}"
                await self._event(tx, f"approval_{outcome.value}", f"{who} {outcome.value} {row.session_id}'s "
                                  f"request to {row.summary}", approval_id, row.session_id, row.action,
                                  decided_by=caller.session_id, reason=req.reason)
            current = await tx.approvals.approval(approval_id)
        assert current is not None
        record = current.record(now)
        if record.status is outcome and current.decided_by == caller.session_id:
            return record  # decided now, or the same decision by the same decider before: nothing changes
        raise errors.InvalidTransition(
            f"approval {approval_id} is {record.status.value}"
            + (f" (by {current.decided_by})" if current.decided_by else "") + "; only a pending approval is "
            "decided", evidence={"approval_id": approval_id, "status": record.status.value})

    # ------------------------------------------------------------ expiry

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Expire approvals as their time runs out (woken early by any change to an approval)."""
        task_status.started()
        while True:
            await self.leadership.wait_held()  # one daemon reaps for all
            changed = self.store.topics.watch(topics.APPROVALS)
            await self.expire_due()
            nxt = await self.store.approvals.next_approval_expiry()
            if nxt is None:  # nothing open: only a new approval gives it work (no sleeper on the clock)
                await changed.wait()
            elif (delay := (nxt - self.clock.now()).total_seconds()) > 0:  # else one came due meanwhile: look
                await self.clock.wait(changed, delay)

    async def expire_due(self) -> int:
        now = self.clock.now()
        due = await self.store.approvals.approvals_due(now)
        if not due:
            return 0
        expired = 0
        async with self.store.write(now) as tx:
            for row in due:
                if await tx.approvals.expire_approval(row.id):
                    expired += 1
                    what = "nobody decided it" if row.status is am.ApprovalStatus.pending else "it was not used"
                    await self._event(tx, "approval_expired", f"approval {row.id} expired ({what}): {row.session_id}"
                                      f" may not {row.summary}", row.id, row.session_id, row.action,
                                      was=row.status.value)
        return expired

    # ------------------------------------------------------------ helpers

    async def _visible(self, caller: Caller, approval_id: str) -> am.ApprovalRow:
        row = await self.store.approvals.approval(approval_id)
        if row is None or not caller.sees(row.session_id):
            raise errors.NotFound("approval", approval_id, evidence={"field": "approval_id"})
        return row

    @staticmethod
    async def _event(tx: Tx, type_: str, message: str, approval_id: str, session_id: str, action: str,
                     **more: Any) -> None:
        await tx.append_stream_events(topics.APPROVALS, [(type_, message, {
            "approval_id": approval_id, "session_id": session_id, "action": action, **more})])


def _evidence(row: am.ApprovalRow) -> dict[str, Any]:
    return {"field": "approval", "approval_id": row.id, "status": row.status.value, "action": row.action,
            "summary": row.summary, "expires_at": row.expires_at.isoformat(), "decided_by": row.decided_by,
            "wait": f"/api/agent/approvals/{row.id}?wait=45",
            "next": "wait for a decision, then repeat this same call" if row.status is am.ApprovalStatus.pending
            else "the same call is refused until expires_at"}
