"""Groups on real SQLite and the shipped fake backend: the limit, dispatch, idempotency, events, cancel,
retries of lost runs, restarts, and bad input that writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from engine import errors, models, topics
from engine.runs import models as rm
from engine.groups import models as gm
from engine.app import Engine
from engine.callers import ROOT, Caller
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio
UNKNOWN_SANDBOX = "sbx_0000000000000000dead"


def settings_for(tmp_path, **kw: Any) -> Settings:
    return Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02, **{"max_active_runs": 8, **kw})


@asynccontextmanager
async def engine_on(tmp_path, backend: FakeBackend, **kw: Any) -> AsyncIterator[Engine]:
    async with Engine(settings_for(tmp_path, **kw), backend=backend, harnesses=harness.get).running() as engine:
        yield engine


def manifest(*commands: str, **item: Any) -> gm.DispatchRequest:
    return gm.DispatchRequest.model_validate({"runs": [{"prompt": "p", "command": c, **item} for c in commands],
                                              "async": True})


async def until(engine: Engine, group_id: str, check) -> gm.Group:
    """Wait, woken by the group's commits, until `check(group)` holds."""
    with anyio.fail_after(10):
        while True:
            changed = engine.topics.watch(topics.group(group_id))
            group = await engine.groups.get(ROOT, group_id)
            if check(group):
                return group
            await changed.wait()


async def all_events(engine: Engine, group_id: str) -> list[gm.GroupEvent]:
    out: list[gm.GroupEvent] = []
    after = 0
    while page := (await engine.groups.events(ROOT, group_id, gm.GroupEventsQuery(after_sequence=after))).data:
        out += page
        after = page[-1].sequence
    return out


async def test_never_more_than_the_limit_run_at_once_and_all_end_succeeded(tmp_path):
    backend = FakeBackend()
    async with engine_on(tmp_path, backend) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(name="fan", concurrency_limit=2, expected_runs=6))
        queued = await engine.groups.dispatch(ROOT, group.id, manifest(*["block"] * 6))
        assert [e.status for e in queued.entries] == ["queued"] * 6 and queued.results == []
        for _ in range(6):
            g = await until(engine, group.id, lambda g: g.counts.running == g.entry_counts.running == min(
                2, g.entry_counts.queued + g.entry_counts.running))
            runs = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data
            running = [r for r in runs if r.status == "running"]
            assert len(running) <= 2 and g.counts.running <= 2
            if not running:
                break
            backend.end(running[0].run_id)
            await engine.runs.wait(ROOT, running[0].run_id, 10)
        final = await until(engine, group.id, lambda g: not g.is_active)
        assert (final.status, final.entry_counts.succeeded, final.counts.succeeded) == ("succeeded", 6, 6)
        runs = [await engine.runs.get(ROOT, r.run_id) for r in
                (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data]
        # from the recorded times: at no start were two others already running
        for r in runs:
            overlapping = [o for o in runs if o.started_at <= r.started_at < o.finished_at]
            assert len(overlapping) <= 2
        assert all(r.agent_run_group_id == group.id for r in runs)


async def test_group_stream_is_gapless_over_every_child_and_the_group_own_events(tmp_path):
    async with engine_on(tmp_path, FakeBackend()) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=3))
        result = await engine.groups.dispatch(ROOT, group.id, manifest("out=a", "out=b exit=2", "out=c"))
        await until(engine, group.id, lambda g: not g.is_active)
        events = await all_events(engine, group.id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        types = [e.type for e in events]
        assert types.count("entry_queued") == 3 and types.count("entry_started") == 3
        assert types.count("entry_finished") == 3 and types.count("run_finished") == 3
        assert types[-1] == "group_finished" and events[-1].payload["status"] == "failed"
        run_ids = {e.run_id for e in result.entries} | {e.agent_run_id for e in events if e.type == "output"}
        assert all(e.agent_run_group_id == group.id for e in events)
        assert {e.agent_run_id for e in events if e.type == "run_started"} == run_ids - {None}


async def test_synchronous_dispatch_returns_each_item_ok_or_its_diagnostic_and_an_unknown_target_fails_alone(tmp_path):
    async with engine_on(tmp_path, FakeBackend()) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=2))
        req = gm.DispatchRequest.model_validate({"runs": [
            {"prompt": "p", "command": "out=one", "orchestration_role": "coder"},
            {"prompt": "p", "command": "out=two", "sandbox_id": UNKNOWN_SANDBOX},
            {"prompt": "p", "command": "exit=3"}]})
        result = await engine.groups.dispatch(ROOT, group.id, req, wait=10)
        assert result.done
        by_index = {r.index: r for r in result.results}
        assert by_index[0].ok and by_index[0].run.output == "one\n" and by_index[0].run.orchestration_role == "coder"
        assert not by_index[1].ok and by_index[1].run is None
        assert by_index[1].diagnostic.code == "not_found" and by_index[1].diagnostic.evidence["field"] == "sandbox_id"
        assert not by_index[2].ok and by_index[2].run.status == "failed" and by_index[2].diagnostic.code == "nonzero_exit"
        assert result.group.status == "failed" and result.group.entry_counts.failed == 2


async def test_an_unknown_parent_run_fails_its_entry_alone_and_a_known_one_is_recorded(tmp_path):
    async with engine_on(tmp_path, FakeBackend()) as engine:
        parent = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=parent"))
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=2))
        req = gm.DispatchRequest.model_validate({"runs": [
            {"prompt": "p", "command": "out=a", "parent_agent_run_id": parent.id},
            {"prompt": "p", "command": "out=b", "parent_agent_run_id": "run_0000000000000000dead"}]})
        result = await engine.groups.dispatch(ROOT, group.id, req, wait=10)
        by_index = {r.index: r for r in result.results}
        assert by_index[0].ok and by_index[0].run.parent_agent_run_id == parent.id
        assert by_index[1].diagnostic.evidence["field"] == "parent_agent_run_id" and by_index[1].run is None


async def test_a_synchronous_dispatch_not_done_in_time_answers_what_it_has_and_the_same_key_waits_again(tmp_path):
    backend = FakeBackend()
    async with engine_on(tmp_path, backend) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=2))
        req = gm.DispatchRequest.model_validate({"runs": [{"prompt": "p", "command": "out=x"},
                                                          {"prompt": "p", "command": "block"}],
                                                 "idempotency_key": "job-1"})
        first = await engine.groups.dispatch(ROOT, group.id, req, wait=0.2)
        assert not first.done and [r.index for r in first.results] in ([], [0])
        assert first.next_after_sequence > 0
        blocked = next(e for e in first.entries if e.index == 1)
        while blocked.run_id is None:
            blocked = next(e for e in (await engine.groups.dispatch(ROOT, group.id, req, wait=0)).entries
                           if e.index == 1)
        backend.end(blocked.run_id)
        again = await engine.groups.dispatch(ROOT, group.id, req, wait=10)
        assert again.done and again.dispatch_id == first.dispatch_id
        assert [e.id for e in again.entries] == [e.id for e in first.entries]  # nothing dispatched twice
        assert again.group.entry_counts.total == 2


async def test_an_idempotency_key_reused_for_another_manifest_is_a_conflict_and_writes_nothing(tmp_path):
    async with engine_on(tmp_path, FakeBackend()) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate())
        one = manifest("out=a").model_copy(update={"idempotency_key": "k"})
        other = manifest("out=b").model_copy(update={"idempotency_key": "k"})
        await engine.groups.dispatch(ROOT, group.id, one)
        with pytest.raises(errors.Conflict):
            await engine.groups.dispatch(ROOT, group.id, other)
        assert (await engine.groups.get(ROOT, group.id)).entry_counts.total == 1
        # keys are scoped to their caller: another session's same key is its own dispatch (in its own group)
        other_caller = Caller(session_id="ses_other", toolsets=frozenset({"groups", "runs"}))
        with pytest.raises(errors.NotFound):
            await engine.groups.dispatch(other_caller, group.id, one)


async def test_cancel_ends_queued_entries_without_starting_kills_running_children_and_is_harmless_twice(tmp_path):
    backend = FakeBackend()
    async with engine_on(tmp_path, backend) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=2, expected_runs=10))
        await engine.groups.dispatch(ROOT, group.id, manifest(*["block"] * 5))
        await until(engine, group.id, lambda g: g.counts.running == 2)
        canceled = await engine.groups.cancel(ROOT, group.id)
        assert (canceled.status, canceled.is_active) == ("canceled", False)
        assert canceled.entry_counts.canceled == 5
        runs = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data
        started = [r for r in runs if r.run_id]
        assert len(started) == 2 and all(r.run_status == "canceled" for r in started)
        assert len(backend.starts) == 2  # the queued three never started
        again = await engine.groups.cancel(ROOT, group.id)
        assert again.status == "canceled"
        with pytest.raises(errors.InvalidTransition):
            await engine.groups.dispatch(ROOT, group.id, manifest("out=late"))
        assert (await engine.groups.get(ROOT, group.id)).entry_counts.total == 5


async def test_an_entry_whose_run_was_lost_is_retried_as_a_new_attempt_and_the_lost_run_stays_failed(tmp_path):
    backend = FakeBackend()
    async with engine_on(tmp_path, backend) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=1))
        result = await engine.groups.dispatch(ROOT, group.id, manifest("block"))
        entry = (await until(engine, group.id, lambda g: g.counts.running == 1)) and \
            (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data[0]
        lost_run = entry.run_id
        with anyio.fail_after(10):
            while lost_run not in backend.processes:
                await anyio.sleep(0.01)
        backend.lose(lost_run)
        retried = await until(engine, group.id, lambda g: g.counts.total == 2 and g.counts.running == 1)
        entries = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data
        assert entries[0].attempts == 2 and entries[0].run_id != lost_run and retried.entry_counts.running == 1
        lost = await engine.runs.get(ROOT, lost_run)
        assert (lost.status, lost.failure_kind) == ("failed", "process_lost")
        backend.end(entries[0].run_id)
        final = await until(engine, group.id, lambda g: not g.is_active)
        assert (final.status, final.counts.failed, final.counts.succeeded) == ("succeeded", 1, 1)
        types = [e.type for e in await all_events(engine, group.id)]
        assert types.count("entry_retried") == 1 and types.count("entry_finished") == 1
        assert result.entries[0].id == entries[0].entry_id


async def test_entries_lost_every_time_fail_after_the_attempts_allowed(tmp_path):
    backend = FakeBackend()
    async with engine_on(tmp_path, backend, group_entry_max_attempts=2) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=1))
        await engine.groups.dispatch(ROOT, group.id, manifest("block"))
        for attempt in (1, 2):
            await until(engine, group.id, lambda g, a=attempt: g.counts.total == a and g.counts.running == 1)
            run_id = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data[0].run_id
            with anyio.fail_after(10):
                while run_id not in backend.processes:
                    await anyio.sleep(0.01)
            backend.lose(run_id)
        final = await until(engine, group.id, lambda g: not g.is_active)
        entry = (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data[0]
        assert (final.status, entry.status, entry.attempts, entry.failure_kind) == ("failed", "failed", 2,
                                                                                   "process_lost")


async def test_queued_and_running_entries_survive_a_restart_and_every_entry_ends_once(tmp_path):
    backend = FakeBackend()
    async with engine_on(tmp_path, backend) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=2))
        await engine.groups.dispatch(ROOT, group.id, manifest(*["block"] * 4))
        await until(engine, group.id, lambda g: g.counts.running == 2)
        running = [r.run_id for r in (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data
                   if r.run_id]
    for run_id in running:  # they finish while nothing follows them
        backend.end(run_id)
    async with engine_on(tmp_path, backend) as engine:
        g = await until(engine, group.id, lambda g: g.counts.running == 2 and g.entry_counts.succeeded == 2)
        for r in (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data:
            if r.status == "running":
                backend.end(r.run_id)
        g = await until(engine, group.id, lambda g: not g.is_active)
        assert (g.status, g.entry_counts.succeeded, g.counts.total) == ("succeeded", 4, 4)
        events = await all_events(engine, group.id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        finished = [e.payload["entry_id"] for e in events if e.type == "entry_finished"]
        assert len(finished) == len(set(finished)) == 4
    assert all(n == 1 for n in backend.starts.values())


async def test_a_group_stays_active_until_expected_runs_were_dispatched(tmp_path):
    async with engine_on(tmp_path, FakeBackend()) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=2, expected_runs=3))
        await engine.groups.dispatch(ROOT, group.id, manifest("out=a", "out=b"))
        g = await until(engine, group.id, lambda g: g.entry_counts.succeeded == 2)
        assert g.is_active and g.status == "running" and "1 more expected" in g.status_message
        await engine.groups.dispatch(ROOT, group.id, manifest("out=c"))
        g = await until(engine, group.id, lambda g: not g.is_active)
        assert (g.status, g.entry_counts.total) == ("succeeded", 3)
        assert [e.index for e in (await engine.groups.group_runs(ROOT, group.id, gm.GroupRunsQuery())).data] == [0, 1, 2]


async def test_a_waiting_reader_is_woken_by_the_commit_of_a_new_event(tmp_path):
    backend = FakeBackend()
    async with engine_on(tmp_path, backend) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate(concurrency_limit=1))
        got: list[gm.GroupEventList] = []

        async def read() -> None:
            got.append(await engine.groups.events(ROOT, group.id, gm.GroupEventsQuery(after_sequence=0, wait=50)))

        with anyio.fail_after(10):  # far below the 50 s wait: the commit woke it
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await anyio.sleep(0)
                await engine.groups.dispatch(ROOT, group.id, manifest("out=a"))
        assert got[0].data[0].type == "entry_queued"


@pytest.mark.parametrize(("body", "field"), [
    ({"concurrency_limit": 0}, "concurrency_limit"),
    ({"concurrency_limit": -1}, "concurrency_limit"),
    ({"concurrency_limit": 9}, "concurrency_limit"),  # above the daemon's cap of 8 here
    ({"expected_runs": -1}, "expected_runs"),
    ({"nam": "typo"}, "nam"),
    ({"workspace_id": "ws 1"}, "workspace_id"),
    ({"metadata": [1]}, "metadata"),
])
async def test_a_bad_group_is_a_diagnostic_naming_its_field_and_writes_nothing(tmp_path, body, field):
    async with engine_on(tmp_path, FakeBackend()) as engine:
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.groups.create(ROOT, _parse(gm.GroupCreate, body))
        assert caught.value.field == field
        assert (await engine.groups.list(ROOT, gm.GroupListQuery())).data == []


def _parse(model, body):
    return models.parse(model, body)


ITEM = {"prompt": "p", "command": "true"}


@pytest.mark.parametrize(("body", "field"), [
    ({"runs": []}, "runs"),
    ({"runs": [ITEM] * 1001}, "runs"),
    ({"runs": [ITEM, {**ITEM, "colour": "red"}]}, "runs.1.colour"),
    ({"runs": [ITEM], "asynch": True}, "asynch"),
    ({"runs": [{**ITEM, "timeout": 0}]}, "runs.0.timeout"),
    ({"runs": [{**ITEM, "idempotency_key": "k"}]}, "runs.0.idempotency_key"),
    ({"runs": [{**ITEM, "parent_agent_run_id": "run_x"}]}, "runs.0.parent_agent_run_id"),
    ({"runs": [{**ITEM, "orchestration_role": "a b"}]}, "runs.0.orchestration_role"),
])
async def test_a_bad_manifest_is_refused_whole_naming_the_field(tmp_path, body, field):
    with pytest.raises(errors.InvalidInput) as caught:
        _parse(gm.DispatchRequest, body)
    assert caught.value.field == field


async def test_a_cursor_beyond_the_end_and_a_wait_beyond_the_bound_are_diagnostics(tmp_path):
    async with engine_on(tmp_path, FakeBackend()) as engine:
        group = await engine.groups.create(ROOT, gm.GroupCreate())
        await engine.groups.dispatch(ROOT, group.id, manifest("out=a"))
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.groups.events(ROOT, group.id, gm.GroupEventsQuery(after_sequence=1000))
        assert caught.value.field == "after_sequence"
        with pytest.raises(errors.InvalidInput) as caught:
            _parse(gm.GroupEventsQuery, {"wait": 51})
        assert caught.value.field == "wait"
        with pytest.raises(errors.InvalidInput) as caught:
            await engine.groups.get(ROOT, "grp_nope")
        assert caught.value.field == "group_id"
