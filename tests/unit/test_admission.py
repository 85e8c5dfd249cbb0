"""Admission, topics, compare-and-set and the fake clock, on real SQLite and the shipped fake backend."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

from engine import models, topics
from engine.devices import models as dm
from engine.runs import models as rm
from engine.app import Engine
from engine.callers import ROOT
from engine.clock import FakeClock
from engine.settings import Settings
from engine.store import Store
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio


def settings_for(tmp_path, **kw) -> Settings:
    return Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02, **kw)


async def settled(engine: Engine, run_id: str) -> rm.Run:
    with anyio.fail_after(10):
        return await engine.runs.wait(ROOT, run_id, 3600)


async def until_running(engine: Engine, run_id: str) -> None:
    """Woken by the commit that starts the run (the topic), not by polling."""
    with anyio.fail_after(10):
        while True:
            changed = engine.topics.watch(topics.run(run_id))
            if (await engine.runs.get(ROOT, run_id)).status is models.RunStatus.running:
                return
            await changed.wait()


async def test_a_burst_never_runs_more_than_the_cap_at_once_and_starts_in_creation_order(tmp_path):
    backend = FakeBackend()
    async with Engine(settings_for(tmp_path, max_active_runs=2), backend=backend,
                      harnesses=harness.get).running() as engine:
        runs = [await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block")) for _ in range(6)]
        ids = [r.id for r in runs]
        await until_running(engine, ids[0])
        await until_running(engine, ids[1])
        for i in range(6):
            if i + 1 < 6:
                await until_running(engine, ids[i + 1])  # the next in line holds the other slot
            assert engine.runs.active <= 2
            statuses = [(await engine.runs.get(ROOT, r)).status for r in ids]
            assert sum(s is models.RunStatus.running for s in statuses) <= 2
            backend.end(ids[i])
            await settled(engine, ids[i])
        assert list(backend.starts) == ids  # started in the order they were created
        assert [(await engine.runs.get(ROOT, r)).status for r in ids] == [models.RunStatus.succeeded] * 6


async def test_a_queued_run_canceled_before_admission_ends_canceled_without_ever_starting(tmp_path):
    backend = FakeBackend()
    async with Engine(settings_for(tmp_path, max_active_runs=1), backend=backend,
                      harnesses=harness.get).running() as engine:
        first = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
        queued = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=never"))
        assert (await engine.runs.get(ROOT, queued.id)).status is models.RunStatus.queued

        canceled = await engine.runs.cancel(ROOT, queued.id)

        assert (canceled.status, canceled.failure_kind, canceled.started_at) == ("canceled", "canceled", None)
        assert queued.id not in backend.starts
        assert await engine.store.devices.device(queued.target_id) is None  # its ephemeral sandbox was never made
        types = [e.type for e in (await engine.runs.events(ROOT, queued.id, rm.EventsQuery())).data]
        assert types == ["run_queued", "run_finished"]
        backend.end(first.id)
        await settled(engine, first.id)


async def test_queued_runs_survive_a_restart_and_are_admitted_after_it(tmp_path):
    backend = FakeBackend()
    settings = settings_for(tmp_path, max_active_runs=1)
    async with Engine(settings, backend=backend, harnesses=harness.get).running() as engine:
        blocker = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
        later = [await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=later")) for _ in range(2)]
    assert [r.id for r in later if r.id in backend.starts] == []

    async with Engine(settings, backend=backend, harnesses=harness.get).running() as engine:
        backend.end(blocker.id)
        for run in later:
            assert (await settled(engine, run.id)).output == "later\n"
    assert list(backend.starts) == [blocker.id] + [r.id for r in later]


async def test_a_waiter_on_one_topic_is_woken_by_its_commit_and_not_by_another_topics(tmp_path):
    async with Store(tmp_path / "db.sqlite") as store:
        mine, other = store.topics.watch(topics.run("run_a")), store.topics.watch(topics.run("run_b"))
        now = datetime(2026, 1, 1, tzinfo=UTC)
        async with store.write(now) as tx:
            await tx.append_events("run_b", [("output", "", {})])
            assert not other.is_set()  # not before the commit
        assert other.is_set() and not mine.is_set()
        async with store.write(now) as tx:
            await tx.append_events("run_a", [("output", "", {})])
        assert mine.is_set()


async def test_a_transition_applies_only_from_the_expected_status_and_says_so(tmp_path):
    backend = FakeBackend()
    async with Engine(settings_for(tmp_path, max_active_runs=1), backend=backend,
                      harnesses=harness.get).running() as engine:
        blocker = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=x"))
        now = engine.clock.now()
        async with engine.store.write(now) as tx:
            assert not await tx.runs.transition_run(run.id, [models.RunStatus.running], status="failed")
            assert await tx.runs.transition_run(run.id, [models.RunStatus.queued], status="canceled",
                                           failure_kind="canceled", finished_at=now)
            assert not await tx.runs.transition_run(run.id, [models.RunStatus.queued], status="running")
        assert (await engine.runs.get(ROOT, run.id)).status is models.RunStatus.canceled
        backend.end(blocker.id)


async def test_a_run_times_out_on_the_fake_clock_without_real_waiting(tmp_path):
    clock = FakeClock()
    backend = FakeBackend()
    async with Engine(settings_for(tmp_path), backend=backend, harnesses=harness.get,
                      clock=clock).running() as engine:
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block", timeout=3600))
        await until_running(engine, run.id)
        with anyio.fail_after(10):
            await clock.until_sleepers(2)  # the watchdog's deadline and the output flusher
        clock.advance(3599)
        assert (await engine.runs.get(ROOT, run.id)).status is models.RunStatus.running
        clock.advance(2)
        ended = await settled(engine, run.id)
    assert (ended.status, ended.failure_kind) == ("failed", "timeout")
    assert ended.finished_at == datetime(2026, 1, 1, tzinfo=UTC).replace(hour=1, second=1)


class SlowCleanup(FakeBackend):
    """Removing a settled run's files takes (for this test) forever."""

    async def remove_run_files(self, device_id: str, run_id: str) -> None:
        await anyio.sleep_forever()


async def test_removing_a_settled_runs_files_does_not_hold_its_slot(tmp_path):
    backend = SlowCleanup()
    async with Engine(settings_for(tmp_path, max_active_runs=1), backend=backend,
                      harnesses=harness.get).running() as engine:
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        first = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=a", sandbox_id=device.id))
        assert (await settled(engine, first.id)).status is models.RunStatus.succeeded
        second = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=b", sandbox_id=device.id))
        assert (await settled(engine, second.id)).output == "b\n"
