"""The warm pool on the real Docker engine: a run without a target is exec'd in a pooled container
that never holds its env or secrets, the used container goes and the pool refills, size 0 is the
old path, and neither kill -9 (once mid-run, five times under a 200-entry group) nor a stop leaves a
container behind."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from engine import models, topics
from engine.runs import models as rm
from engine.profiles import models as pm
from engine.app import Engine
from engine.callers import ROOT
from engine.settings import Settings
from mcp_server import daemon as daemon_mod
from mcp_server.client import DaemonClient
from runtimes.egress_network import egress_names
from runtimes.naming import KEEPALIVE
from tests.conftest import SMALL, Daemon
from tests.integration.test_restart import kill_daemon, settled, wait_for_event
from mcp_server import areas

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@pytest.fixture
def settings(home: Path, request: pytest.FixtureRequest) -> Settings:
    return Settings(home=home, image=SMALL, cancel_grace_seconds=1.0, **{"pool_size": 2, **getattr(request, "param", {})})


class DockerEvents:
    """Docker's event stream for one home's containers, opened before a test looks: it waits for the
    next event between two looks at the containers, never for a fixed time."""

    def __init__(self, home: Path) -> None:
        self.stream = docker.from_env().api.events(decode=True, filters={"type": "container",
                                                                         "label": f"agentdock.home={home}"})

    async def until(self, check: Callable[[], bool], timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            while not check():
                await anyio.to_thread.run_sync(next, self.stream, abandon_on_cancel=True)


@pytest.fixture
def events(home: Path) -> Iterator[DockerEvents]:
    watching = DockerEvents(home)
    yield watching
    watching.stream.close()


def owned(home: Path) -> list[dict[str, Any]]:
    """Summaries only: no per-container inspect that could race a removal."""
    return docker.from_env().api.containers(all=True, filters={"label": f"agentdock.home={home}"})


def pooled(home: Path) -> list[dict[str, Any]]:
    """The home's pooled containers that are up."""
    return [c for c in owned(home) if "agentdock.pool" in c["Labels"] and c["State"] == "running"]


async def until_ready(engine: Engine, count: int) -> None:
    """Until the engine's pool holds `count` ready containers (each one it adds is announced)."""
    with anyio.fail_after(60):
        while True:
            changed = engine.topics.watch(topics.ADMISSION)
            if engine.pool.ready == count and engine.pool.held == count:
                return
            await changed.wait()


async def output_event(engine: Engine, run_id: str, text: str) -> None:
    after = 0
    with anyio.fail_after(30):
        while True:
            page = await engine.runs.events(ROOT, run_id, rm.EventsQuery(after=after, wait=5))
            if any(e.type == "output" and text in e.payload.get("text", "") for e in page.data):
                return
            assert not page.run_status.terminal, f"the run ended without printing {text!r}"
            after = page.next_after_sequence


async def test_a_run_without_a_target_is_execd_in_a_pooled_container_that_never_holds_its_env_or_secret(
        engine: Engine, home: Path, events: DockerEvents) -> None:
    mine, secret = "mine-" + os.urandom(6).hex(), "secret-" + os.urandom(6).hex()
    engine.secrets.set("API_KEY", secret.encode())
    await until_ready(engine, 2)
    client = docker.from_env()
    ready = {c["Labels"]["agentdock.device_id"]: client.containers.get(c["Id"]) for c in pooled(home)}
    assert len(ready) == 2
    for c in ready.values():
        assert c.labels["agentdock.pool"] == engine.pool.default.key and c.labels["agentdock.ephemeral"] == "1"
        assert "agentdock.run_id" not in c.labels and c.attrs["HostConfig"]["NetworkMode"] == egress_names(str(home))[0]
        assert c.attrs["Config"]["Cmd"] == KEEPALIVE

    created = await engine.runs.create(ROOT, rm.RunCreate(
        prompt="p", env={"MINE": mine}, secrets=["API_KEY"],
        command='echo "mine=$MINE key=$API_KEY"; while [ ! -e /tmp/go ]; do sleep 0.05; done'))
    await output_event(engine, created.id, "mine=")
    run = await engine.runs.get(ROOT, created.id)
    assert run.target_id in ready and run.target_id != created.target_id
    container = client.containers.get(f"agentdock-{run.target_id}")
    assert container.id == ready[run.target_id].id  # the very container started ahead
    assert mine not in str(container.attrs) and secret not in str(container.attrs)  # `docker inspect`
    assert "agentdock.run_id" not in container.labels
    container.exec_run(["touch", "/tmp/go"], user="1000:1000")  # /tmp is the group's
    with anyio.fail_after(30):
        run = await engine.runs.wait(ROOT, run.id, 30)
    assert (run.status, run.output) == ("succeeded", f"mine={mine} key=********\n")
    assert run.pids_peak is not None and run.memory_peak_bytes is not None  # swept and measured like any device's
    started = next(e for e in (await engine.runs.events(ROOT, run.id, rm.EventsQuery())).data
                   if e.type == "run_started")
    assert started.payload == {"target_id": run.target_id, "pooled": True}

    await events.until(lambda: container.id not in [c["Id"] for c in owned(home)] and len(pooled(home)) == 2)
    await until_ready(engine, 2)
    assert run.target_id not in [c["Labels"]["agentdock.device_id"] for c in pooled(home)]


@pytest.mark.parametrize("settings", [{"pool_size": 0}], indirect=True)
async def test_with_pool_size_0_nothing_is_started_ahead_and_a_run_makes_its_own_sandbox_as_before(
        engine: Engine, home: Path) -> None:
    created = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="echo hi"))
    with anyio.fail_after(30):
        run = await engine.runs.wait(ROOT, created.id, 30)
    assert (run.status, run.output, run.target_id) == ("succeeded", "hi\n", created.target_id)
    assert owned(home) == []  # removed before its end was published, as before the pool
    assert engine.pool.held == 0


async def test_a_fork_bomb_in_a_pooled_container_ends_pids_exhausted(engine: Engine, home: Path) -> None:
    small = await engine.profiles.create(ROOT, models.parse(pm.ProfileCreate, {
        "name": "small", "runtime": "custom", "resources": {"pids_limit": 64}}))
    first = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="true",
                                                            agent_runtime_profile_id=small.id))
    with anyio.fail_after(30):
        await engine.runs.wait(ROOT, first.id, 30)
    await until_ready(engine, 4)  # that shape is pooled now, next to the default one
    bomb = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="bomb() { bomb | bomb & }; bomb",
                                                           agent_runtime_profile_id=small.id, timeout=120))
    with anyio.fail_after(130):
        run = await engine.runs.wait(ROOT, bomb.id, 125)
    assert (run.status, run.failure_kind) == ("failed", "pids_exhausted"), run
    started = next(e for e in (await engine.runs.events(ROOT, run.id, rm.EventsQuery())).data
                   if e.type == "run_started")
    assert started.payload.get("pooled") is True


async def restart_with_pool(daemon: Daemon, monkeypatch: pytest.MonkeyPatch, events: DockerEvents) -> set[str]:
    monkeypatch.setenv("AGENTDOCK_POOL_SIZE", "2")
    daemon_mod.stop(daemon.settings)
    daemon.start()
    await events.until(lambda: len(pooled(daemon.settings.home)) == 2)
    return {c["Id"] for c in pooled(daemon.settings.home)}


async def test_a_kill_9_leaves_no_orphan_and_a_run_in_a_pooled_container_finishes_after_the_restart(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch, events: DockerEvents) -> None:
    home = daemon.settings.home
    before = await restart_with_pool(daemon, monkeypatch, events)
    async with DaemonClient(daemon.settings) as client:
        created = await client.call(areas.runs.CREATE, rm.RunCreate(prompt="p", command=(
            'n=$(cat /proc/sys/kernel/random/uuid); echo "start $n"; sleep 2; echo "end $n"')))
        await wait_for_event(client, created.id, "output")
        target = (await client.call(areas.runs.GET, run_id=created.id)).target_id
    held = docker.from_env().containers.get(f"agentdock-{target}")
    assert held.id in before  # it runs in a container of the pool

    await kill_daemon(daemon)
    daemon.start()
    run = await settled(daemon, created.id)
    first, second = run.output.splitlines()
    assert run.status == "succeeded" and first.replace("start", "end") == second  # one process, followed again
    assert run.target_id == target

    def only_a_fresh_pool() -> bool:
        now = owned(home)
        return not {c["Id"] for c in now} & before and len(now) == 2 == len(pooled(home))

    await events.until(only_a_fresh_pool)  # the used one and the unused one are gone, two new ones ready


async def test_stopping_the_daemon_removes_its_ready_pooled_containers(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch, events: DockerEvents) -> None:
    await restart_with_pool(daemon, monkeypatch, events)
    daemon_mod.stop(daemon.settings)
    assert owned(daemon.settings.home) == []


async def test_200_ephemeral_entries_with_a_warm_pool_survive_five_kills_each_running_once_leaving_only_a_pool(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch, events: DockerEvents) -> None:
    from collections import Counter

    from tests.integration.test_group_load import check, run_under_kills

    home = daemon.settings.home
    await restart_with_pool(daemon, monkeypatch, events)
    final, group_events, runs = await run_under_kills(daemon, 200, {"command": "echo done {i}"}, seed=17)

    check(final, group_events, runs, 200)
    started = Counter(e.payload["entry_id"] for e in group_events if e.type == "entry_started")
    assert set(started.values()) == {1}, "an entry was started twice"
    async with DaemonClient(daemon.settings) as client:
        pooled_runs = [r for r in runs if any(e.type == "run_started" and e.payload.get("pooled")
                                              for e in (await client.call(areas.runs.EVENTS, run_id=r.id)).data)]
    assert pooled_runs, "no run claimed a pooled sandbox: the pool was not exercised"
    used = {r.target_id for r in runs}

    def only_a_fresh_pool() -> bool:
        now = owned(home)
        return len(now) == 2 == len(pooled(home)) and not {c["Labels"]["agentdock.device_id"] for c in now} & used

    await events.until(only_a_fresh_pool)
