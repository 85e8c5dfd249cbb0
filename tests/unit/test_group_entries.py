"""Property: a group's entries keep the entry state machine under any interleaving of dispatches, runs
ending, runs lost with their sandbox, cancels and restarts (as after a daemon crash), on real SQLite and
the fake backend: never more than `concurrency_limit` running, a terminal entry never changes, every
entry ends exactly once, attempts only grow, and the group's stream stays gapless."""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import errors, topics
from engine.groups import models as gm
from engine.app import Engine
from engine.callers import ROOT
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

ITEMS = {
    "ok": {"command": "out=hi"},
    "fail": {"command": "exit=3"},
    "block": {"command": "block"},
    "unknown_target": {"command": "out=never", "sandbox_id": "sbx_0000000000000000dead"},
}
LIMIT = 2
MAX_ATTEMPTS = 2
TERMINAL = {"succeeded", "failed", "canceled"}


class GroupEntries(RuleBasedStateMachine):
    @initialize(expected=st.sampled_from([None, 3]))
    def open(self, expected: int | None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="adge-"))
        self.settings = Settings(home=self.home, image="fake:latest", cancel_grace_seconds=0.02,
                                 flush_interval_seconds=0.01, max_active_runs=4,
                                 group_entry_max_attempts=MAX_ATTEMPTS)
        self.portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self.portal_cm.__enter__()
        self.backend = FakeBackend()
        self.serving: concurrent.futures.Future[Any] | None = None
        self.start_service()
        self.group = self.portal.call(self.engine.groups.create, ROOT,
                                      gm.GroupCreate(concurrency_limit=LIMIT,
                                                     **({} if expected is None else {"expected_runs": expected})))
        self.seen: dict[str, tuple[str, int]] = {}
        self.dispatched = 0
        self.group_ended: str | None = None

    def start_service(self) -> None:
        self.engine = Engine(self.settings, backend=self.backend, harnesses=harness.get)
        self.serving, _ = self.portal.start_task(self.engine.serve)

    @rule(kinds=st.lists(st.sampled_from(sorted(ITEMS)), min_size=1, max_size=4))
    def dispatch(self, kinds: list[str]) -> None:
        req = gm.DispatchRequest.model_validate({"runs": [{"prompt": "p", **ITEMS[k]} for k in kinds], "async": True})
        try:
            result = self.portal.call(self.engine.groups.dispatch, ROOT, self.group.id, req)
        except errors.InvalidTransition:
            assert self.group_status() in TERMINAL or self.cancel_requested()
            return
        assert [e.status for e in result.entries] == ["queued"] * len(kinds)
        self.dispatched += len(kinds)

    @precondition(lambda self: self.dispatched)
    @rule(data=st.data(), lose=st.booleans())
    def end_or_lose_a_running_child(self, data: st.DataObject, lose: bool) -> None:
        running = [r.run_id for r in self.entries() if r.status == "running" and r.run_id in self.backend.processes
                   and not self.backend.processes[r.run_id].done]
        if not running:
            return
        run_id = data.draw(st.sampled_from(running))
        (self.backend.lose if lose else self.backend.end)(run_id)

    @precondition(lambda self: self.dispatched)
    @rule()
    def cancel(self) -> None:
        try:
            group = self.portal.call(self.engine.groups.cancel, ROOT, self.group.id)
        except errors.InvalidTransition:  # it had ended on its own
            assert self.group_status() in ("succeeded", "failed")
            return
        assert not group.is_active
        assert group.status == "canceled" or not group.cancel_requested  # or it ended on its own just before

    @rule()
    def restart(self) -> None:
        """Stop the engine mid-flight (its tasks cancelled, the fake processes untouched) and start anew."""
        assert self.serving is not None
        self.serving.cancel()
        concurrent.futures.wait([self.serving])
        self.start_service()

    # ------------------------------------------------------------ reading

    def entries(self) -> list[gm.GroupRun]:
        return self.portal.call(self.engine.groups.group_runs, ROOT, self.group.id,
                                gm.GroupRunsQuery(limit=1000)).data

    def group_status(self) -> str:
        return self.portal.call(self.engine.store.groups.group, self.group.id).status

    def cancel_requested(self) -> bool:
        return self.portal.call(self.engine.store.groups.group, self.group.id).cancel_requested is not None

    def snapshot(self) -> tuple[list[gm.GroupRun], list[Any], str]:
        """Entries, group events and group status as of one moment (the scheduler works while we read)."""
        while True:
            entries = self.entries()
            events = self.portal.call(self.engine.store.events, topics.group(self.group.id), 0, 100_000)
            status = self.group_status()
            if self.entries() == entries and len(self.portal.call(
                    self.engine.store.events, topics.group(self.group.id), 0, 100_000)) == len(events):
                return entries, events, status

    @invariant()
    def entries_keep_the_state_machine(self) -> None:
        if not hasattr(self, "group"):
            return
        entries, events, status = self.snapshot()
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "a gap or a duplicate"
        assert sum(e.status == "running" for e in entries) <= LIMIT
        runs = self.portal.call(self.engine.store.runs.runs_by_ids, [e.run_id for e in entries if e.run_id])
        assert sum(r.status == "running" for r in runs.values()) <= LIMIT
        for e in entries:
            before = self.seen.get(e.entry_id)
            if before is not None:
                was, attempts = before
                assert e.attempts >= attempts
                if was in TERMINAL:
                    assert (e.status, e.attempts) == (was, attempts), "a terminal entry changed"
            self.seen[e.entry_id] = (e.status, e.attempts)
            assert e.attempts <= MAX_ATTEMPTS
            mine = [ev for ev in events if ev.payload.get("entry_id") == e.entry_id]
            types = [ev.type for ev in mine]
            assert types[0] == "entry_queued"
            assert types.count("entry_started") == e.attempts
            assert types.count("entry_finished") == (1 if e.status in TERMINAL else 0)
            if e.status in TERMINAL:
                assert types[-1] == "entry_finished" and mine[-1].payload["status"] == e.status
            if e.status == "running":
                assert e.run_id is not None and runs[e.run_id].agent_run_group_id == self.group.id
            if e.status == "queued" and e.attempts:
                assert runs[e.run_id].failure_kind == "process_lost", "only a lost run is retried"
            if e.status == "failed" and e.run_id is None:
                assert e.diagnostic is not None and e.diagnostic.code == "not_found"
        for run_id, n in self.backend.starts.items():
            assert n == 1, f"{run_id} was started {n} times"
        finished = [ev for ev in events if ev.type == "group_finished"]
        if status in TERMINAL:
            assert len(finished) == 1 and finished[0].payload["status"] == status
            assert all(e.status in TERMINAL for e in entries)
            if self.group_ended is not None:
                assert status == self.group_ended
            self.group_ended = status
        else:
            assert not finished

    def teardown(self) -> None:
        if not hasattr(self, "portal"):
            return
        try:
            if hasattr(self, "group") and self.group_status() not in TERMINAL:
                self.portal.call(self._finish)
                self.entries_keep_the_state_machine()
                assert self.group_status() in TERMINAL
        finally:
            if self.serving is not None:
                self.serving.cancel()
                concurrent.futures.wait([self.serving])
            self.portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.home, ignore_errors=True)

    async def _finish(self) -> None:
        """Let every child end by itself (or cancel a group that would wait for more) and see it end."""
        with anyio.fail_after(20):
            while True:
                changed = self.engine.topics.watch(topics.group(self.group.id))
                group = await self.engine.groups.get(ROOT, self.group.id)
                if not group.is_active:
                    return
                runs = (await self.engine.groups.group_runs(ROOT, self.group.id, gm.GroupRunsQuery(limit=1000))).data
                if not any(r.status in ("queued", "running") for r in runs):
                    try:  # fewer than expected_runs dispatched
                        await self.engine.groups.cancel(ROOT, self.group.id)
                    except errors.InvalidTransition:
                        pass  # it ended by itself between the two reads
                    continue
                for r in runs:
                    if r.status == "running" and r.run_id:
                        self.backend.end(r.run_id)
                await self.engine.topics.wait(changed, 1)


GroupEntries.TestCase.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_group_entries = GroupEntries.TestCase
