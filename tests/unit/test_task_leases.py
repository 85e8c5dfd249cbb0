"""The task queue's leases as a state machine on real SQLite and the fake clock: claims, heartbeats,
time passing, the reaper, completes, fails, releases, stale and foreign holders in any order. After
every step each task has at most one valid holder, attempts only grow, nothing is completed twice and
no task is lost; a holder's call succeeds exactly when it holds a live lease."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import errors
from engine.tasks import models as tm
from engine.app import Engine
from engine.callers import ROOT
from engine.clock import FakeClock
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

WORKERS = 3
REFUSED = (errors.InvalidTransition, errors.PermissionDenied, errors.Conflict)


class TaskLeases(RuleBasedStateMachine):
    @initialize()
    def open(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="adtl-"))
        self.clock = FakeClock()
        self.engine = Engine(Settings(home=self.home, image="fake:latest"), backend=FakeBackend(),
                             harnesses=harness.get, clock=self.clock)
        self.portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self.portal_cm.__enter__()
        self.portal.call(self.engine.store.open)
        self.workers = []
        for _ in range(WORKERS):
            spawned = self.portal.call(self.engine.sessions.spawn, ROOT, SpawnRequest(agent_name="worker"))
            self.workers.append(self.portal.call(self.engine.sessions.authenticate, spawned.token))
        self.created: list[str] = []
        self.claims: list[tuple[int, tm.Claim]] = []
        self.attempts: dict[str, int] = {}
        self.completed_by: dict[str, str] = {}

    def teardown(self) -> None:
        if hasattr(self, "portal"):
            self.portal.call(self.engine.store.close)
            self.portal_cm.__exit__(None, None, None)

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def live(self, run_id: str) -> bool:
        """Whether the run holds a live lease right now (what the store says, before the call)."""
        run = self.call(self.engine.store.tasks.task_run, run_id)
        return run.status == "running" and run.lease_until > self.clock.now()

    @rule(priority=st.integers(0, 3), max_attempts=st.integers(1, 3))
    def create(self, priority: int, max_attempts: int) -> None:
        task = self.call(self.engine.tasks.create, ROOT, tm.TaskCreate(title="t", priority=priority,
                                                                       max_attempts=max_attempts))
        self.created.append(task.id)

    @rule(worker=st.integers(0, WORKERS - 1), lease=st.sampled_from([5.0, 20.0]))
    def claim(self, worker: int, lease: float) -> None:
        try:
            result = self.call(self.engine.tasks.claim_next, self.workers[worker], tm.ClaimNext(lease_seconds=lease))
        except errors.LimitExceeded:
            held = [c for w, c in self.claims if w == worker and self.live(c.run.id)]
            assert len(held) >= self.engine.tasks.max_active_leases
            return
        if result.claim is not None:
            assert result.claim.task.status == "claimed" and result.claim.task.current_run_id == result.claim.run.id
            assert result.claim.task.id not in self.completed_by
            self.claims.append((worker, result.claim))

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), action=st.sampled_from(["heartbeat", "complete", "fail", "release"]))
    def holder_acts(self, data: st.DataObject, action: str) -> None:
        worker, claim = data.draw(st.sampled_from(self.claims))
        holding = {"task_run_id": claim.run.id, "claim_token": claim.claim_token}
        req, fn = {"heartbeat": (tm.Heartbeat(**holding), self.engine.tasks.heartbeat),
                   "complete": (tm.Complete(**holding), self.engine.tasks.complete),
                   "fail": (tm.Fail(error="e", **holding), self.engine.tasks.fail),
                   "release": (tm.Holding(**holding), self.engine.tasks.release)}[action]
        valid = self.live(claim.run.id)
        try:
            answer = self.call(fn, self.workers[worker], req)
        except REFUSED as exc:
            assert not valid, f"the current holder's {action} was refused: {exc}"
            assert exc.evidence.get("field") == "task_run_id"
            return
        assert valid, f"a stale holder's {action} applied"
        if action == "complete":
            assert claim.task.id not in self.completed_by
            self.completed_by[claim.task.id] = claim.run.id
            assert answer.task.status == "completed"

    @precondition(lambda self: self.claims)
    @rule(data=st.data(), other=st.integers(1, WORKERS - 1), right_token=st.booleans())
    def foreign_holder_is_refused(self, data: st.DataObject, other: int, right_token: bool) -> None:
        worker, claim = data.draw(st.sampled_from(self.claims))
        token = claim.claim_token if right_token else "tct_" + "0" * 48
        before = self.call(self.engine.tasks.get, ROOT, claim.task.id)
        try:
            self.call(self.engine.tasks.complete, self.workers[(worker + other) % WORKERS],
                      tm.Complete(task_run_id=claim.run.id, claim_token=token))
        except errors.PermissionDenied as exc:
            assert exc.evidence["field"] == "task_run_id"
        else:
            raise AssertionError("another session completed a task it does not hold")
        assert self.call(self.engine.tasks.get, ROOT, claim.task.id) == before

    @rule(seconds=st.sampled_from([1.0, 4.0, 10.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reap(self) -> None:
        self.call(self.engine.tasks.reap_due)

    @invariant()
    def at_most_one_valid_holder_attempts_grow_nothing_lost_or_done_twice(self) -> None:
        if not hasattr(self, "portal"):
            return
        now = self.clock.now()
        rows = self.call(self.engine.store.tasks.list, None, None, 500)
        assert sorted(r.id for r in rows) == sorted(self.created)  # nothing lost, nothing invented
        for task in rows:
            runs = self.call(self.engine.store.tasks.task_runs, task.id)
            live = [r for r in runs if r.status == "running" and r.lease_until > now]
            assert len(live) <= 1, task.id
            assert len([r for r in runs if r.status == "running"]) <= 1, task.id
            assert [r.attempt for r in runs] == list(range(1, len(runs) + 1)) and task.attempts == len(runs)
            assert task.attempts >= self.attempts.get(task.id, 0)
            self.attempts[task.id] = task.attempts
            done = [r for r in runs if r.status == "completed"]
            assert len(done) <= 1 and (task.status == "completed") == bool(done)
            if done:
                assert self.completed_by.get(task.id) == done[0].id
            if task.status == "claimed":
                assert task.current_run_id == runs[-1].id and runs[-1].status == "running"
            else:
                assert all(r.status != "running" for r in runs)
            assert task.failures <= task.max_attempts
            assert (task.status == "failed") == (task.failures >= task.max_attempts)


TaskLeases.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
test_task_leases = TaskLeases.TestCase
