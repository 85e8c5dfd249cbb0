"""A supervisor that fails settles its run through the same finish as any other, and never takes
the service down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from engine import errors, ports
from engine.devices import models as dm
from engine.runs import models as rm
from engine.app import Engine
from engine.settings import Settings
from engine.callers import ROOT
from runtimes import harness
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio


class BrokenFollower(FakeBackend):
    """Creates the ephemeral sandbox, then loses Docker; optionally cannot remove anything either."""

    def __init__(self, *, removal_fails: bool = False) -> None:
        super().__init__()
        self.removal_fails = removal_fails

    async def follow(self, launch: ports.RunLaunch) -> AsyncIterator[ports.Chunk | ports.Exit]:
        if launch.ephemeral is not None and launch.device_id not in self.devices:  # followed again: made once
            await self.create(launch.ephemeral)
        raise errors.SandboxUnavailable("Docker went away")
        yield  # pragma: no cover - makes this an async generator

    async def remove(self, device_id: str) -> None:
        if self.removal_fails:
            raise errors.SandboxUnavailable("Docker went away")
        await super().remove(device_id)


async def run_once(tmp_path, backend: FakeBackend) -> tuple[rm.Run, list[str], dict[str, Any] | None]:
    settings = Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02)
    engine = Engine(settings, backend=backend, harnesses=harness.get)
    async with engine.running():
        runs, store = engine.runs, engine.store
        run = await runs.create(ROOT, rm.RunCreate(prompt="p", command="out=x"))
        with anyio.fail_after(10):
            run = await runs.wait(ROOT, run.id, 10)
        # the service is still up: it takes and finishes another run
        ok = await runs.create(ROOT, rm.RunCreate(prompt="p", command="out=x", sandbox_id=None))
        with anyio.fail_after(10):
            await runs.wait(ROOT, ok.id, 10)
        events = [e.type for e in await store.events(f"run:{run.id}", 0, 100)]
        device = await store.devices.device(run.target_id)
    return run, events, device


async def test_an_ephemeral_run_whose_follower_fails_ends_sandbox_lost_and_leaves_no_sandbox(tmp_path):
    backend = BrokenFollower()
    run, events, device = await run_once(tmp_path, backend)
    assert (run.status, run.failure_kind) == ("failed", "sandbox_lost")
    assert events.count("run_finished") == 1 and events[-1] == "run_finished"
    assert run.target_id not in backend.devices
    assert device is None


async def test_a_failure_to_remove_the_sandbox_does_not_take_the_service_down(tmp_path):
    backend = BrokenFollower(removal_fails=True)
    run, events, device = await run_once(tmp_path, backend)
    assert (run.status, run.failure_kind) == ("failed", "sandbox_lost")
    assert events.count("run_finished") == 1
    assert run.target_id in backend.devices  # left for the reconciler on the next start


class FlakyFollower(FakeBackend):
    """Docker fails one call while a run is followed: the first follow breaks after its first chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.follows = 0

    async def follow(self, launch: ports.RunLaunch) -> AsyncIterator[ports.Chunk | ports.Exit]:
        self.follows += 1
        async for item in super().follow(launch):
            yield item
            if self.follows == 1:
                raise errors.SandboxUnavailable("Docker error: a busy engine timed out")


async def test_a_docker_error_mid_run_is_followed_again_from_where_it_was_and_the_run_succeeds(tmp_path):
    backend = FlakyFollower()
    settings = Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02)
    async with Engine(settings, backend=backend, harnesses=harness.get).running() as engine:
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=one err=two out=three",
                                                              sandbox_id=device.id))
        with anyio.fail_after(10):
            run = await engine.runs.wait(ROOT, run.id, 3600)
    assert (run.status, run.output, run.stderr) == ("succeeded", "one\nthree\n", "two\n")
    assert backend.follows == 2 and backend.starts[run.id] == 1


class EndsDuringAFlush(FakeBackend):
    """Yields the run's output, then its end only once told: the test ends it while the supervisor's
    timed flush, having drained that output, waits for the store's writer."""

    def __init__(self) -> None:
        super().__init__()
        self.printed = anyio.Event()
        self.end = anyio.Event()

    async def follow(self, launch: ports.RunLaunch) -> AsyncIterator[ports.Chunk | ports.Exit]:
        yield ports.Chunk(stream="stdout", data=b"printed\n")
        self.printed.set()
        await self.end.wait()
        yield ports.Exit(exit_code=0)


async def test_a_run_that_ends_while_a_flush_waits_for_the_writer_keeps_its_output(tmp_path):
    """Seen under a 1,000-entry group: runs recorded succeeded with no output. The flusher drained the
    output, then waited for the writer (other runs' commits), and the run's end cancelled it there."""
    backend = EndsDuringAFlush()
    settings = Settings(home=tmp_path, image="fake:latest", flush_interval_seconds=0.01)
    async with Engine(settings, backend=backend, harnesses=harness.get).running() as engine:
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="x", sandbox_id=device.id))
        release = anyio.Event()
        holding = anyio.Event()

        async def hold_the_writer() -> None:
            async with engine.store.write(engine.clock.now()):
                holding.set()
                await release.wait()

        with anyio.fail_after(10):
            await backend.printed.wait()
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_the_writer)
                await holding.wait()
                while engine.store._lock.statistics().tasks_waiting == 0:  # the flush is waiting on it
                    await anyio.sleep(0.001)
                backend.end.set()
                for _ in range(50):  # let the follow see its end and stop the flusher
                    await anyio.sleep(0)
                release.set()
            run = await engine.runs.wait(ROOT, run.id, 10)
    assert (run.status, run.output) == ("succeeded", "printed\n"), run
