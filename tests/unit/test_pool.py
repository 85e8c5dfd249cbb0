"""The warm pool on real SQLite and the shipped fake backend: claims, top-up, size 0, the cap it
shares with active runs, shapes, and what a restart finds."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as examples
from hypothesis.stateful import invariant

from engine import errors, models, topics
from engine.devices import models as dm
from engine.runs import models as rm
from engine.profiles import models as pm
from engine.app import Engine
from engine.callers import ROOT
from engine.clock import FakeClock
from engine.ports import DeviceSpec, DeviceState
from engine.secrets import SecretStore
from engine.settings import Settings
from runtimes import harness
from runtimes.fake import FakeBackend
from tests.unit.test_run_lifecycle import RunLifecycle

pytestmark = pytest.mark.anyio


def settings_for(tmp_path, **kw) -> Settings:
    return Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02, **{"pool_size": 2, **kw})


class Watched(FakeBackend):
    """Says when a device is removed, and may be told to fail removals (Docker gone at shutdown) or to
    hold a run's launch until the test lets it go (a daemon that dies before the run's exec)."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: dict[str, anyio.Event] = {}
        self.removals_fail = False
        self.hold_launches = False
        self.held = anyio.Event()
        self.cap_seen: list[tuple[int, int]] = []
        self.engine: Engine | None = None

    def gone(self, device_id: str) -> anyio.Event:
        return self.removed.setdefault(device_id, anyio.Event())

    async def create(self, spec: DeviceSpec) -> DeviceState:
        if self.engine is not None and spec.pool is not None:  # counted while it starts
            self.cap_seen.append((self.engine.runs.active, self.engine.pool.held))
        return await super().create(spec)

    async def remove(self, device_id: str) -> None:
        if self.removals_fail:
            raise errors.SandboxUnavailable("the Docker engine is gone")
        await super().remove(device_id)
        self.gone(device_id).set()

    async def follow(self, launch):  # type: ignore[no-untyped-def]
        if self.hold_launches:
            self.held.set()
            await anyio.sleep_forever()
        async for item in super().follow(launch):
            yield item


def pooled(backend: FakeBackend) -> list[DeviceState]:
    return [d for d in backend.devices.values() if d.pool is not None]


async def until_ready(engine: Engine, count: int) -> None:
    """Until the pool holds `count` ready devices; each one it adds is announced on the admission topic."""
    with anyio.fail_after(10):
        while True:
            changed = engine.topics.watch(topics.ADMISSION)
            if engine.pool.ready == count and not engine.pool.held - engine.pool.ready:
                return
            await changed.wait()


async def settled(engine: Engine, run_id: str) -> rm.Run:
    with anyio.fail_after(10):
        return await engine.runs.wait(ROOT, run_id, 3600)


async def until_running(engine: Engine, run_id: str) -> None:
    with anyio.fail_after(10):
        while True:
            changed = engine.topics.watch(topics.run(run_id))
            if (await engine.runs.get(ROOT, run_id)).status is models.RunStatus.running:
                return
            await changed.wait()


async def started_event(engine: Engine, run_id: str) -> rm.RunEvent:
    events = (await engine.runs.events(ROOT, run_id, rm.EventsQuery())).data
    return next(e for e in events if e.type == "run_started")


async def test_a_run_without_a_target_claims_a_ready_sandbox_given_its_env_and_secret_only_in_the_exec(tmp_path):
    backend = Watched()
    SecretStore(tmp_path / "secrets").set("API_KEY", b"s3cret-value")
    async with Engine(settings_for(tmp_path), backend=backend, harnesses=harness.get).running() as engine:
        await until_ready(engine, 2)
        ready = {d.device_id for d in pooled(backend)}
        created = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=hi", env={"MINE": "1"},
                                                                  secrets=["API_KEY"]))
        run = await settled(engine, created.id)

        assert (run.status, run.output) == ("succeeded", "hi\n")
        assert run.target_id in ready and run.target_id != created.target_id  # claimed, not made
        assert (await started_event(engine, run.id)).payload == {"target_id": run.target_id, "pooled": True}
        assert await engine.store.devices.device(created.target_id) is None  # the sandbox it would have made is not
        spec = backend.specs[run.target_id]
        assert (spec.env, spec.network, spec.run_id, spec.pool) == ({}, False, None, engine.pool.default.key)
        launch = backend.followed[run.id]
        assert launch.env["MINE"] == "1" and launch.secret_env == {"API_KEY": "s3cret-value"}
        assert launch.env["AGENTDOCK_RUN_ID"] == run.id and "AGENTDOCK_SOCKET" in launch.env
        assert backend.swept[run.id] == 1  # what it left running is swept, as in any device
        with anyio.fail_after(10):
            await backend.gone(run.target_id).wait()  # removed once its end was published
        assert await engine.store.devices.device(run.target_id) is None
        await until_ready(engine, 2)  # and topped up again
        assert run.target_id not in {d.device_id for d in pooled(backend)}


async def test_runs_created_together_never_share_a_pooled_sandbox(tmp_path):
    backend = Watched()
    async with Engine(settings_for(tmp_path, pool_size=3), backend=backend, harnesses=harness.get).running() as engine:
        await until_ready(engine, 3)
        ready = {d.device_id for d in pooled(backend)}
        created = []
        async with anyio.create_task_group() as tg:
            async def create() -> None:
                created.append(await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block")))

            for _ in range(8):
                tg.start_soon(create)
        for run in created:
            await until_running(engine, run.id)
        runs = [await engine.runs.get(ROOT, r.id) for r in created]
        targets = [r.target_id for r in runs]
        assert len(set(targets)) == len(runs)  # one device to one run
        claims = {r.id: r.target_id for r in runs if (await started_event(engine, r.id)).payload.get("pooled")}
        assert claims and set(claims.values()) <= ready
        assert {r.id for r in runs if r.target_id in ready} == set(claims)
        for run_id, device_id in claims.items():
            assert (await engine.store.devices.device(device_id)).run_id == run_id  # type: ignore[union-attr]
        for run in runs:
            backend.end(run.id)
            assert (await settled(engine, run.id)).status is models.RunStatus.succeeded


async def test_pool_size_0_starts_no_sandbox_ahead_and_a_run_makes_its_own_as_before(tmp_path):
    backend = Watched()
    async with Engine(settings_for(tmp_path, pool_size=0), backend=backend, harnesses=harness.get).running() as engine:
        created = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=hi"))
        run = await settled(engine, created.id)
        assert (run.status, run.target_id) == ("succeeded", created.target_id)
        assert (await started_event(engine, run.id)).payload == {"target_id": created.target_id}
        assert engine.pool.held == 0 and not [s for s in backend.specs.values() if s.pool is not None]
        assert backend.specs[run.target_id].run_id == run.id and backend.devices == {}  # removed before the end


async def test_pooled_and_active_runs_never_pass_the_cap(tmp_path):
    backend = Watched()
    cap = 3
    async with Engine(settings_for(tmp_path, max_active_runs=cap), backend=backend,
                      harnesses=harness.get).running() as engine:
        backend.engine = engine

        def check() -> None:
            assert engine.runs.active + engine.pool.held <= cap

        await until_ready(engine, 2)
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        blockers = []
        for _ in range(2):  # runs in a sandbox of their own take slots: the pool gives up its own for them
            blockers.append(await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block",
                                                                            sandbox_id=device.id)))
            await until_running(engine, blockers[-1].id)
            check()
        assert (engine.runs.active, engine.pool.ready) == (2, 1)
        ephemeral = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
        await until_running(engine, ephemeral.id)  # claims the last ready one
        check()
        assert (engine.runs.active, engine.pool.held) == (3, 0)
        assert (await started_event(engine, ephemeral.id)).payload.get("pooled") is True
        queued = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=later"))
        assert (await engine.runs.get(ROOT, queued.id)).status is models.RunStatus.queued  # no slot, none ready
        for run in [*blockers, ephemeral]:
            backend.end(run.id)
            await settled(engine, run.id)
            check()
        assert (await settled(engine, queued.id)).status is models.RunStatus.succeeded
        await until_ready(engine, 2)
        check()
    assert backend.cap_seen and all(active + held <= cap for active, held in backend.cap_seen)


async def test_a_run_of_another_shape_makes_its_own_then_that_shape_is_pooled_until_no_run_asks_for_it(tmp_path):
    backend = Watched()
    clock = FakeClock()
    async with Engine(settings_for(tmp_path, pool_shape_idle_seconds=600), backend=backend, harnesses=harness.get,
                      clock=clock).running() as engine:
        await until_ready(engine, 2)
        small = await engine.profiles.create(ROOT, models.parse(pm.ProfileCreate, {
            "name": "small", "runtime": "custom", "resources": {"memory_mb": 256}}))
        networked = await engine.profiles.create(ROOT, models.parse(pm.ProfileCreate, {
            "name": "net", "runtime": "custom", "network": True}))

        first = await settled(engine, (await engine.runs.create(ROOT, rm.RunCreate(
            prompt="p", command="out=a", agent_runtime_profile_id=small.id))).id)
        assert (await started_event(engine, first.id)).payload.get("pooled") is None
        await until_ready(engine, 4)  # two of the default shape, two of the one asked for
        second = await settled(engine, (await engine.runs.create(ROOT, rm.RunCreate(
            prompt="p", command="out=b", agent_runtime_profile_id=small.id))).id)
        assert (await started_event(engine, second.id)).payload.get("pooled") is True
        assert backend.specs[second.target_id].memory_mb == 256

        online = await settled(engine, (await engine.runs.create(ROOT, rm.RunCreate(
            prompt="p", command="out=c", agent_runtime_profile_id=networked.id))).id)
        assert (await started_event(engine, online.id)).payload.get("pooled") is None  # network: never pooled
        assert all(not s.network for s in backend.specs.values() if s.pool is not None)

        clock.advance(1)  # past the moment a claimed device's replacement waits for
        await until_ready(engine, 4)
        of_small = [d.device_id for d in pooled(backend) if backend.specs[d.device_id].memory_mb == 256]
        assert len(of_small) == 2
        clock.advance(601)  # nobody asked for that shape since: its devices go, the default's stay
        with anyio.fail_after(10):
            for device_id in of_small:
                await backend.gone(device_id).wait()
        await until_ready(engine, 2)
        assert {backend.specs[d.device_id].memory_mb for d in pooled(backend)} == {512}


async def test_a_ready_sandbox_is_neither_listed_nor_deletable_by_hand(tmp_path):
    backend = Watched()
    async with Engine(settings_for(tmp_path), backend=backend, harnesses=harness.get).running() as engine:
        await until_ready(engine, 2)
        ready = pooled(backend)[0].device_id
        assert (await engine.devices.list(ROOT)).data == []
        with pytest.raises(errors.InvalidTransition) as refused:
            await engine.devices.delete(ROOT, ready)
        assert "pooled sandbox" in refused.value.message and ready in backend.devices


async def test_a_stopping_daemon_removes_its_ready_sandboxes(tmp_path):
    backend = Watched()
    async with Engine(settings_for(tmp_path), backend=backend, harnesses=harness.get).running() as engine:
        await until_ready(engine, 2)
        ready = [d.device_id for d in pooled(backend)]
    assert backend.devices == {} and all(backend.gone(d).is_set() for d in ready)


async def test_after_a_crash_unused_pooled_sandboxes_go_and_one_claimed_by_a_run_that_never_started_serves_it(
        tmp_path):
    backend = Watched()
    settings = settings_for(tmp_path)
    async with Engine(settings, backend=backend, harnesses=harness.get).running() as engine:
        await until_ready(engine, 2)
        before = {d.device_id for d in pooled(backend)}
        backend.hold_launches = True  # the daemon dies after the claim, before the run's exec
        created = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=once"))
        with anyio.fail_after(10):
            await backend.held.wait()
        claimed = (await engine.runs.get(ROOT, created.id)).target_id
        assert claimed in before and created.id not in backend.starts
        backend.removals_fail = True  # nothing is cleaned up on the way out, as after kill -9
    leftover = {d.device_id for d in pooled(backend)}
    assert before <= leftover

    backend.removals_fail = backend.hold_launches = False
    async with Engine(settings, backend=backend, harnesses=harness.get).running() as engine:
        run = await settled(engine, created.id)
        assert (run.status, run.output, run.target_id) == ("succeeded", "once\n", claimed)
        assert backend.starts[created.id] == 1
        for device_id in before - {claimed}:  # unused: removed by the reconciler, records too
            assert backend.gone(device_id).is_set() and await engine.store.devices.device(device_id) is None
        with anyio.fail_after(10):
            await backend.gone(claimed).wait()
        await until_ready(engine, 2)
        assert not {d.device_id for d in pooled(backend)} & before


async def test_a_claimed_sandbox_is_replaced_only_a_moment_after_the_claim(tmp_path):
    backend = Watched()
    clock = FakeClock()
    async with Engine(settings_for(tmp_path, pool_size=1), backend=backend, harnesses=harness.get,
                      clock=clock).running() as engine:
        await until_ready(engine, 1)
        run = await settled(engine, (await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=a"))).id)
        assert (await started_event(engine, run.id)).payload.get("pooled") is True
        with anyio.fail_after(10):
            await backend.gone(run.target_id).wait()
        assert engine.pool.held == 0  # the claiming run's exec had the machine to itself
        clock.advance(0.1)
        await until_ready(engine, 1)


class PooledRunLifecycle(RunLifecycle):
    """The run lifecycle's machine (creates, ends, cancels, restarts, fake time) with a warm pool under a
    small cap: besides every run's own invariants, pooled and active never pass the cap, and no two
    unfinished runs share a sandbox."""

    CAP = 3
    SETTINGS = {"pool_size": 2, "max_active_runs": CAP}

    async def _counts(self) -> tuple[int, int]:
        assert self.engine is not None
        return self.engine.runs.active, self.engine.pool.held

    @invariant()
    def pooled_and_active_never_pass_the_cap(self) -> None:
        if getattr(self, "engine", None) is None:
            return
        active, held = self.portal.call(self._counts)
        assert active + held <= self.CAP, (active, held)

    @invariant()
    def one_sandbox_to_one_run(self) -> None:
        if getattr(self, "engine", None) is None:
            return
        unfinished = [r for r in self.portal.call(self.store.runs.unfinished_runs, self.engine.runs.daemon_id) if r.ephemeral]
        assert len({r.target_id for r in unfinished}) == len(unfinished)
        for run in unfinished:
            device = self.portal.call(self.store.devices.device, run.target_id)
            if device is not None and device.pool is not None:
                assert device.run_id == run.id, (run.id, device)


PooledRunLifecycle.TestCase.settings = examples(
    max_examples=25, stateful_step_count=20, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pooled_run_lifecycle = PooledRunLifecycle.TestCase
