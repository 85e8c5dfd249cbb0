"""Approvals a person gives (issue 16, part 3), on real SQLite, the shipped fake backend and the fake
clock: a risky call of a session under `confirm-risky` records a pending approval and does nothing
until a person approves it; the approval is used once, by that session, for that call; expiry denies;
only the local user, or a session holding the `approvals` permission for the sessions below it, decides;
every change is in the audit stream with who decided."""

from __future__ import annotations


import anyio
import pytest

from engine.approvals import models as am
from engine import errors, models, topics
from engine.devices import models as dm
from engine.groups import models as gm
from engine.profiles import models as pm
from engine.app import Engine
from engine.callers import ROOT, Caller
from engine.clock import FakeClock
from engine.lineage import PermissionPolicy
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import adapters
from runtimes.fake import FakeBackend
from tests import peek

pytestmark = pytest.mark.anyio
TTL = 600.0


def engine_for(tmp_path, clock: FakeClock | None = None) -> Engine:
    settings = Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02, approval_ttl_seconds=TTL)
    return Engine(settings, backend=FakeBackend(), harnesses=adapters.get, clock=clock)


async def careful_profile(engine: Engine) -> pm.Profile:
    return await engine.profiles.create(ROOT, models.parse(pm.ProfileCreate, {
        "name": "careful", "runtime": "custom", "network": True, "policy": {"approval": "confirm-risky"}}))


async def session(engine: Engine, parent: Caller = ROOT, *, tools: list[str] | None = None,
                  careful: bool = True) -> Caller:
    """A session spawned by `parent` (under the confirm-risky profile unless `careful` is False)."""
    profile = (await engine.profiles.list(ROOT, pm.ProfileListQuery())).data
    ask = {"agent_name": "w", "permissions": {"tools": tools or ["devices", "groups"], "sandbox_profiles": ["*"]},
           "agent_runtime_profile_id": profile[0].id if careful else None,
           "skip_agent_runtime_profile": not careful}
    spawned = await engine.sessions.spawn(parent, models.parse(SpawnRequest, {k: v for k, v in ask.items()
                                                                             if v is not None}))
    return await engine.sessions.authenticate(spawned.token)


async def refused(call) -> errors.EngineError:
    with pytest.raises(errors.PermissionDenied) as caught:
        await call
    return caught.value


def count(engine: Engine, sql: str) -> int:
    return peek.count(engine.settings, sql)


async def history(engine: Engine) -> list[tuple[str, dict]]:
    page = await engine.approvals.events(ROOT, am.ApprovalEventsQuery())
    return [(e.type, e.payload) for e in page.data]


async def test_a_risky_delete_waits_for_approval_then_goes_ahead_once(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        box = await engine.devices.create(child, dm.DeviceCreate())

        first = await refused(engine.devices.delete(child, box.id))
        again = await refused(engine.devices.delete(child, box.id))
        still_there = await engine.devices.get(child, box.id)
        approval_id = first.evidence["approval_id"]
        approved = await engine.approvals.approve(ROOT, approval_id, am.Decision(reason="fine"))
        deleted = await engine.devices.delete(child, box.id)
        after = await engine.approvals.get(child, approval_id)
        events = await history(engine)

    assert isinstance(first, errors.ApprovalRequired) and first.diagnostic().code == "approval_required"
    assert first.http_status == 403 and approval_id.startswith("apr_")
    assert again.evidence["approval_id"] == approval_id  # the pending one is reused, not a second one
    assert first.evidence["action"] == f"device.delete:{box.id}" and "repeat this same call" in first.message
    assert first.suggested_command == f"agentdock approvals get {approval_id} --wait 45"
    assert still_there.status is models.DeviceStatus.running
    assert (approved.status, approved.decided_by, approved.reason) == ("approved", "ses_root", "fine")
    assert deleted.status is models.DeviceStatus.missing
    assert after.status is am.ApprovalStatus.used and after.used_at is not None
    assert [t for t, _ in events] == ["approval_requested", "approval_approved", "approval_used"]
    assert events[1][1] == {"approval_id": approval_id, "session_id": child.session_id,
                            "action": f"device.delete:{box.id}", "decided_by": "ses_root", "reason": "fine"}


async def test_an_approval_is_used_once_and_approves_no_other_call_nor_session(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        group = await engine.groups.create(child, gm.GroupCreate(name="g"))
        other_group = await engine.groups.create(child, gm.GroupCreate(name="h"))
        asked = await refused(engine.groups.cancel(child, group.id))
        await engine.approvals.approve(ROOT, asked.evidence["approval_id"], am.Decision())

        other_call = await refused(engine.groups.cancel(child, other_group.id))
        canceled = await engine.groups.cancel(child, group.id)
        net = await refused(engine.devices.create(child, dm.DeviceCreate(network=True)))
        await engine.approvals.approve(ROOT, net.evidence["approval_id"], am.Decision())
        other_request = await refused(engine.devices.create(child, dm.DeviceCreate(network=True, name="x")))
        made = await engine.devices.create(child, dm.DeviceCreate(network=True))
        twice = await refused(engine.devices.create(child, dm.DeviceCreate(network=True)))

    assert other_call.evidence["approval_id"] != asked.evidence["approval_id"]
    assert canceled.status is gm.GroupStatus.canceled
    assert other_request.evidence["approval_id"] != net.evidence["approval_id"]  # bound to the whole request
    assert made.network is True
    assert isinstance(twice, errors.ApprovalRequired) and twice.evidence["approval_id"] not in (
        net.evidence["approval_id"], other_request.evidence["approval_id"])


async def test_two_racing_calls_with_one_approval_go_ahead_once(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        asked = await refused(engine.devices.create(child, dm.DeviceCreate(network=True)))
        await engine.approvals.approve(ROOT, asked.evidence["approval_id"], am.Decision())
        outcomes: list[str] = []

        async def create() -> None:
            try:
                await engine.devices.create(child, dm.DeviceCreate(network=True))
                outcomes.append("made")
            except errors.ApprovalRequired:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(create)
        devices = (await engine.devices.list(child)).data
    assert sorted(outcomes) == ["made"] + ["refused"] * 4
    assert len(devices) == 1


async def test_a_denied_call_stays_refused_naming_who_denied_and_is_asked_anew_after_its_time(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        box = await engine.devices.create(child, dm.DeviceCreate())
        asked = await refused(engine.devices.delete(child, box.id))
        denied = await engine.approvals.deny(ROOT, asked.evidence["approval_id"], am.Decision(reason="keep it"))
        again = await refused(engine.devices.delete(child, box.id))
        clock.advance(TTL)
        later = await refused(engine.devices.delete(child, box.id))
        still = await engine.devices.get(child, box.id)

    assert (denied.status, denied.decided_by) == ("denied", "ses_root")
    assert isinstance(again, errors.ApprovalDenied) and again.diagnostic().code == "approval_denied"
    assert again.evidence["approval_id"] == asked.evidence["approval_id"] and "keep it" in again.message
    assert isinstance(later, errors.ApprovalRequired)
    assert later.evidence["approval_id"] != asked.evidence["approval_id"]
    assert still.status is models.DeviceStatus.running


async def test_a_pending_approval_expires_as_denied_and_an_approved_one_unused_expires_too(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        group = await engine.groups.create(child, gm.GroupCreate(name="g"))
        box = await engine.devices.create(child, dm.DeviceCreate())
        pending = (await refused(engine.groups.cancel(child, group.id))).evidence["approval_id"]
        approved = (await refused(engine.devices.delete(child, box.id))).evidence["approval_id"]
        clock.advance(TTL / 2)
        await engine.approvals.approve(ROOT, approved, am.Decision())
        expired = engine.store.topics.watch(topics.approval(pending))
        clock.advance(TTL / 2)
        with anyio.fail_after(10):
            await expired.wait()  # the reaper's commit
        late = await refused(engine.groups.cancel(child, group.id))
        with pytest.raises(errors.InvalidTransition):
            await engine.approvals.approve(ROOT, pending, am.Decision())
        used_up = engine.store.topics.watch(topics.approval(approved))
        clock.advance(TTL)
        with anyio.fail_after(10):
            await used_up.wait()
        unused = await refused(engine.devices.delete(child, box.id))
        states = {a.id: a.status for a in (await engine.approvals.list(ROOT, am.ApprovalListQuery())).data}
        events = await history(engine)
        group_now = await engine.groups.get(child, group.id)

    assert states[pending] is am.ApprovalStatus.expired and states[approved] is am.ApprovalStatus.expired
    assert late.evidence["approval_id"] != pending and unused.evidence["approval_id"] != approved
    # the late call's new pending approval ran out with the approved one
    assert [p["was"] for t, p in events if t == "approval_expired"] == ["pending", "approved", "pending"]
    assert group_now.status is not gm.GroupStatus.canceled


async def test_a_wait_on_a_pending_approval_wakes_on_the_decisions_commit(tmp_path):
    clock = FakeClock()  # time never moves here: only the commit can end the wait
    async with engine_for(tmp_path, clock).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        group = await engine.groups.create(child, gm.GroupCreate(name="g"))
        approval_id = (await refused(engine.groups.cancel(child, group.id))).evidence["approval_id"]
        got: list[am.Approval] = []

        async def wait() -> None:
            got.append(await engine.approvals.get(child, approval_id, wait=45))

        with anyio.fail_after(10):
            await clock.until_sleepers(2)  # the session TTL reaper, and the approvals reaper armed for the expiry
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await clock.until_sleepers(3)  # and now the waiter
                assert got == []
                await engine.approvals.approve(ROOT, approval_id, am.Decision())
        canceled = await engine.groups.cancel(child, group.id)
    assert [a.status for a in got] == [am.ApprovalStatus.approved]
    assert canceled.status is gm.GroupStatus.canceled


async def test_a_session_never_decides_its_own_approval_even_holding_the_approvals_permission(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        child = await session(engine, tools=["devices", "groups", "approvals"])
        group = await engine.groups.create(child, gm.GroupCreate(name="g"))
        approval_id = (await refused(engine.groups.cancel(child, group.id))).evidence["approval_id"]
        own = await refused(engine.approvals.approve(child, approval_id, am.Decision()))
        status = (await engine.approvals.get(ROOT, approval_id)).status
    assert own.diagnostic().code == "permission_denied" and "never decides its own" in own.message
    assert status is am.ApprovalStatus.pending


async def test_a_session_granted_approvals_decides_for_the_sessions_below_it_only(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        lead = await session(engine, tools=["agent", "devices", "groups", "approvals"], careful=False)
        worker = await session(engine, lead, tools=["groups"])
        stranger = await session(engine, tools=["groups"])
        mine = await engine.groups.create(worker, gm.GroupCreate(name="g"))
        theirs = await engine.groups.create(stranger, gm.GroupCreate(name="h"))
        below = (await refused(engine.groups.cancel(worker, mine.id))).evidence["approval_id"]
        beside = (await refused(engine.groups.cancel(stranger, theirs.id))).evidence["approval_id"]
        lead = await engine.sessions.authenticate(engine.tokens.token_for(lead.session_id))  # sees its child now
        listed = [a.id for a in (await engine.approvals.list(lead, am.ApprovalListQuery())).data]
        with pytest.raises(errors.NotFound):
            await engine.approvals.approve(lead, beside, am.Decision())
        decided = await engine.approvals.approve(lead, below, am.Decision(reason="lead says yes"))
        canceled = await engine.groups.cancel(worker, mine.id)
        worker_lists = await refused(engine.approvals.list(worker, am.ApprovalListQuery()))
        events = await history(engine)
    assert listed == [below]
    assert (decided.decided_by, decided.reason) == (lead.session_id, "lead says yes")
    assert canceled.status is gm.GroupStatus.canceled
    assert worker_lists.evidence["toolset"] == "approvals"
    assert ("approval_approved", {"approval_id": below, "session_id": worker.session_id,
                                  "action": f"group.cancel:{mine.id}", "decided_by": lead.session_id,
                                  "reason": "lead says yes"}) in events


async def test_a_session_under_confirm_risky_may_not_decide_even_for_its_children(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        lead = await session(engine, tools=["agent", "groups", "approvals"])
        helper = await session(engine, lead, tools=["groups"])
        group = await engine.groups.create(helper, gm.GroupCreate(name="g"))
        approval_id = (await refused(engine.groups.cancel(helper, group.id))).evidence["approval_id"]
        lead = await engine.sessions.authenticate(engine.tokens.token_for(lead.session_id))
        tried = await refused(engine.approvals.approve(lead, approval_id, am.Decision()))
        status = (await engine.approvals.get(ROOT, approval_id)).status
    assert tried.diagnostic().code == "permission_denied" and "confirm-risky" in tried.message
    assert status is am.ApprovalStatus.pending


async def test_deciding_permission_is_never_inherited_by_a_spawn_that_names_no_permissions(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        lead = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="lead", skip_agent_runtime_profile=True,
                                                              permissions=PermissionPolicy(tools=["agent", "approvals"])))
        lead_caller = await engine.sessions.authenticate(lead.token)
        child = await engine.sessions.spawn(lead_caller, SpawnRequest(agent_name="w", skip_agent_runtime_profile=True))
        named = await engine.sessions.spawn(lead_caller, SpawnRequest(
            agent_name="w", skip_agent_runtime_profile=True, permissions=PermissionPolicy(tools=["approvals"])))
        by_root = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="w", skip_agent_runtime_profile=True))
        caps = {c.id for c in (await engine.sessions.me(await engine.sessions.authenticate(child.token))).capabilities}
        named_caps = {c.id for c in (await engine.sessions.me(await engine.sessions.authenticate(named.token))
                                     ).capabilities}
    assert "approvals" in lead.permissions.tools
    assert child.permissions.tools == ["agent"] and "approvals" not in by_root.permissions.tools
    assert "approval_approve" not in caps and "approval_get" in caps
    assert {"approval_approve", "approval_deny", "approval_list"} <= named_caps
    assert "approval_review" not in named_caps  # the local user's own serve only


async def test_a_deciding_call_with_bad_input_writes_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        group = await engine.groups.create(child, gm.GroupCreate(name="g"))
        approval_id = (await refused(engine.groups.cancel(child, group.id))).evidence["approval_id"]
        before = count(engine, "SELECT count(*) FROM events")
        with pytest.raises(errors.InvalidInput) as bad_id:
            await engine.approvals.approve(ROOT, "apr_../x", am.Decision())
        with pytest.raises(errors.NotFound):
            await engine.approvals.deny(ROOT, "apr_0000000000000000dead", am.Decision())
        with pytest.raises(errors.InvalidInput) as long_reason:
            models.parse(am.Decision, {"reason": "x" * (am.MAX_REASON_CHARS + 1)})
        with pytest.raises(errors.InvalidInput) as long_wait:
            await engine.approvals.get(child, approval_id, wait=46)
        after = count(engine, "SELECT count(*) FROM events")
        status = (await engine.approvals.get(ROOT, approval_id)).status
    assert bad_id.value.field == "approval_id" and long_reason.value.field == "reason"
    assert long_wait.value.field == "wait"
    assert before == after and status is am.ApprovalStatus.pending


async def test_a_session_cannot_flood_the_person_with_pending_approvals(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        child = await session(engine)
        for i in range(am.MAX_PENDING_PER_SESSION):
            await refused(engine.devices.create(child, dm.DeviceCreate(network=True, name=f"n{i}")))
        with pytest.raises(errors.LimitExceeded) as caught:
            await engine.devices.create(child, dm.DeviceCreate(network=True, name="one more"))
        pending = count(engine, "SELECT count(*) FROM approvals WHERE status = 'pending'")
    assert caught.value.evidence["limit"] == am.MAX_PENDING_PER_SESSION
    assert pending == am.MAX_PENDING_PER_SESSION


async def test_the_local_user_and_sessions_without_confirm_risky_need_no_approval(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        free = await session(engine, careful=False)
        box = await engine.devices.create(free, dm.DeviceCreate(network=True))
        mine = await engine.devices.create(ROOT, dm.DeviceCreate(network=True))
        await engine.devices.delete(free, box.id)
        await engine.devices.delete(ROOT, mine.id)
        approvals = count(engine, "SELECT count(*) FROM approvals")
    assert approvals == 0


async def test_approval_history_is_the_local_users_to_read(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        child = await session(engine, careful=False, tools=["approvals"])
        denied = await refused(engine.approvals.events(child, am.ApprovalEventsQuery()))
    assert denied.diagnostic().code == "permission_denied"


async def test_migrations_give_the_approvals_table_every_column_the_record_needs(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        columns = peek.columns(engine.settings, "approvals") - {"rowid"}
    assert set(am.Approval.model_fields) <= columns, set(am.Approval.model_fields) - columns
    assert set(am.ApprovalRow.model_fields) == columns
