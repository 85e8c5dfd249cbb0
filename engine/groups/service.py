"""Agent run groups: create, get, list, dispatch, events, wait, cancel, and the entry scheduler.

A dispatch writes one durable entry per manifest item (`queued`) in one transaction. The scheduler
(`schedule()`, run by `engine.admission` in its one loop, woken by commits) settles entries whose
child run has ended, then claims the oldest queued entries under each group's `concurrency_limit`,
creating each one's child run `queued` in the same transaction; admission then starts those runs
under the daemon-wide cap. An entry whose run was lost with its sandbox or process goes back to
`queued` for a new attempt. Every change is committed together with its group event, so the group's
stream (`topics.group(id)`) has one gapless sequence over its own and every child's events.
"""

from __future__ import annotations

import hashlib
import json
import logging

import anyio
from pydantic import ValidationError

from engine import authority, errors, ids, masking, topics
from engine.approvals import models as approval_models
from engine.approvals.service import ApprovalService
from engine.groups import models as gm
from engine.callers import ROOT, Caller
from engine.masking import Masking
from engine.ports import Clock
from engine.records import EventRow
from engine.groups.models import EntryRow, GroupRow
from engine.runs.models import RunRow
from engine.runs.service import Prepared, RunService
from engine.settings import Settings
from engine.store import Store, Tx, new_id

log = logging.getLogger("agentdock.groups")

LOST = frozenset({"sandbox_lost", "process_lost"})
"""Failure kinds of a run lost to its infrastructure, not its own doing: its entry gets a new attempt."""
BATCH = 256
"""Entries settled or claimed per transaction."""
ACTIVE = (gm.GroupStatus.queued.value, gm.GroupStatus.running.value)


def entry_outcome(run_status: str, failure_kind: str | None, attempts: int, max_attempts: int,
                  canceling: bool) -> gm.EntryStatus:
    """What a running entry becomes when its run has ended: the run's status, or `queued` again (a
    new attempt) when the run was lost, attempts remain and the group is not being canceled."""
    if run_status == "failed" and failure_kind in LOST and attempts < max_attempts and not canceling:
        return gm.EntryStatus.queued
    return gm.EntryStatus(run_status)


def group_outcome(counts: dict[str, int], expected_runs: int | None, canceling: bool) -> gm.GroupStatus | None:
    """The group's end once nothing is queued or running and enough was dispatched; None: still active."""
    if counts.get("queued", 0) or counts.get("running", 0):
        return None
    if canceling:
        return gm.GroupStatus.canceled
    if sum(counts.values()) < max(expected_runs or 0, 1):
        return None
    if counts.get("failed", 0):
        return gm.GroupStatus.failed
    if counts.get("canceled", 0):
        return gm.GroupStatus.canceled
    return gm.GroupStatus.succeeded


class GroupService:
    def __init__(self, store: Store, runs: RunService, clock: Clock, settings: Settings,
                 approvals: ApprovalService | None = None, *, masks: Masking | None = None) -> None:
        self.store = store
        self.runs = runs
        self.approvals = approvals or ApprovalService(store, clock, settings)
        self.clock = clock
        self.settings = settings
        self.masks = masks or runs.masks

    # ------------------------------------------------------------ requests

    async def create(self, caller: Caller, req: gm.GroupCreate) -> gm.Group:
        caller.require("groups")
        if req.workspace_id is not None:
            caller.use_workspace(req.workspace_id)  # its children run there, under that workspace's default profile
        req = masking.masked(await self.masks.masker(caller), req, text=("name",), json=("metadata",),
                             ids=("workspace_id", "project_id", "idempotency_key"))
        cap = self.settings.max_active_runs
        daemons = 1
        if self.store.shared:  # several daemons on one database: their caps together
            daemons = max(1, sum(1 for d in await self.store.daemons.list() if d.lost_at is None))
        limit = req.concurrency_limit if req.concurrency_limit is not None else min(gm.DEFAULT_CONCURRENCY, cap)
        if limit > cap * daemons:
            whose = "the daemon's cap" if daemons == 1 else f"the {daemons} daemons' caps together"
            raise errors.InvalidInput("concurrency_limit", f"must be between 1 and {cap * daemons}, {whose} on "
                                      "active runs (AGENTDOCK_MAX_ACTIVE_RUNS)", evidence={"limit": cap * daemons})
        fingerprint = _hash(json.dumps({**req.model_dump(mode="json", exclude={"idempotency_key"}),
                                        "concurrency_limit": limit}, sort_keys=True))
        if req.idempotency_key:
            existing = await self._same_group(caller, req.idempotency_key, fingerprint)
            if existing is not None:
                return existing
        now = self.clock.now()
        group_id = new_id("grp")
        row = {"id": group_id, "name": req.name, "workspace_id": req.workspace_id, "project_id": req.project_id,
               "concurrency_limit": limit, "expected_runs": req.expected_runs, "metadata": req.metadata,
               "status": gm.GroupStatus.queued.value, "idempotency_key": req.idempotency_key,
               "request_hash": fingerprint, "created_at": now, "updated_at": now, "created_by": caller.session_id}
        try:
            async with self.store.write(now) as tx:
                await authority.require_active(tx, caller)
                await tx.groups.insert_group(row)
        except errors.Conflict:
            if req.idempotency_key:
                existing = await self._same_group(caller, req.idempotency_key, fingerprint)
                if existing is not None:
                    return existing
            raise
        return await self.get(caller, group_id)

    async def _same_group(self, caller: Caller, key: str, fingerprint: str) -> gm.Group | None:
        row = await self.store.groups.group_by_idempotency_key(caller.session_id, key)
        if row is None:
            return None
        if row.request_hash != fingerprint:
            raise errors.Conflict(f"idempotency key {key!r} was already used for a different group ({row.id})",
                                  suggested_command=f"agentdock agent-run-groups show {row.id}",
                                  evidence={"group_id": row.id, "idempotency_key": key})
        return await self._record(row)

    async def _row(self, caller: Caller, group_id: str) -> GroupRow:
        caller.require("groups")
        ids.GROUP.check(group_id, "group_id")
        row = await self.store.groups.group(group_id)
        if row is None or not caller.sees(row.created_by):
            raise errors.NotFound("group", group_id)
        return row

    async def get(self, caller: Caller, group_id: str) -> gm.Group:
        return await self._record(await self._row(caller, group_id))

    async def list(self, caller: Caller, q: gm.GroupListQuery) -> gm.GroupList:
        caller.require("groups")
        if q.cursor and await self.store.groups.group(q.cursor) is None:
            raise errors.InvalidInput("cursor", "unknown cursor; pass the next_cursor of a previous page")
        rows = await self.store.groups.list(status=q.status.value if q.status else None, workspace_id=q.workspace_id,
                                       project_id=q.project_id, cursor=q.cursor, limit=q.limit,
                                       created_by=None if caller.is_root else caller.session_id)
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        return gm.GroupList(data=[await self._record(r) for r in rows], next_cursor=rows[-1].id if more else None)

    async def _record(self, row: GroupRow) -> gm.Group:
        ec = await self.store.groups.entry_counts(row.id)
        rc = await self.store.groups.group_run_counts(row.id)
        entry_counts = gm.EntryCounts(total=sum(ec.values()), **ec)
        counts = gm.Counts(total=sum(rc.values()), **{k: v for k, v in rc.items() if k != "queued"})
        status = gm.GroupStatus(row.status)
        return gm.Group(
            id=row.id, name=row.name, workspace_id=row.workspace_id, project_id=row.project_id,
            concurrency_limit=row.concurrency_limit, expected_runs=row.expected_runs, metadata=row.metadata,
            status=status, counts=counts, entry_counts=entry_counts, is_active=not status.terminal,
            status_message=_message(status, entry_counts, row), cancel_requested=row.cancel_requested is not None,
            idempotency_key=row.idempotency_key, created_at=row.created_at, updated_at=row.updated_at,
            finished_at=row.finished_at)

    async def wait(self, caller: Caller, group_id: str, timeout: float) -> gm.Group:
        """The group once it has ended, or as it is when `timeout` passes."""
        async def look() -> tuple[bool, gm.Group]:
            group = await self.get(caller, group_id)
            return not group.is_active, group

        return await topics.until(self.store.topics, self.clock, topics.group(group_id), timeout, look)

    # ------------------------------------------------------------ dispatch

    async def dispatch(self, caller: Caller, group_id: str, req: gm.DispatchRequest,
                       wait: float = 0) -> gm.DispatchResult:
        """Queue one entry per item in one transaction; unless `async`, wait (at most `wait` s) for them
        all to end. The same idempotency key with the same manifest is the same dispatch, answered (and
        waited for) again: the handle for a synchronous dispatch that was not done in time."""
        caller.require("runs")
        group = await self._row(caller, group_id)
        req = await self._masked(caller, req)
        for i, item in enumerate(req.runs):  # an item that cannot apply refuses the dispatch, writing nothing
            workspace = caller.use_workspace(item.workspace_id, f"runs.{i}.workspace_id")
            if group.workspace_id is not None and item.workspace_id not in (None, group.workspace_id):
                raise errors.InvalidInput(
                    f"runs.{i}.workspace_id", f"the group's children run in its workspace {group.workspace_id!r}; "
                    "leave workspace_id out of its items", evidence={"group_workspace_id": group.workspace_id})
            workspace = group.workspace_id or workspace
            if item.profile_asked:
                field = "agent_runtime_profile_id" if item.agent_runtime_profile_id else "agent_profile_id"
                await self.runs.profiles.resolve(caller, skip=False, explicit=item.profile_asked,
                                                 workspace=workspace, field=f"runs.{i}.{field}")
        items = [item.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)
                 for item in req.runs]  # unset: a defaulted provider is not one asked for (a profile's applies)
        fingerprint = _hash(json.dumps({"group": group_id, "runs": items}, sort_keys=True))
        dispatch_id = None
        if req.idempotency_key:
            dispatch_id = await self._same_dispatch(caller, req.idempotency_key, group_id, fingerprint)
        if dispatch_id is None:
            dispatch_id = new_id("gdsp")
            try:
                await self._queue(caller, group, dispatch_id, req, items, fingerprint)
            except errors.Conflict:
                existing = req.idempotency_key and await self._same_dispatch(
                    caller, req.idempotency_key, group_id, fingerprint)
                if not existing:
                    raise
                dispatch_id = existing
        return await self._answer(caller, group_id, dispatch_id, 0 if req.async_ else wait, with_results=not req.async_)

    async def _masked(self, caller: Caller, req: gm.DispatchRequest) -> gm.DispatchRequest:
        """The manifest as it may be stored: each item's prompt, command, metadata and env masked for the
        secrets the caller holds (an id or role holding one refused, naming its item)."""
        mask = await self.masks.masker(caller)
        if not mask:
            return req
        masking.refuse(mask, {"idempotency_key": req.idempotency_key})
        items = []
        for i, item in enumerate(req.runs):
            try:
                masking.refuse(mask, {"orchestration_role": item.orchestration_role})
                items.append(await self.runs.masked(caller, item))
            except errors.InvalidInput as exc:
                raise errors.InvalidInput(f"runs.{i}.{exc.field}", exc.message.split(": ", 1)[1],
                                          evidence={"masked": True}) from None
        return req.model_copy(update={"runs": items})

    async def dispatch_status(self, caller: Caller, group_id: str, dispatch_id: str, wait: float = 0,
                              ) -> gm.DispatchResult:
        """An earlier dispatch's entries and results once all have ended, or as they are when `wait` passes."""
        await self._row(caller, group_id)
        ids.DISPATCH.check(dispatch_id, "dispatch_id")
        row = await self.store.groups.dispatch(dispatch_id)
        if row is None or row.group_id != group_id or not caller.sees(row.created_by):
            raise errors.NotFound("dispatch", dispatch_id)
        return await self._answer(caller, group_id, dispatch_id, wait, with_results=True)

    async def _same_dispatch(self, caller: Caller, key: str, group_id: str, fingerprint: str) -> str | None:
        row = await self.store.groups.dispatch_by_idempotency_key(caller.session_id, key)
        if row is None:
            return None
        if row.request_hash != fingerprint:
            raise errors.Conflict(
                f"idempotency key {key!r} was already used for a different dispatch (group {row.group_id})",
                suggested_command=f"agentdock agent-run-groups show {row.group_id} --runs",
                evidence={"group_id": row.group_id, "dispatch_id": row.id, "idempotency_key": key})
        return row.id

    async def _queue(self, caller: Caller, group: GroupRow, dispatch_id: str, req: gm.DispatchRequest,
                     items: list[dict[str, object]], fingerprint: str) -> None:
        now = self.clock.now()
        entry_ids = [new_id("agre") for _ in items]
        async with self.store.write(now) as tx:
            await authority.require_active(tx, caller)
            if not await tx.groups.open_group(group.id):
                current = await tx.groups.group(group.id)
                state = "is being canceled" if current and current.status in ACTIVE else (
                    f"has ended {current.status}" if current else "is gone")
                raise errors.InvalidTransition(
                    f"group {group.id} {state}; dispatch into a new group",
                    suggested_command="agentdock agent-run-groups create", evidence={"group_id": group.id})
            first = await tx.groups.next_entry_position(group.id)
            await tx.groups.insert_dispatch({"id": dispatch_id, "group_id": group.id, "first_index": first,
                                      "count": len(items), "is_async": req.async_,
                                      "idempotency_key": req.idempotency_key, "request_hash": fingerprint,
                                      "created_at": now, "created_by": caller.session_id})
            await tx.groups.insert_entries(group.id, dispatch_id, first, items, entry_ids)
            await tx.append_group_events(group.id, [
                (None, "entry_queued", f"Entry {first + i} queued", {
                    "entry_id": entry_id, "index": first + i,
                    "orchestration_role": item.orchestration_role})
                for i, (entry_id, item) in enumerate(zip(entry_ids, req.runs, strict=True))])

    async def _answer(self, caller: Caller, group_id: str, dispatch_id: str, wait: float, *,
                      with_results: bool) -> gm.DispatchResult:
        stream = topics.group(group_id)

        async def look() -> tuple[bool, tuple[bool, int, list[EntryRow]]]:
            cursor = await self.store.stream_last(stream)
            rows = await self.store.groups.dispatch_entries(dispatch_id)
            done = all(gm.EntryStatus(e.status).terminal for e in rows)
            return done, (done, cursor, rows)

        done, cursor, rows = await topics.until(self.store.topics, self.clock, stream, wait, look)
        results = []
        if with_results:
            ended = [e for e in rows if gm.EntryStatus(e.status).terminal]
            found = await self.store.runs.runs_by_ids([e.run_id for e in ended if e.run_id],
                                                 budget=self.settings.list_page_max_bytes)
            results = [_result(e, found.get(e.run_id or "")) for e in ended]
        return gm.DispatchResult(group=await self.get(caller, group_id), results=results,
                                 entries=[_entry(e) for e in rows], dispatch_id=dispatch_id, done=done,
                                 next_after_sequence=cursor)

    # ------------------------------------------------------------ reading

    async def events(self, caller: Caller, group_id: str, q: gm.GroupEventsQuery) -> gm.GroupEventList:
        """Events after `q.after_sequence`; with `q.wait_seconds`, long-poll until one is committed or the group ends."""
        await self._row(caller, group_id)
        stream = topics.group(group_id)
        last = await self.store.stream_last(stream)
        if q.after_sequence > last:
            raise errors.InvalidInput("after_sequence", f"is beyond the end of the group's events (its last "
                                      f"sequence is {last}); pass a sequence you were given",
                                      evidence={"last_sequence": last})
        async def look() -> tuple[bool, tuple[gm.GroupStatus, list[EventRow]]]:
            # The status first: a group seen ended has committed its last event (group_finished) with that
            # status, so the read after it has every event. The other order could see no events, then
            # the end committed in between, and tell the reader to stop with two events unread.
            status = gm.GroupStatus((await self._row(caller, group_id)).status)
            rows = await self.store.events(stream, q.after_sequence, q.limit, self.settings.list_page_max_bytes)
            return bool(rows) or status.terminal, (status, rows)

        status, rows = await topics.until(self.store.topics, self.clock, stream, q.wait_seconds, look)
        data = [gm.GroupEvent(id=r.id, agent_run_group_id=group_id, agent_run_id=r.run_id, sequence=r.sequence,
                              type=r.type, message=r.message, payload=r.payload, created_at=r.created_at)
                for r in rows]
        return gm.GroupEventList(data=data, group_status=status, is_active=not status.terminal,
                                 next_after_sequence=data[-1].sequence if data else q.after_sequence)

    async def group_runs(self, caller: Caller, group_id: str, q: gm.GroupRunsQuery) -> gm.GroupRunList:
        """The group's entries in order, each with its latest run (input and output when asked)."""
        await self._row(caller, group_id)
        rows = await self.store.groups.group_entries(group_id, start=q.cursor or 0, limit=q.limit + 1,
                                              status=q.status.value if q.status else None)
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        found = await self.store.runs.runs_by_ids([e.run_id for e in rows if e.run_id],
                                             budget=self.settings.list_page_max_bytes if q.include_output else -1)
        data = [_group_run(e, found.get(e.run_id or ""), q) for e in rows]
        return gm.GroupRunList(data=data, next_cursor=rows[-1].position + 1 if more else None)

    # ------------------------------------------------------------ cancel

    async def cancel(self, caller: Caller, group_id: str) -> gm.Group:
        """Queued entries end `canceled` without starting, running children are canceled (their processes
        killed), and the group ends `canceled`. Canceling again returns the canceled group."""
        row = await self._row(caller, group_id)
        status = gm.GroupStatus(row.status)
        if status is gm.GroupStatus.canceled:
            return await self._record(row)
        if status.terminal:
            raise errors.InvalidTransition(f"group {group_id} already {status.value}; only active groups can be "
                                           "canceled", evidence={"group_id": group_id})
        await self.approvals.require(caller, approval_models.cancel_group(group_id))
        now = self.clock.now()
        async with self.store.write(now) as tx:
            if await tx.groups.request_group_cancel(group_id):
                canceled = await tx.groups.cancel_queued_entries(group_id)
                await tx.append_group_events(group_id, [
                    (None, "group_cancel_requested", "Group cancel requested", {"queued_canceled": len(canceled)}),
                    *[(None, "entry_finished", f"Entry {pos} canceled", {
                        "entry_id": entry_id, "index": pos, "status": "canceled", "run_id": None})
                      for entry_id, pos in canceled]])
                await self._finish_if_done(tx, group_id)
        acting = await self._acting(row)
        async with anyio.create_task_group() as tg:
            for run_id in await self.store.groups.running_entry_runs(group_id):
                tg.start_soon(self._cancel_run, acting, run_id)
        return await self.wait(caller, group_id, self.settings.cancel_grace_seconds + 10)

    async def _cancel_run(self, caller: Caller, run_id: str) -> None:
        try:
            await self.runs.cancel(caller, run_id)
        except errors.InvalidTransition:
            pass  # it ended on its own meanwhile

    # ------------------------------------------------------------ scheduler

    async def schedule(self) -> None:
        """One pass: settle entries whose run ended, then claim what the groups' limits allow."""
        await self.settle()
        await self.claim()

    async def settle(self) -> int:
        settled = 0
        while pending := await self.store.groups.entries_to_settle(BATCH):
            async with self.store.write(self.clock.now()) as tx:
                touched: set[str] = set()
                for entry, run_status, kind in pending:
                    group = await tx.groups.group(entry.group_id)
                    assert group is not None
                    outcome = entry_outcome(run_status, kind, entry.attempts, self.settings.group_entry_max_attempts,
                                            group.cancel_requested is not None)
                    if not await tx.groups.transition_entry(entry.id, entry.group_id, ["running"], status=outcome.value):
                        continue
                    if outcome is gm.EntryStatus.queued:
                        event = ("entry_retried", f"Entry {entry.position} queued again: its run was lost ({kind})",
                                 {"entry_id": entry.id, "index": entry.position, "lost_run_id": entry.run_id,
                                  "failure_kind": kind, "attempts": entry.attempts})
                    else:
                        event = ("entry_finished", f"Entry {entry.position} {outcome.value}", {
                            "entry_id": entry.id, "index": entry.position, "status": outcome.value,
                            "run_id": entry.run_id, "attempts": entry.attempts, "failure_kind": kind})
                    await tx.append_group_events(entry.group_id, [(entry.run_id, *event)])
                    touched.add(entry.group_id)
                    settled += 1
                for group_id in touched:
                    await self._finish_if_done(tx, group_id)
        return settled

    async def claim(self) -> int:
        claimed = 0
        while rows := await self.store.groups.claimable_entries(BATCH):
            groups: dict[str, GroupRow] = {}
            acting: dict[str, Caller] = {}
            prepared: list[tuple[EntryRow, gm.ManifestItem | None, Prepared | None, errors.Diagnostic | None]] = []
            for entry in rows:
                if entry.group_id not in groups:
                    groups[entry.group_id] = await self.store.groups.group(entry.group_id)  # type: ignore[assignment]
                    acting[entry.group_id] = await self._acting(groups[entry.group_id])
                prepared.append(await self._prepare(groups[entry.group_id], entry, acting[entry.group_id]))
            async with self.store.write(self.clock.now()) as tx:
                failed: set[str] = set()
                for entry, item, run, diag in prepared:
                    gid = entry.group_id
                    if run is not None and not (acting[gid].is_root or await tx.sessions.session_active(acting[gid].session_id)):
                        run, diag = None, errors.Unauthenticated(  # stopped since: nothing starts under it any more
                            f"session {acting[gid].session_id}, which created group {gid}, has stopped; its queued "
                            "entries do not start", evidence={"session_id": acting[gid].session_id}).diagnostic()
                    if run is not None and item is not None:
                        if not await tx.groups.transition_entry(entry.id, gid, ["queued"], status="running",
                                                         attempts=entry.attempts + 1, run_id=run.run_id):
                            continue
                        await tx.append_group_events(gid, [(run.run_id, "entry_started", (
                            f"Entry {entry.position} started (attempt {entry.attempts + 1})"), {
                            "entry_id": entry.id, "index": entry.position, "run_id": run.run_id,
                            "attempt": entry.attempts + 1, "orchestration_role": item.orchestration_role})])
                        await self.runs.record(tx, run, group_id=gid)
                        await tx.groups.set_run_group(run.run_id, gid, item.orchestration_role, item.parent_agent_run_id)
                        claimed += 1
                    else:
                        assert diag is not None
                        body = diag.model_dump(mode="json")
                        if not await tx.groups.transition_entry(entry.id, gid, ["queued"], status="failed", diagnostic=body):
                            continue
                        await tx.append_group_events(gid, [(None, "entry_finished", (
                            f"Entry {entry.position} failed: {diag.message}"), {
                            "entry_id": entry.id, "index": entry.position, "status": "failed", "run_id": None,
                            "diagnostic": body})])
                        failed.add(gid)
                for gid in failed:
                    await self._finish_if_done(tx, gid)
        return claimed

    async def _prepare(self, group: GroupRow, entry: EntryRow, acting: Caller,
                       ) -> tuple[EntryRow, gm.ManifestItem | None, Prepared | None, errors.Diagnostic | None]:
        """The entry's child run checked against the world now (its target may have gone since the
        dispatch), as the group's creator (`acting`); a failure is the entry's own diagnostic."""
        try:
            item = gm.ManifestItem.model_validate(entry.request)
            if item.parent_agent_run_id:
                parent = await self.store.runs.run(item.parent_agent_run_id)
                if parent is None or not acting.sees(parent.created_by):
                    raise errors.NotFound("run", item.parent_agent_run_id,
                                          evidence={"field": "parent_agent_run_id"})
            return entry, item, await self.runs.prepare(acting, item.run_request(),
                                                        workspace=group.workspace_id), None
        except errors.EngineError as exc:
            return entry, None, None, exc.diagnostic()
        except ValidationError as exc:  # an entry written by an older version that this one reads differently
            return entry, None, None, errors.InvalidInput("runs", str(exc.errors()[0]["msg"])).diagnostic()

    async def _finish_if_done(self, tx: Tx, group_id: str) -> None:
        group = await tx.groups.group(group_id)
        if group is None or group.status not in ACTIVE:
            return
        counts = await tx.groups.entry_counts(group_id)
        outcome = group_outcome(counts, group.expected_runs, group.cancel_requested is not None)
        if outcome is None:
            return
        if await tx.groups.transition_group(group_id, ACTIVE, status=outcome.value, finished_at=tx.now):
            await tx.append_group_events(group_id, [(None, "group_finished", f"Group {outcome.value}", {
                "status": outcome.value, "entry_counts": {**counts, "total": sum(counts.values())}})])


    async def _acting(self, group: GroupRow) -> Caller:
        """The group's creator, as whom its children are created and canceled: its workspace and effective
        limits hold for them as for the runs it starts itself."""
        if group.created_by == ROOT.session_id:
            return ROOT
        toolsets = frozenset({"devices", "runs", "groups"})
        row = await self.store.sessions.session(group.created_by)
        if row is None:  # cannot happen (sessions are never deleted); nothing is then allowed beyond the defaults
            return Caller(session_id=group.created_by, toolsets=toolsets,
                          limits=authority.Limits(network=False, tools=[]))
        return row.caller(toolsets=toolsets)


# ---------------------------------------------------------------- records


def _entry(e: EntryRow) -> gm.Entry:
    return gm.Entry(id=e.id, agent_run_group_id=e.group_id, index=e.position, status=gm.EntryStatus(e.status),
                    attempts=e.attempts, run_id=e.run_id, orchestration_role=e.request.get("orchestration_role"),
                    diagnostic=errors.Diagnostic.model_validate(e.diagnostic) if e.diagnostic else None,
                    created_at=e.created_at, updated_at=e.updated_at)


def _run_diagnostic(run: RunRow) -> errors.Diagnostic | None:
    if run.status.value == "succeeded":
        return None
    return errors.Diagnostic(code=run.failure_kind or "run_failed", category="run", title=f"Run {run.status.value}",
                             message=run.error or f"the run ended {run.status.value}",
                             suggested_command=f"agentdock runs get {run.id}", evidence={"run_id": run.id})


def _result(e: EntryRow, run: RunRow | None) -> gm.DispatchResultItem:
    diag = errors.Diagnostic.model_validate(e.diagnostic) if e.diagnostic else (
        _run_diagnostic(run) if run is not None else None)
    if diag is None and e.status == "canceled":  # canceled while queued: it never got a run
        diag = errors.Diagnostic(code="canceled", category="state", title="Canceled",
                                 message="the group was canceled before this item started",
                                 evidence={"entry_id": e.id})
    return gm.DispatchResultItem(index=e.item_index, entry_id=e.id, ok=e.status == "succeeded",
                                 run=run.record() if run is not None else None, diagnostic=diag)


def _group_run(e: EntryRow, run: RunRow | None, q: gm.GroupRunsQuery) -> gm.GroupRun:
    return gm.GroupRun(
        entry_id=e.id, index=e.position, status=gm.EntryStatus(e.status), attempts=e.attempts,
        orchestration_role=e.request.get("orchestration_role"), run_id=e.run_id,
        run_status=run.status if run else None, failure_kind=run.failure_kind if run else None,
        started_at=run.started_at if run else None, finished_at=run.finished_at if run else None,
        diagnostic=errors.Diagnostic.model_validate(e.diagnostic) if e.diagnostic else None,
        input=gm.RunInput(provider=run.provider, prompt=run.prompt, command=run.command, model=run.model,
                          target_id=run.target_id, cwd=run.cwd, metadata=run.metadata)
        if run is not None and q.include_input else None,
        output=gm.RunOutput(output=run.output, stderr=run.stderr, exit_code=run.exit_code,
                            output_omitted=run.output_omitted)
        if run is not None and q.include_output else None)


def _message(status: gm.GroupStatus, c: gm.EntryCounts, row: GroupRow) -> str:
    if status is gm.GroupStatus.queued:
        return "waiting for its first dispatch" + (f" ({row.expected_runs} runs expected)" if row.expected_runs else "")
    tally = (f"{c.succeeded} succeeded, {c.failed} failed, {c.canceled} canceled")
    if status.terminal:
        return f"{status.value}: {c.total} entries, {tally}"
    text = f"{c.running} running, {c.queued} queued, {tally} of {c.total} entries"
    if row.expected_runs and row.expected_runs > c.total:
        text += f"; {row.expected_runs - c.total} more expected"
    if row.cancel_requested is not None:
        text += "; canceling"
    return text


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()
