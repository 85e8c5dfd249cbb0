"""Secrets on the engine's run path (shipped fake backend, real SQLite): resolved at start, not at
create, into the launch's secret environment only; a secret removed before the start fails the run."""

from __future__ import annotations

import anyio
import pytest

from engine.runs import models as rm
from engine.app import Engine
from engine.callers import ROOT
from engine.ports import RunLaunch
from engine.settings import Settings
from runtimes import adapters
from runtimes.fake import FakeBackend

pytestmark = pytest.mark.anyio
VALUE = "value-of-the-secret-42"


class Recording(FakeBackend):
    """The fake backend, remembering each launch it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: list[RunLaunch] = []

    def follow(self, launch: RunLaunch):  # type: ignore[override]
        self.launches.append(launch)
        return super().follow(launch)


async def ended(engine: Engine, run_id: str) -> rm.Run:
    with anyio.fail_after(10):
        return await engine.runs.wait(ROOT, run_id, 10)


async def test_a_secret_goes_to_the_launch_secret_env_only_and_never_to_the_database(tmp_path):
    backend = Recording()
    settings = Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02)
    async with Engine(settings, backend=backend, harnesses=adapters.get).running() as engine:
        engine.secrets.set("TOKEN", VALUE.encode())
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=hello",
                                                              secrets=["TOKEN"], env={"OTHER": "x"}))
        done = await ended(engine, run.id)
    assert done.status == "succeeded" and done.secrets == ["TOKEN"], done
    (launch,) = backend.launches
    assert launch.secret_env == {"TOKEN": VALUE}
    assert VALUE not in str(launch.env) and VALUE not in repr(launch)
    for path in settings.home.glob("agentdock.db*"):  # the database, its WAL and shared memory
        assert VALUE.encode() not in path.read_bytes()


async def test_a_secret_removed_between_create_and_start_fails_the_run_secret_missing(tmp_path):
    backend = Recording()
    settings = Settings(home=tmp_path, image="fake:latest", cancel_grace_seconds=0.02, max_active_runs=1)
    async with Engine(settings, backend=backend, harnesses=adapters.get).running() as engine:
        engine.secrets.set("TOKEN", VALUE.encode())
        blocker = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="block"))
        waiting = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="out=x", secrets=["TOKEN"]))
        assert (await engine.runs.get(ROOT, waiting.id)).status == "queued"
        engine.secrets.remove("TOKEN")
        await engine.runs.cancel(ROOT, blocker.id)
        done = await ended(engine, waiting.id)
    assert (done.status, done.failure_kind) == ("failed", "secret_missing"), done
    assert "TOKEN" in (done.error or "") and [launch.run_id for launch in backend.launches] == [blocker.id]
