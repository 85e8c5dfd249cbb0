"""The leased task queue on real SQLite, the shipped fake backend and the fake clock: claim order,
the lease limit, fencing of stale and foreign holders, the reaper's backoff and max_attempts, and a
claim waiter woken by a create's commit."""

from __future__ import annotations

import anyio
import pytest

from engine import errors, topics
from engine.tasks import models as tm
from engine.app import Engine
from engine.callers import ROOT
from engine.clock import FakeClock
from engine.lineage import PermissionPolicy
from engine.sessions.models import MAX_ACTIVE_TASK_LEASES, SpawnRequest
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio


def engine_for(tmp_path, clock=None) -> Engine:
    return Engine(Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02),
                  backend=FakeBackend(), harnesses=harness.get, clock=clock or FakeClock())


async def session(engine: Engine, **kw):
    spawned = await engine.sessions.spawn(ROOT, SpawnRequest(agent_name="worker", **kw))
    return await engine.sessions.authenticate(spawned.token)


async def create(engine: Engine, caller=ROOT, **kw) -> tm.Task:
    return await engine.tasks.create(caller, tm.TaskCreate(title=kw.pop("title", "t"), **kw))


async def claim(engine: Engine, caller, **kw) -> tm.Claim:
    result = await engine.tasks.claim_next(caller, tm.ClaimNext(**kw))
    assert result.claim is not None
    return result.claim


def holding(c: tm.Claim) -> dict:
    return {"task_run_id": c.run.id, "claim_token": c.claim_token}


async def test_claims_take_the_highest_priority_then_the_oldest_task(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        low = await create(engine, title="low", priority=1)
        clock.advance(1)
        high_old = await create(engine, title="high old", priority=5)
        clock.advance(1)
        high_new = await create(engine, title="high new", priority=5)
        got = [(await claim(engine, ROOT)).task.id for _ in range(3)]
        assert (await engine.tasks.claim_next(ROOT, tm.ClaimNext())).claim is None
    assert got == [high_old.id, high_new.id, low.id]


async def test_a_session_holds_at_most_max_active_task_leases(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        worker = await session(engine)
        for i in range(MAX_ACTIVE_TASK_LEASES + 1):
            await create(engine, title=f"t{i}")
        claims = [await claim(engine, worker) for _ in range(MAX_ACTIVE_TASK_LEASES)]
        me = await engine.sessions.me(worker)
        assert [lease["run_id"] for lease in me.active_task_leases] == [c.run.id for c in claims]
        with pytest.raises(errors.LimitExceeded, match="max_active_task_leases"):
            await engine.tasks.claim_next(worker, tm.ClaimNext())
        await engine.tasks.complete(worker, tm.Complete(**holding(claims[0])))
        assert (await claim(engine, worker)).task.status == tm.TaskStatus.claimed


async def test_a_session_stopped_after_it_authenticated_claims_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        worker = await session(engine)
        task = await create(engine)
        await engine.sessions.stop(ROOT, worker.session_id)
        with pytest.raises(errors.Unauthenticated, match="has stopped"):
            await engine.tasks.claim_next(worker, tm.ClaimNext())
        assert (await engine.tasks.get(ROOT, task.id)).status == tm.TaskStatus.queued


async def test_a_stale_holder_is_fenced_off_once_its_task_is_claimed_again(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        a, b = await session(engine), await session(engine)
        task = await create(engine)
        first = await claim(engine, a, lease_seconds=10)
        clock.advance(11)
        assert await engine.tasks.reap_due() in (0, 1)  # the daemon's reaper may have been first
        clock.advance(tm.backoff(1))
        second = await claim(engine, b)
        before = await engine.tasks.get(ROOT, task.id)
        for call in (engine.tasks.heartbeat(a, tm.Heartbeat(**holding(first))),
                     engine.tasks.complete(a, tm.Complete(**holding(first))),
                     engine.tasks.fail(a, tm.Fail(error="x", **holding(first))),
                     engine.tasks.release(a, tm.Holding(**holding(first)))):
            with pytest.raises(errors.InvalidTransition) as caught:
                await call
            assert caught.value.evidence["field"] == "task_run_id"
            assert caught.value.evidence["current_run_id"] == second.run.id
        with pytest.raises(errors.PermissionDenied) as foreign:
            await engine.tasks.complete(a, tm.Complete(**holding(second)))
        assert foreign.value.evidence["field"] == "task_run_id"
        with pytest.raises(errors.PermissionDenied) as wrong_token:
            await engine.tasks.complete(b, tm.Complete(task_run_id=second.run.id, claim_token=first.claim_token))
        assert wrong_token.value.evidence["field"] == "claim_token"
        assert await engine.tasks.get(ROOT, task.id) == before  # nothing written
        done = await engine.tasks.complete(b, tm.Complete(result={"ok": True}, **holding(second)))
        with pytest.raises(errors.InvalidTransition, match="already ended"):
            await engine.tasks.complete(b, tm.Complete(**holding(second)))
    assert (done.task.status, done.task.attempts, done.task.result, done.run.attempt) == ("completed", 2,
                                                                                           {"ok": True}, 2)


async def test_the_reaper_requeues_after_a_backoff_and_fails_the_task_at_max_attempts(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        task = await create(engine, max_attempts=2)
        await claim(engine, ROOT, lease_seconds=5)
        clock.advance(5)
        await engine.tasks.reap_due()
        after_one = await engine.tasks.get(ROOT, task.id)
        assert (after_one.status, after_one.failures) == ("queued", 1)
        assert (after_one.available_at - clock.now()).total_seconds() == tm.backoff(1) == 2
        assert (await engine.tasks.claim_next(ROOT, tm.ClaimNext())).claim is None  # still backing off
        clock.advance(2)
        again = await claim(engine, ROOT, lease_seconds=5)
        assert again.run.attempt == 2 and again.run.previous_run_id == after_one.runs[0].id
        clock.advance(5)
        await engine.tasks.reap_due()
        final = await engine.tasks.get(ROOT, task.id)
        events = await engine.store.tasks.task_events(task.id)
    assert (final.status, final.failure_kind, final.failures, final.attempts) == ("failed", "lease_expired", 2, 2)
    assert [r.status for r in final.runs] == ["expired", "expired"]
    assert [e["type"] for e in events] == ["task.created", "task.claimed", "task.retry", "task.claimed",
                                           "task.failed"]
    assert [e["sequence"] for e in events] == [1, 2, 3, 4, 5] and final.latest_event_seq == 5


async def test_a_holders_error_at_max_attempts_ends_the_task_failed_with_its_error(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        task = await create(engine, max_attempts=1)
        c = await claim(engine, ROOT)
        await engine.tasks.fail(ROOT, tm.Fail(error="boom", **holding(c)))
        final = await engine.tasks.get(ROOT, task.id)
    assert (final.status, final.failure_kind, final.error) == ("failed", "error", "boom")


async def test_a_heartbeat_extends_the_lease_so_the_reaper_leaves_it(tmp_path):
    clock = FakeClock()
    async with engine_for(tmp_path, clock).running() as engine:
        await create(engine)
        c = await claim(engine, ROOT, lease_seconds=10)
        clock.advance(8)
        beat = await engine.tasks.heartbeat(ROOT, tm.Heartbeat(**holding(c)))
        clock.advance(8)
        assert await engine.tasks.reap_due() == 0
        done = await engine.tasks.complete(ROOT, tm.Complete(**holding(c)))
    assert (beat.lease.lease_until - c.lease.lease_until).total_seconds() == 8
    assert done.task.status == "completed"


# The two waiter tests open only the store (no background service sleeps on the clock), so the one
# sleeper is the waiter: its wait is known to have begun before time moves or a task is queued.


async def test_a_claim_waiter_is_woken_by_a_creates_commit(tmp_path):
    clock = FakeClock()
    engine = engine_for(tmp_path, clock)
    async with engine.store:
        got: list[tm.ClaimResult] = []

        async def waiter() -> None:
            got.append(await engine.tasks.claim_next(ROOT, tm.ClaimNext(wait_seconds=30)))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await clock.until_sleepers(1)  # the waiter found nothing and waits
                task = await create(engine)
    assert got[0].claim is not None and got[0].claim.task.id == task.id


async def test_a_claim_wait_ends_empty_when_its_time_passes(tmp_path):
    clock = FakeClock()
    engine = engine_for(tmp_path, clock)
    async with engine.store:
        got: list[tm.ClaimResult] = []

        async def waiter() -> None:
            got.append(await engine.tasks.claim_next(ROOT, tm.ClaimNext(wait_seconds=5)))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await clock.until_sleepers(1)
                clock.advance(5)
    assert got == [tm.ClaimResult(claim=None)]


async def test_bad_input_names_its_field_and_writes_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        with pytest.raises(errors.InvalidInput) as wait:
            await engine.tasks.claim_next(ROOT, tm.ClaimNext(wait_seconds=engine.settings.mcp_max_wait_seconds + 1))
        for field, value in (("priority", -1), ("max_attempts", 0)):
            with pytest.raises(errors.InvalidInput) as bad:
                tm.models.parse(tm.TaskCreate, {"title": "t", field: value})
            assert bad.value.field == field
        assert (await engine.tasks.list(ROOT, tm.TaskListQuery())).data == []
    assert wait.value.field == "wait_seconds"


async def test_a_session_without_the_tasks_toolset_is_refused_and_sees_only_its_workspace(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        no_tasks = await session(engine, permissions=PermissionPolicy(tools=["runs"]))
        with pytest.raises(errors.PermissionDenied, match="task_claim_next"):
            await engine.tasks.claim_next(no_tasks, tm.ClaimNext())
        other_ws = await session(engine, workspace_id="elsewhere")
        mine = await create(engine, title="default ws")
        theirs = await create(engine, other_ws, title="elsewhere")
        assert [t.id for t in (await engine.tasks.list(other_ws, tm.TaskListQuery())).data] == [theirs.id]
        with pytest.raises(errors.NotFound):
            await engine.tasks.get(other_ws, mine.id)
        assert (await claim(engine, other_ws)).task.id == theirs.id
        assert (await engine.tasks.claim_next(other_ws, tm.ClaimNext())).claim is None
        assert {t.id for t in (await engine.tasks.list(ROOT, tm.TaskListQuery())).data} == {mine.id, theirs.id}
        assert engine.store.topics is engine.topics and topics.TASKS == "tasks"
