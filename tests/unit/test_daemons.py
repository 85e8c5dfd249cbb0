"""Several daemons on one PostgreSQL database (here three engines in one process, each with its own home
and fake Docker engine): a group's entries spread over them and each ends once; a cancel asked through
one daemon reaches the run on another; a run in a device waits for the daemon that holds the device;
a daemon that stops beating has its runs settled `process_lost` by the leader and its entries retried
elsewhere; task claims from several daemons at once take each task once. The same with real daemon processes and SIGKILL: tests/integration/test_daemons.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import errors, models, topics
from engine.app import Engine
from engine.callers import ROOT
from engine.devices import models as dm
from engine.groups import models as gm
from engine.lineage import SpawnBudget
from engine.runs import models as rm
from engine.sessions.models import MAX_ACTIVE_TASK_LEASES, SpawnRequest
from engine.tasks import models as tm
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio


def settings_for(home: Path, url: str, **kw: Any) -> Settings:
    return Settings(home=home, image="fake:latest", cancel_grace_seconds=0.02, database_url=url,
                    **{"max_active_runs": 4, "daemon_heartbeat_seconds": 0.1, "daemon_lost_after_seconds": 60, **kw})


@asynccontextmanager
async def daemons(tmp_path: Path, url: str, n: int, **kw: Any) -> AsyncIterator[list[Engine]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(
            Engine(settings_for(tmp_path / f"d{i}", url, **kw), backend=FakeBackend(), harnesses=harness.get).running())
            for i in range(n)]


def manifest(*commands: str) -> gm.DispatchRequest:
    return gm.DispatchRequest.model_validate({"runs": [{"prompt": "p", "command": c} for c in commands],
                                              "async": True})


async def until(engine: Engine, topic: str, look, seconds: float = 30) -> Any:
    """Wait, woken by commits on `topic` (another daemon's reach this one by NOTIFY), until `look()` holds."""
    with anyio.fail_after(seconds):
        while True:
            changed = engine.topics.watch(topic)
            if found := await look():
                return found
            with anyio.move_on_after(1):  # a bounded re-look, as a NOTIFY is a hint
                await changed.wait()


async def group_events(engine: Engine, group_id: str) -> list[gm.GroupEvent]:
    out: list[gm.GroupEvent] = []
    while page := (await engine.groups.events(ROOT, group_id, gm.GroupEventsQuery(
            after_sequence=out[-1].sequence if out else 0))).data:
        out += page
    return out


async def test_a_groups_entries_spread_over_three_daemons_and_each_ends_once(tmp_path, pg_url):
    async with daemons(tmp_path, pg_url, 3) as (a, b, c):
        group = await a.groups.create(ROOT, gm.GroupCreate(name="spread", concurrency_limit=9, expected_runs=90))
        await a.groups.dispatch(ROOT, group.id, manifest(*["out=ok"] * 90))

        async def done() -> gm.Group | None:
            g = await c.groups.get(ROOT, group.id)  # read through another daemon than the one that made it
            return g if g.status.value in ("succeeded", "failed") else None

        final = await until(c, topics.group(group.id), done)
        assert final.status.value == "succeeded" and final.entry_counts.succeeded == 90
        runs = (await b.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery(limit=200))).data
        assert len(runs) == 90 and {r.status for r in runs} == {"succeeded"}
        by = Counter([(await a.store.runs.run(r.run_id)).daemon_id for r in runs])  # type: ignore[union-attr]
        assert set(by) <= {a.daemons.id, b.daemons.id, c.daemons.id} and len(by) >= 2, by
        for r in runs:
            started = [e for e in (await a.runs.events(ROOT, r.run_id, rm.EventsQuery(limit=100))).data
                       if e.type == "run_started"]
            assert len(started) == 1, (r.run_id, started)
        events = await group_events(b, group.id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "a gap in the group's stream"
        assert Counter(e.type for e in events)["entry_started"] == 90
        leaders = [d.daemons.leader for d in (a, b, c)]
        assert leaders.count(True) == 1, leaders


async def test_a_cancel_asked_through_one_daemon_ends_the_run_on_another(tmp_path, pg_url):
    async with daemons(tmp_path, pg_url, 1) as (a,):
        run = await a.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
        await until(a, topics.run(run.id), lambda: _running(a, run.id))
        async with daemons(tmp_path / "other", pg_url, 1) as (b,):
            with anyio.fail_after(30):
                ended = await b.runs.cancel(ROOT, run.id)
        assert ended.status.value == "canceled", ended
        assert (await a.store.runs.run(run.id)).daemon_id == a.daemons.id  # type: ignore[union-attr]


async def _running(engine: Engine, run_id: str) -> bool:
    row = await engine.store.runs.run(run_id)
    return row is not None and row.status is models.RunStatus.running


async def test_a_run_in_a_device_waits_for_the_daemon_that_holds_the_device(tmp_path, pg_url):
    home_a = tmp_path / "a"
    backend_a = FakeBackend()
    async with Engine(settings_for(home_a, pg_url), backend=backend_a, harnesses=harness.get).running() as a:
        device = await a.devices.create(ROOT, dm.DeviceCreate())
    async with daemons(tmp_path / "b", pg_url, 1) as (b,):
        run = await b.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=ok", target_id=device.id))
        await anyio.sleep(1)  # b's admission has had its passes: the run is not b's to start
        assert (await b.store.runs.run(run.id)).status is models.RunStatus.queued  # type: ignore[union-attr]
        async with Engine(settings_for(home_a, pg_url), backend=backend_a, harnesses=harness.get).running() as a:
            got = await a.runs.wait(ROOT, run.id, 30)
        assert got.status.value == "succeeded" and (await b.store.runs.run(run.id)).daemon_id == a.daemons.id  # type: ignore[union-attr]


async def test_a_daemon_that_stops_beating_has_its_runs_settled_and_its_entries_retried_elsewhere(tmp_path, pg_url):
    lost_after = {"daemon_lost_after_seconds": 1.0}
    async with daemons(tmp_path / "gone", pg_url, 1, max_active_runs=6, **lost_after) as (gone,):
        group = await gone.groups.create(ROOT, gm.GroupCreate(name="lost", concurrency_limit=6, expected_runs=6))
        await gone.groups.dispatch(ROOT, group.id, manifest(*["block"] * 6))

        async def all_running() -> bool:
            return (await gone.groups.get(ROOT, group.id)).counts.running == 6

        await until(gone, topics.group(group.id), all_running)
        lost_id = gone.daemons.id
    # `gone` stopped without ending its runs, as a killed daemon does: they are still `running` on it
    async with daemons(tmp_path / "alive", pg_url, 1, max_active_runs=6, **lost_after) as (alive,):
        async def retried() -> list[gm.GroupRun] | None:
            runs = (await alive.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery(limit=50))).data
            mine = [r for r in runs if r.status == "running" and alive.runs.supervised(r.run_id)]
            return mine if len(mine) == 6 else None

        mine = await until(alive, topics.group(group.id), retried)
        for r in mine:
            alive.backend.end(r.run_id)  # type: ignore[attr-defined]

        async def done() -> gm.Group | None:
            g = await alive.groups.get(ROOT, group.id)
            return g if g.status.value != "running" else None

        final = await until(alive, topics.group(group.id), done)
        assert final.status.value == "succeeded" and final.entry_counts.succeeded == 6
        lost = [d for d in await alive.store.daemons.list() if d.id == lost_id]
        assert lost and lost[0].lost_at is not None
        events = await group_events(alive, group.id)
        retries = [e for e in events if e.type == "entry_retried"]
        assert len(retries) == 6 and {e.payload["failure_kind"] for e in retries} == {"process_lost"}
        for e in retries:
            row = await alive.store.runs.run(e.payload["lost_run_id"])
            assert (row.status, row.failure_kind, row.daemon_id) == (  # type: ignore[union-attr]
                models.RunStatus.failed, "process_lost", lost_id)


async def test_a_daemon_that_finds_it_was_declared_lost_stops_the_runs_settled_without_it(tmp_path, pg_url):
    async with daemons(tmp_path / "slow", pg_url, 1, daemon_heartbeat_seconds=60,
                       daemon_lost_after_seconds=0.5) as (slow,):
        run = await slow.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
        await until(slow, topics.run(run.id), lambda: _running(slow, run.id))
        async with daemons(tmp_path / "leader", pg_url, 1, daemon_lost_after_seconds=0.5) as (leader,):
            # silent past the limit (its next beat is a minute away): the leader, at one of its beats, ends
            # the run; `slow` still follows it
            async def settled() -> bool:
                return (await leader.store.runs.run(run.id)).status is models.RunStatus.failed  # type: ignore[union-attr]

            await until(leader, topics.run(run.id), settled)
            assert slow.runs.supervised(run.id)
            await slow.daemons.beat()  # it learns it was declared lost, and stops the run

            async def stopped() -> bool:
                return not slow.runs.supervised(run.id)

            await until(slow, topics.run(run.id), stopped)
            row = await slow.store.runs.run(run.id)
            assert (row.status, row.failure_kind, row.daemon_id) == (  # type: ignore[union-attr]
                models.RunStatus.failed, "process_lost", slow.daemons.id)
            assert [d.lost_at for d in await slow.store.daemons.list() if d.id == slow.daemons.id] == [None]


async def test_task_claims_from_three_daemons_side_by_side_take_each_task_once(tmp_path, pg_url):
    """Claims, heartbeats and ends commit side by side on PostgreSQL (each on a connection of its own,
    the claim skipping rows other claims hold): still every task is claimed once, each task's events are
    gapless, and one session's claims made at once stop at its lease limit."""
    async with daemons(tmp_path, pg_url, 3) as engines:
        for engine in engines:
            engine.sessions.root_budget = SpawnBudget(max_children=16)  # the daemons' spawns count together
        n = 120
        for i in range(n):
            await engines[0].tasks.create(ROOT, tm.TaskCreate(title=f"t{i}", priority=i % 3))
        workers = [(engines[i % 3], await engines[i % 3].sessions.authenticate(
            (await engines[i % 3].sessions.spawn(ROOT, SpawnRequest(agent_name="worker"))).token)) for i in range(12)]
        claimed: list[str] = []

        async def work(engine: Engine, caller: Any) -> None:
            while (claim := (await engine.tasks.claim_next(caller, tm.ClaimNext())).claim) is not None:
                claimed.append(claim.task.id)
                await engine.tasks.heartbeat(caller, tm.Heartbeat(task_run_id=claim.run.id,
                                                                  claim_token=claim.claim_token))
                await engine.tasks.complete(caller, tm.Complete(task_run_id=claim.run.id,
                                                                claim_token=claim.claim_token, result={"ok": 1}))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for engine, caller in workers:
                    tg.start_soon(work, engine, caller)
        assert len(claimed) == n and len(set(claimed)) == n
        store = engines[1].store
        assert not await store.tasks.list(None, "queued", 10)
        for task_id in claimed[:30]:
            assert [r.status.value for r in await store.tasks.task_runs(task_id)] == ["completed"]
            seqs = [e["sequence"] for e in await store.tasks.task_events(task_id)]
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 4  # created, claimed, heartbeat, completed

        # one session's claims at once, through three daemons: no more than its lease limit are granted
        for i in range(MAX_ACTIVE_TASK_LEASES * 3):
            await engines[0].tasks.create(ROOT, tm.TaskCreate(title=f"more{i}"))
        one = await engines[0].sessions.authenticate(
            (await engines[0].sessions.spawn(ROOT, SpawnRequest(agent_name="greedy"))).token)
        granted, refused = [], []

        async def grab(engine: Engine) -> None:
            try:
                granted.append((await engine.tasks.claim_next(one, tm.ClaimNext())).claim)
            except errors.LimitExceeded:
                refused.append(1)

        async with anyio.create_task_group() as tg:
            for i in range(MAX_ACTIVE_TASK_LEASES * 3):
                tg.start_soon(grab, engines[i % 3])
        assert len(granted) == MAX_ACTIVE_TASK_LEASES and all(c is not None for c in granted)
        assert len(refused) == MAX_ACTIVE_TASK_LEASES * 2


async def test_one_daemon_reaps_for_all_and_another_takes_over_when_it_stops(tmp_path, pg_url):
    """The reapers (here the task lease reaper) work only on the daemon holding the leader's lease; when
    it stops, another takes the lease once it runs out and reaps from then on."""
    engines = [Engine(settings_for(tmp_path / f"d{i}", pg_url, daemon_lost_after_seconds=1), backend=FakeBackend(),
                      harnesses=harness.get) for i in range(2)]
    scopes = [anyio.CancelScope() for _ in engines]

    async def serve(i: int, *, task_status: Any) -> None:
        with scopes[i]:
            await engines[i].serve(task_status=task_status)

    async with anyio.create_task_group() as tg:
        for i in range(2):
            await tg.start(serve, i)
        assert sorted(e.leadership.held for e in engines) == [False, True]
        lead = 0 if engines[0].leadership.held else 1
        other = engines[1 - lead]
        reaped = [0, 0]
        for i, engine in enumerate(engines):
            def counted(i: int = i, real: Any = engine.tasks.reap_due) -> Any:
                reaped[i] += 1
                return real()
            engine.tasks.reap_due = counted  # type: ignore[method-assign]

        async def a_lease_runs_out() -> None:
            task = await other.tasks.create(ROOT, tm.TaskCreate(title="short"))
            worker = await other.sessions.authenticate(
                (await other.sessions.spawn(ROOT, SpawnRequest(agent_name="w"))).token)
            await other.tasks.claim_next(worker, tm.ClaimNext(lease_seconds=1))

            async def requeued() -> bool:
                return (await other.tasks.get(ROOT, task.id)).status is tm.TaskStatus.queued
            await until(other, topics.TASKS, requeued)

        await a_lease_runs_out()  # claimed through the daemon that does not lead
        assert reaped[lead] >= 1 and reaped[1 - lead] == 0
        scopes[lead].cancel()  # the leader stops: the other takes the lease once it runs out
        with anyio.fail_after(30):
            while not other.leadership.held:
                await anyio.sleep(0.1)
        await a_lease_runs_out()
        assert reaped[1 - lead] >= 1
        tg.cancel_scope.cancel()
