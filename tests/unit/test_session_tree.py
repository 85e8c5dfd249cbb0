"""The tree of sessions as a state machine on real SQLite (issue 16): spawns under every kind of
profile (one that opens, one that closes, one that pins an image, the default, none at all), stops,
and spawns racing a stop of their parent or of an ancestor, with the stop forced to land before the
spawn, between its checks and its write, or after it. After every step no live session has a stopped
ancestor, and every session's effective limits are exactly its profile's within its parent's, so
never wider than either; a session's limits hold for the device it tries to create."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine import authority, errors, models
from engine.devices import models as dm
from engine.profiles import models as pm
from engine.app import Engine
from engine.callers import ROOT
from engine.lineage import PermissionPolicy
from engine.sessions.models import SpawnRequest
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend

ALL = PermissionPolicy(tools=["agent", "devices", "runs"], sandbox_profiles=["*"])
PROFILES = {
    "open": {"network": True},
    "closed": {"network": False, "tools": ["exec", "files"], "resources": {"memory_mb": 256},
               "policy": {"approval": "confirm-risky", "max_child_sandboxes": 6}},
    "files": {"tools": ["files"], "network": True},
    "pinned-a": {"image": "img:a", "network": True, "resources": {"cpus": 0.5}},
    "pinned-b": {"image": "img:b", "policy": {"max_child_sandboxes": 2}},
}
CHOICES = [*PROFILES, "default", "skip"]
WHEN = ["before", "between", "after"]
"""Where a racing stop lands: before the spawn starts, between its checks and its write, after it."""


class SessionTree(RuleBasedStateMachine):
    @initialize()
    def open(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="adst-"))
        self.engine = Engine(Settings(home=self.home, image="fake:latest"), backend=FakeBackend(),
                             harnesses=harness.get)
        self.portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self.portal_cm.__enter__()
        self.portal.call(self.engine.store.open)
        self.profiles = {}
        for name, fields in PROFILES.items():
            made = self.call(self.engine.profiles.create, ROOT, models.parse(pm.ProfileCreate, {
                "name": name, "runtime": "custom", **fields}))
            self.profiles[name] = made.id
        self.call(self.engine.profiles.create, ROOT, models.parse(pm.ProfileCreate, {
            "name": "the-default", "runtime": "custom", "is_default": True, "network": True, "tools": ["exec"]}))
        self.tokens: dict[str, str] = {}
        self.gate: tuple[anyio.Event, anyio.Event] | None = None
        snapshot_row = self.engine.sessions.souls.snapshot_row

        async def held(*args: Any, **kw: Any) -> Any:  # a spawn that is told to wait here, between checks and write
            found = await snapshot_row(*args, **kw)
            if self.gate is not None:
                reached, go_on = self.gate
                reached.set()
                await go_on.wait()
            return found

        self.engine.sessions.souls.snapshot_row = held  # type: ignore[method-assign]
        for choice in ("open", "closed"):  # a tree to start from: every rule has a live session to act as
            self.call(self._spawn, ROOT.session_id, choice)

    def teardown(self) -> None:
        if hasattr(self, "portal"):
            self.portal.call(self.engine.store.close)
            self.portal_cm.__exit__(None, None, None)

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def pick(self, n: int) -> str:
        ids = ["ses_root", *sorted(self.tokens)]
        return ids[n % len(ids)]

    async def caller(self, session_id: str) -> Any:
        if session_id == ROOT.session_id:
            return ROOT
        return await self.engine.sessions.authenticate(self.tokens[session_id])

    def request(self, choice: str) -> SpawnRequest:
        extra: dict[str, Any] = {}
        if choice == "skip":
            extra["skip_agent_runtime_profile"] = True
        elif choice != "default":
            extra["agent_runtime_profile_id"] = self.profiles[choice]
        return SpawnRequest(agent_name="w", permissions=ALL, **extra)

    async def _spawn(self, parent: str, choice: str) -> None:
        try:
            spawned = await self.engine.sessions.spawn(await self.caller(parent), self.request(choice))
        except (errors.PermissionDenied, errors.LimitExceeded):  # a stopped parent (401), an image clash, a budget
            return
        self.tokens[spawned.session.id] = spawned.token

    async def _race(self, parent: str, stopped: str, choice: str, when: str) -> None:
        async def stop() -> None:
            await self.engine.sessions.stop(ROOT, stopped)

        if when == "before":
            await stop()
            await self._spawn(parent, choice)
        elif when == "after":
            await self._spawn(parent, choice)
            await stop()
        else:
            reached, go_on = anyio.Event(), anyio.Event()
            self.gate = (reached, go_on)

            async def spawn() -> None:
                try:
                    await self._spawn(parent, choice)
                finally:
                    reached.set()  # refused before it got there: the stop comes after

            try:
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(spawn)
                        await reached.wait()
                        await stop()
                        go_on.set()
            finally:
                self.gate = None

    @rule(parent=st.integers(0, 50), choice=st.sampled_from(CHOICES))
    def spawn(self, parent: int, choice: str) -> None:
        self.call(self._spawn, self.pick(parent), choice)

    @rule(who=st.integers(0, 50))
    def stop(self, who: int) -> None:
        session_id = self.pick(who)
        if session_id != ROOT.session_id:
            self.call(self.engine.sessions.stop, ROOT, session_id)

    @rule(parent=st.integers(0, 50), up=st.integers(0, 3), choice=st.sampled_from(CHOICES),
          when=st.sampled_from(WHEN))
    def spawn_racing_a_stop(self, parent: int, up: int, choice: str, when: str) -> None:
        parent_id = self.pick(parent)
        if parent_id == ROOT.session_id:
            return
        rows = {r.id: r for r in self.call(self.engine.store.sessions.list)}
        stopped = parent_id  # the parent itself, or one of its ancestors
        for _ in range(up):
            above = rows[stopped].parent_session_id
            if above == ROOT.session_id:
                break
            stopped = above
        self.call(self._race, parent_id, stopped, choice, when)

    @rule(who=st.integers(0, 50), network=st.booleans())
    def create_a_device(self, who: int, network: bool) -> None:
        session_id = self.pick(who)
        if session_id == ROOT.session_id:
            return

        async def create() -> tuple[Any, Any]:
            try:
                caller = await self.caller(session_id)
            except errors.Unauthenticated:
                return None, None
            try:
                return caller, await self.engine.devices.create(caller, dm.DeviceCreate(network=network))
            except errors.EngineError as exc:
                return caller, exc

        caller, outcome = self.call(create)
        if caller is None:
            return
        limits = caller.limits
        if isinstance(outcome, errors.EngineError):
            assert isinstance(outcome, (errors.PermissionDenied, errors.LimitExceeded)), outcome
            if isinstance(outcome, errors.PermissionDenied) and "sandbox_create" not in caller.denied:
                assert network and not (limits.network and limits.approval is pm.Approval.none), outcome.message
                assert outcome.evidence["field"] == ("network" if not limits.network else "approval"), outcome.message
            return
        assert outcome.network == network and (limits.network or not network)
        assert limits.approval is pm.Approval.none or not network  # nobody was asked over no MCP client
        assert limits.image in (None, outcome.image)
        for k in authority.RESOURCES:
            cap = getattr(limits.resources, k)
            assert cap is None or getattr(outcome, k) <= cap

    @invariant()
    def no_live_session_under_a_stopped_one_and_no_limit_wider_than_its_parents(self) -> None:
        if not hasattr(self, "portal"):
            return
        rows = {r.id: r for r in self.call(self.engine.store.sessions.list)}
        for row in rows.values():
            parent = rows.get(row.parent_session_id)
            above = authority.UNBOUNDED if parent is None else parent.effective_limits()
            limits = row.effective_limits()
            assert row.limits is not None
            assert limits == authority.narrow(above, authority.Limits.of_profile(row.profile_snapshot)), row.id
            assert authority.wider(limits, above) == [], row.id
            assert authority.wider(limits, authority.Limits.of_profile(row.profile_snapshot)) == [], row.id
            if row.status == "active":
                ancestor = parent
                while ancestor is not None:
                    assert ancestor.status == "active", f"{row.id} is live under {ancestor.id}, {ancestor.status}"
                    ancestor = rows.get(ancestor.parent_session_id)


SessionTree.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_session_tree = SessionTree.TestCase
