"""Property: the run lifecycle keeps its invariants under any interleaving of creates, ends, cancels
and restarts of the run service (as after a daemon crash), on real SQLite and the fake backend."""

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
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine import errors
from engine.devices import models as dm
from engine.runs import models as rm
from engine.app import Engine
from engine.clock import FakeClock
from engine.callers import ROOT
from engine.runs.service import RunService
from engine.settings import Settings
from engine.store import Store
from runtimes import harness
from runtimes.fake import FakeBackend

SCRIPTS = {
    "ok": ("out=hello err=warn exit=0", "succeeded"),
    "fail": ("out=partial exit=3", "failed"),
    "block": ("out=started block", None),
    "slow": ("out=started block", None),
}
TIMEOUTS = {"slow": 20}
"""A `slow` run outlives its timeout once 30 s of fake time pass: it ends `timeout`, or sooner by cancel or settle."""
TERMINAL = {"succeeded", "failed", "canceled"}


class RunLifecycle(RuleBasedStateMachine):
    runs = Bundle("runs")
    SETTINGS: dict[str, Any] = {}
    """Settings a variant changes (the pooled one in test_pool.py)."""

    @initialize()
    def open(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="adsm-"))
        self.settings = Settings(home=self.home, image="fake:latest", cancel_grace_seconds=0.02,
                                 flush_interval_seconds=0.01, **self.SETTINGS)
        self.portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self.portal_cm.__enter__()
        self.backend = FakeBackend()
        self.clock = FakeClock()
        """Time moves only when the `pass_time` rule says so: timeouts and flushes are driven, not waited for."""
        self.engine: Engine | None = None
        self.serving: concurrent.futures.Future[Any] | None = None
        self.seen_terminal: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.start_service()
        self.device = self.portal.call(self.engine.devices.create, ROOT, dm.DeviceCreate())  # type: ignore[union-attr]

    def start_service(self) -> None:
        """A new engine on the same database and backend: what a daemon restart is."""
        self.engine = Engine(self.settings, backend=self.backend, harnesses=harness.get, clock=self.clock)
        self.serving, _ = self.portal.start_task(self.engine.serve)

    @property
    def store(self) -> Store:
        assert self.engine is not None
        return self.engine.store

    @property
    def service(self) -> RunService:
        assert self.engine is not None
        return self.engine.runs

    @rule(seconds=st.sampled_from([0.05, 1, 30]))
    def pass_time(self, seconds: float) -> None:
        self.portal.call(self._advance, seconds)

    async def _advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.kinds)
    @rule()
    def restart(self) -> None:
        """Stop the run service mid-flight (supervisors cancelled, processes untouched) and start anew."""
        assert self.serving is not None
        self.serving.cancel()
        concurrent.futures.wait([self.serving])
        self.start_service()

    @rule(target=runs, kind=st.sampled_from(sorted(SCRIPTS)), ephemeral=st.booleans())
    def create(self, kind: str, ephemeral: bool) -> str:
        req = rm.RunCreate(prompt="p", command=SCRIPTS[kind][0], timeout=TIMEOUTS.get(kind, 1800),
                               sandbox_id=None if ephemeral else self.device.id)
        run = self.portal.call(self.service.create, ROOT, req)  # type: ignore[union-attr]
        self.kinds[run.id] = kind
        return run.id

    @rule(run_id=runs)
    def end(self, run_id: str) -> None:
        if self.kinds[run_id] == "block":
            self.portal.call(self.backend.end, run_id, 0)

    @rule(run_id=runs)
    def cancel(self, run_id: str) -> None:
        before = self.portal.call(self.store.runs.run, run_id)
        try:
            run = self.portal.call(self.service.cancel, ROOT, run_id)  # type: ignore[union-attr]
        except errors.InvalidTransition:
            assert before.status in ("succeeded", "failed") or self.status(run_id) in ("succeeded", "failed")
            return
        assert run.status in TERMINAL

    @precondition(lambda self: self.kinds)
    @rule()
    def settle(self) -> None:
        """Let every run end (blocked ones by themselves) and wait, bounded, until all have."""
        for run_id, kind in self.kinds.items():
            if kind in ("block", "slow"):
                self.portal.call(self.backend.end, run_id, 0)
        for run_id in self.kinds:
            run = self.portal.call(self._settled, run_id)
            assert run.status in TERMINAL, run

    async def _settled(self, run_id: str) -> rm.Run:
        with anyio.fail_after(10):  # real time: a run that never ends fails the example
            return await self.service.wait(ROOT, run_id, 3600)

    def snapshot(self, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The run and its events as of one moment: supervisors keep working while we read."""
        while True:
            row = self.portal.call(self.store.runs.run, run_id)
            events = self.portal.call(self.store.events, f"run:{run_id}", 0, 10_000)
            again = self.portal.call(self.store.runs.run, run_id)
            if (row.status, row.updated_at) == (again.status, again.updated_at) and len(events) == len(self.portal.call(self.store.events, f"run:{run_id}", 0, 10_000)):
                return row, events

    def status(self, run_id: str) -> str:
        return self.portal.call(self.store.runs.run, run_id).status

    @invariant()
    def every_run_keeps_its_invariants(self) -> None:
        if not hasattr(self, "portal"):
            return
        for run_id, kind in self.kinds.items():
            row, events = self.snapshot(run_id)
            types = [e.type for e in events]
            assert [e.sequence for e in events] == list(range(1, len(events) + 1)), types
            assert types[0] == "run_queued"
            assert self.backend.starts.get(run_id, 0) <= 1, "a run's process was started twice"
            status = row.status
            if run_id in self.seen_terminal:
                assert status == self.seen_terminal[run_id], "a terminal status changed"
            if status in TERMINAL:
                self.seen_terminal[run_id] = status
                assert types.count("run_finished") == 1 and types[-1] == "run_finished", types
                assert row.finished_at is not None
                if row.ephemeral:
                    assert row.target_id not in self.backend.devices, "an ended ephemeral sandbox remains"
                expected = SCRIPTS[kind][1]
                if status != "canceled" and expected is not None:
                    assert status == expected, (kind, status)
                if kind == "slow" and status == "failed":
                    assert row.failure_kind == "timeout", row
                if status == "succeeded" and kind == "ok":
                    assert (row.output, row.stderr, row.exit_code) == ("hello\n", "warn\n", 0)
            else:
                assert "run_finished" not in types

    def teardown(self) -> None:
        if hasattr(self, "portal"):
            if self.kinds:  # every example ends with every run ended, whatever happened before
                self.settle()
                self.every_run_keeps_its_invariants()
            if self.serving is not None:
                self.serving.cancel()
                concurrent.futures.wait([self.serving])
            self.portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.home, ignore_errors=True)


RunLifecycle.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_run_lifecycle = RunLifecycle.TestCase
