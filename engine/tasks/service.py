"""The leased task queue (issue 9). A session claims the highest-priority, oldest claimable task of
its workspace and holds it as a task run with a lease (`lease_until`) and a claim token returned
once (stored only as its SHA-256). Only the current holder's token heartbeats, completes, fails or
releases the run: each is one compare-and-set on the run's status, token and live lease, so a holder
whose lease expired (and whose task may be claimed again) changes nothing and is told why.

The lease reaper (`serve`) returns expired leases to the queue as a new attempt after a backoff
(min(2**n, 60) s after the n-th failed attempt, on the injected clock); after `max_attempts` failed
or expired attempts the task ends `failed` with its `failure_kind`. Every change is committed with
its event, in one transaction.

Who sees what: a task belongs to a workspace (its creator's unless the local user names another).
The local user sees and may claim every task; a spawned session those of its own workspace."""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from engine import authority, errors, ids, masking, topics
from engine.daemons.leadership import Leadership
from engine.channels import service as channels
from engine.tasks import models as tm
from engine.callers import Caller
from engine.clock import SystemClock
from engine.masking import Masking
from engine.ports import Clock
from engine.quotas.repository import Usage
from engine.quotas.service import Quotas, env_name
from engine.secrets import SecretStore
from engine.settings import Settings
from engine.store import Store, Tx, new_id
from engine.tokens import Tokens

log = logging.getLogger("agentdock.tasks")

CLAIM_TOKEN_PREFIX = "tct_"
NEVER = datetime.max.replace(tzinfo=UTC)


class TaskService:
    def __init__(self, store: Store, clock: Clock | None, settings: Settings, *, max_active_leases: int,
                 quotas: Quotas | None = None, masks: Masking | None = None,
                 leadership: Leadership | None = None) -> None:
        self.store = store
        self.leadership = leadership or Leadership()
        self.clock = clock or SystemClock()
        self.settings = settings
        self.quotas = quotas or Quotas(store, settings)
        self.masks = masks or Masking(store, SecretStore(settings.secrets_dir))
        self.max_active_leases = max_active_leases
        self._workspaces: dict[str, str] = {}
        """A session's workspace, which never changes, read once."""
        self._reaper_wake = anyio.Event()
        self._reaper_due: datetime | None = None
        """When the reaper will next look (None while it is looking): only a lease ending sooner wakes it."""
        self._granted = NEVER
        """The soonest lease granted while the reaper was looking."""

    # ------------------------------------------------------------ the lease reaper

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Return expired leases to the queue as they pass, on the leading daemon only. It reads the
        store only when a lease may have passed: a claim whose lease ends sooner than it would next look
        just moves its deadline. A claim through another daemon sharing the database is known only by
        the topic it touched: the soonest it can end is the shortest lease from now, so that is when
        it looks (at most once a MIN_LEASE_SECONDS under a stream of claims)."""
        task_status.started()
        shortest = timedelta(seconds=tm.MIN_LEASE_SECONDS)
        while True:
            await self.leadership.wait_held()  # one daemon reaps for all
            # shared database: any task change wakes it, its claims included (watched before the look)
            changed = self.store.topics.watch(topics.TASKS) if self.store.shared else None
            self._reaper_due, self._granted = None, NEVER  # looking: claims meanwhile are kept in _granted
            await self.reap_due()
            nxt = await self.store.tasks.next_lease_expiry()
            self._reaper_due = min(nxt or NEVER, self._granted)
            while True:
                self._reaper_wake = changed or anyio.Event()
                if self._reaper_due == NEVER:  # no lease held: only a claim gives it work (no sleeper on the clock)
                    await self._reaper_wake.wait()
                elif not await self.clock.wait(self._reaper_wake,
                                               (self._reaper_due - self.clock.now()).total_seconds()):
                    break  # the deadline came: look
                if changed is not None:  # a lease granted since ends no sooner than the shortest one from now
                    changed = self.store.topics.watch(topics.TASKS)
                    self._reaper_due = min(self._reaper_due, self.clock.now() + shortest)

    def _lease_granted(self, lease_until: datetime) -> None:
        """Bring the reaper's deadline forward if this new lease ends sooner (a heartbeat or an end
        never makes the next expiry sooner; a deadline left by a lease that ended only costs a look)."""
        if self.store.shared:  # the claim's commit woke the reaper through its topic
            return
        if self._reaper_due is None:  # it is looking, and its read may have missed this claim's commit
            self._granted = min(self._granted, lease_until)
        elif lease_until < self._reaper_due:
            self._reaper_due = lease_until
            self._reaper_wake.set()

    async def reap_due(self) -> int:
        """Expire every lease that has passed; returns how many were."""
        reaped = 0
        for run in await self.store.tasks.expired_task_runs(self.clock.now()):
            now = self.clock.now()
            async with self.store.write(now) as tx:
                if not await tx.tasks.expire_task_run(run.id):
                    continue  # heartbeated or ended meanwhile
                task = await tx.tasks.task(run.task_id)
                assert task is not None
                await self._after_failure(tx, task, run.id, tm.FailureKind.lease_expired,
                                          "the lease ran out without a heartbeat", now)
                reaped += 1
        return reaped

    # ------------------------------------------------------------ requests

    async def create(self, caller: Caller, req: tm.TaskCreate) -> tm.Task:
        caller.require("tasks", "task_create")
        await self._workspace_of(caller)  # a session that exists
        workspace = caller.use_workspace(req.workspace_id, "workspace_id")
        size = self._bounded(req.payload, "payload", "task_payload_max_bytes")
        mask = await self.masks.masker(caller)
        if mask:
            masking.refuse(mask, {"identifier": req.identifier, "scope": req.scope, "workspace_id": req.workspace_id})
            req = req.model_copy(update={"title": mask.line(req.title), "payload": mask.value(req.payload)})
            size = self._bounded(req.payload, "payload", "task_payload_max_bytes")
        now = self.clock.now()
        task_id = new_id("tsk")
        async with self.store.write(now) as tx:
            await tx.tasks.insert_task({
                "id": task_id, "title": req.title, "identifier": req.identifier, "priority": req.priority,
                "payload": req.payload, "max_attempts": req.max_attempts, "workspace_id": workspace,
                "scope": req.scope, "paused": req.paused, "available_at": now, "created_by": caller.session_id,
                "created_at": now, "updated_at": now, "body_bytes": size})
            await self.quotas.charge(tx, caller, workspace, Usage(tasks=1, task_bytes=len(req.title.encode()) + size),
                                     field="payload")
            await tx.tasks.task_event(task_id, None, "task.created", f"task created: {req.title[:80]}",
                                {"priority": req.priority, "max_attempts": req.max_attempts})
            row = await tx.tasks.task(task_id)
        assert row is not None
        return row.record()

    async def get(self, caller: Caller, task_id: str) -> tm.Task:
        caller.require("tasks", "task_get")
        row = await self._visible_task(caller, ids.TASK.check(task_id, "task_id"))
        return row.record(await self.store.tasks.task_runs(row.id))

    async def list(self, caller: Caller, q: tm.TaskListQuery) -> tm.TaskList:
        caller.require("tasks", "task_list")
        budget = self.settings.list_page_max_bytes if q.include_payload else -1
        rows = await self.store.tasks.list(await self._workspace_of(caller), q.status.value if q.status else None, q.limit,
                                      budget)
        return tm.TaskList(data=[r.record() for r in rows])

    async def claim_next(self, caller: Caller, req: tm.ClaimNext) -> tm.ClaimResult:
        """Claim the highest-priority, oldest claimable task; with `wait_seconds`, wait (bounded) for one."""
        caller.require("tasks", "task_claim_next")
        bound = self.settings.mcp_max_wait_seconds
        if req.wait_seconds > bound:
            raise errors.InvalidInput("wait_seconds", f"at most {bound:g} seconds; claim again to wait longer",
                                      evidence={"limit": bound})
        workspace = await self._workspace_of(caller)
        async def look() -> tuple[bool, tm.Claim | None]:
            claim = await self._claim_once(caller, workspace, req.lease_seconds)
            return claim is not None, claim

        async def due() -> float | None:  # a task in backoff becomes claimable without any commit
            nxt = await self.store.tasks.next_task_available(workspace)
            return None if nxt is None else (nxt - self.clock.now()).total_seconds()

        claim = await topics.until(self.store.topics, self.clock, topics.TASKS, req.wait_seconds, look, due=due,
                                   between=lambda: channels.still_active(self.store, caller))
        return tm.ClaimResult(claim=claim)

    async def _claim_once(self, caller: Caller, workspace: str | None, lease_seconds: float) -> tm.Claim | None:
        token = CLAIM_TOKEN_PREFIX + secrets.token_hex(24)
        run_id = new_id("trun")
        now = self.clock.now()
        async with self.store.write(now, rows=True) as tx:
            await authority.require_active(tx, caller)  # no lease for a session stopped meanwhile
            await tx.hold(f"leases:{caller.session_id}")  # two claims of one session count one after the other
            held = await tx.tasks.leases_held(caller.session_id)
            if held >= self.max_active_leases:
                raise errors.LimitExceeded(
                    f"max_active_task_leases: this session already holds {held} task leases; complete, fail or "
                    f"release one first", evidence={"field": "max_active_task_leases",
                                                    "limit": self.max_active_leases})
            task_id = await tx.tasks.next_claimable_task(workspace)
            if task_id is None:
                return None
            run = await tx.tasks.claim_task(task_id, {
                "id": run_id, "session_id": caller.session_id, "claim_token_hash": Tokens.digest(token),
                "lease_seconds": lease_seconds, "lease_until": now + timedelta(seconds=lease_seconds)})
            if run is None:  # unreachable: the task's row is locked (or the writer alone); never invent a claim
                return None
            task = await tx.tasks.task_event(task_id, run_id, "task.claimed",
                                       f"claimed by {caller.session_id} (attempt {run.attempt})",
                                       {"session_id": caller.session_id, "attempt": run.attempt})
            await tx.channels.ensure_channel(channels.task_row(task.id, task.title, task.workspace_id, task.created_by),
                                    (task.created_by, caller.session_id))
        self._lease_granted(run.lease_until)
        return tm.Claim(lease=run.lease(), run=run.record(), task=task.record(), claim_token=token)

    async def heartbeat(self, caller: Caller, req: tm.Heartbeat) -> tm.LeaseResult:
        caller.require("tasks", "task_heartbeat")
        now = self.clock.now()
        async with self.store.write(now, rows=True) as tx:
            run = await self._held(tx, caller, req)
            seconds = req.lease_seconds or run.lease_seconds
            beat = await tx.tasks.heartbeat_task_run(run.id, Tokens.digest(req.claim_token), caller.session_id, seconds,
                                               now + timedelta(seconds=seconds))
            if beat is None:
                raise errors.Conflict("run_id: the lease changed meanwhile; claim again")
            task = await tx.tasks.task_event(run.task_id, run.id, "task.heartbeat", "lease extended",
                                       {"lease_seconds": seconds})
            return tm.LeaseResult(lease=beat.lease(), run=beat.record(), task=task.record())

    async def complete(self, caller: Caller, req: tm.Complete) -> tm.LeaseResult:
        caller.require("tasks", "task_complete")
        size = 0 if req.result is None else self._bounded(req.result, "result", "task_result_max_bytes")
        mask = await self.masks.masker(caller)
        if mask and req.result is not None:
            req = req.model_copy(update={"result": mask.value(req.result)})
            size = self._bounded(req.result, "result", "task_result_max_bytes")
        now = self.clock.now()
        async with self.store.write(now, rows=True) as tx:
            run = await self._end(tx, caller, req, tm.TaskRunStatus.completed, result=req.result)
            if not await tx.tasks.finish_task(run.task_id, run.id, tm.TaskStatus.completed, result=req.result):
                raise errors.Conflict("run_id: the task is no longer held by this run")
            task = await tx.tasks.task_event(run.task_id, run.id, "task.completed", f"completed (attempt {run.attempt})", {})
            if size:
                await self.quotas.charge(tx, caller, task.workspace_id, Usage(task_bytes=size), field="result")
            return tm.LeaseResult(lease=run.lease(), run=run.record(), task=task.record())

    async def fail(self, caller: Caller, req: tm.Fail) -> tm.LeaseResult:
        caller.require("tasks", "task_fail")
        mask = await self.masks.masker(caller)
        if mask:
            req = req.model_copy(update={"error": mask.line(req.error)})
        now = self.clock.now()
        async with self.store.write(now, rows=True) as tx:
            run = await self._end(tx, caller, req, tm.TaskRunStatus.failed, error=req.error,
                                  failure_kind=tm.FailureKind.error)
            task = await tx.tasks.task(run.task_id)
            assert task is not None
            await self._after_failure(tx, task, run.id, tm.FailureKind.error, req.error, now)
            await self.quotas.charge(tx, caller, task.workspace_id, Usage(task_bytes=len(req.error.encode())),
                                     field="error")
            return await self._answer(tx, run.id)

    async def release(self, caller: Caller, req: tm.Holding) -> tm.LeaseResult:
        """Give the task back at once; a release does not count against max_attempts."""
        caller.require("tasks", "task_release")
        now = self.clock.now()
        async with self.store.write(now, rows=True) as tx:
            run = await self._end(tx, caller, req, tm.TaskRunStatus.released)
            if not await tx.tasks.requeue_task(run.task_id, run.id, failed=False, available_at=now):
                raise errors.Conflict("run_id: the task is no longer held by this run")
            await tx.tasks.task_event(run.task_id, run.id, "task.released", "released to the queue", {})
            return await self._answer(tx, run.id)

    async def bundle(self, caller: Caller, recent: int) -> dict[str, Any] | None:
        """The task the caller holds through its newest live lease, for its context (None: none held)."""
        live = await self.store.tasks.live_task_runs_of(caller.session_id, self.clock.now())
        if not live:
            return None
        current = live[-1]
        task = await self.store.tasks.task(current.task_id)
        assert task is not None
        prior = [r for r in await self.store.tasks.task_runs(task.id) if r.id != current.id]
        events = (await self.store.tasks.task_events(task.id))[-recent:]
        handoff = "; ".join(f"attempt {r.attempt} {r.status}" + (f": {r.error}" if r.error else "") for r in prior)
        return tm.TaskBundle(
            task=task.record(), current_run=current.record(), prior_attempts=[r.record() for r in prior],
            recent_events=[tm.TaskEvent(sequence=e["sequence"], event_type=e["type"], message=e["message"],
                                        run_id=e["run_id"], payload=json.loads(e["payload"]),
                                        created_at=e["created_at"]) for e in events],
            latest_event_seq=task.latest_event_seq, handoff_summary=handoff).model_dump(mode="json")

    async def active_leases(self, caller: Caller) -> list[tm.Lease]:
        return [r.lease() for r in await self.store.tasks.live_task_runs_of(caller.session_id, self.clock.now())]

    # ------------------------------------------------------------ helpers

    async def _after_failure(self, tx: Tx, task: tm.TaskRow, run_id: str, kind: tm.FailureKind, error: str,
                             now: datetime) -> None:
        """A failed or expired attempt: back to the queue after a backoff, or, at max_attempts, failed."""
        failures = task.failures + 1
        if failures >= task.max_attempts:
            await tx.tasks.finish_task(task.id, run_id, tm.TaskStatus.failed, failed=True, failure_kind=kind, error=error)
            await tx.tasks.task_event(task.id, run_id, "task.failed", f"failed after {failures} attempts ({kind})",
                                {"failure_kind": kind, "failures": failures})
            return
        delay = tm.backoff(failures)
        await tx.tasks.requeue_task(task.id, run_id, failed=True, available_at=now + timedelta(seconds=delay))
        await tx.tasks.task_event(task.id, run_id, "task.retry", f"attempt failed ({kind}); claimable again in {delay:g} s",
                            {"failure_kind": kind, "failures": failures, "backoff_seconds": delay})

    async def _end(self, tx: Tx, caller: Caller, req: tm.Holding, status: tm.TaskRunStatus, **fields: Any,
                   ) -> tm.TaskRunRow:
        run = await tx.tasks.end_task_run(req.task_run_id, Tokens.digest(req.claim_token), caller.session_id, status, **fields)
        if run is None:  # not the live holder's: the read says why (and raises)
            await self._held(tx, caller, req)
            raise errors.Conflict("run_id: the lease changed meanwhile; claim again")
        return run

    async def _held(self, tx: Tx, caller: Caller, req: tm.Holding) -> tm.TaskRunRow:
        """The run, if the caller is its current holder with a live lease; else a diagnostic saying why not."""
        run = await tx.tasks.task_run(req.task_run_id)
        if run is None:
            raise errors.NotFound("task run", req.task_run_id, suggested_command="agentdock tasks list")
        if run.session_id != caller.session_id:
            raise errors.PermissionDenied(
                f"run_id: task run {run.id} was claimed by another session, not by you; only its holder's claim "
                "token works", evidence={"field": "task_run_id"})
        if Tokens.digest(req.claim_token) != run.claim_token_hash:
            raise errors.PermissionDenied("claim_token: not the claim token of this task run",
                                          evidence={"field": "claim_token", "task_run_id": run.id})
        if run.status is not tm.TaskRunStatus.running:
            task = await tx.tasks.task(run.task_id)
            raise errors.InvalidTransition(
                f"run_id: task run {run.id} has already ended ({run.status}); the task is {task.status}"
                + (f", now held by run {task.current_run_id}" if task.current_run_id else ""),
                suggested_command=f"agentdock tasks get {run.task_id}",
                evidence={"field": "task_run_id", "status": run.status, "task_status": task.status,
                          "current_run_id": task.current_run_id})
        if run.lease_until <= tx.now:
            raise errors.InvalidTransition(
                f"run_id: the lease of task run {run.id} expired at {run.lease_until.isoformat()}; the task goes "
                "back to the queue", suggested_command="agentdock tasks claim",
                evidence={"field": "task_run_id", "lease_until": run.lease_until.isoformat()})
        return run

    def _bounded(self, value: Any, field: str, setting: str) -> int:
        """The bytes `value` takes as stored JSON, refused past its bound (a setting) naming `field`."""
        limit = getattr(self.settings, setting)
        size = len(json.dumps(value).encode())
        if size > limit:
            raise errors.InvalidInput(field, f"{size} bytes as JSON; at most {limit} ({env_name(setting)}). Put bigger "
                                             "data in a file under /workspace or an artifact and pass its path",
                                      evidence={"limit": limit, "bytes": size})
        return size

    async def _answer(self, tx: Tx, run_id: str) -> tm.LeaseResult:
        run = await tx.tasks.task_run(run_id)
        task = await tx.tasks.task(run.task_id)
        return tm.LeaseResult(lease=run.lease(), run=run.record(), task=task.record())

    async def _visible_task(self, caller: Caller, task_id: str) -> tm.TaskRow:
        row = await self.store.tasks.task(task_id)
        workspace = await self._workspace_of(caller)
        if row is None or (workspace is not None and row.workspace_id != workspace):
            raise errors.NotFound("task", task_id, suggested_command="agentdock tasks list")
        return row

    async def _workspace_of(self, caller: Caller) -> str | None:
        """The workspace a session's tasks live in; None for the local user (every workspace)."""
        if caller.is_root:
            return None
        ws = self._workspaces.get(caller.session_id) or await self.store.sessions.session_workspace(caller.session_id)
        if ws is None:
            raise errors.Unauthenticated(f"no session {caller.session_id}")
        self._workspaces[caller.session_id] = ws
        return ws
