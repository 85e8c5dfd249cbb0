"""Runs outlive the daemon: kill -9 it mid-run, restart, and every run ends correctly."""

from __future__ import annotations

import os
import signal

import anyio
import docker
import pytest

from engine.devices import models as dm
from engine.runs import models as rm
from mcp_server import daemon as daemon_mod
from mcp_server.client import DaemonClient
from runtimes.naming import RUNS_DIR, run_uid
from tests.conftest import SMALL, Daemon, owned_containers
from mcp_server import areas

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def kill_daemon(d: Daemon) -> None:
    pid = d.pid()
    assert pid and pid > 0
    os.kill(pid, signal.SIGKILL)
    with anyio.fail_after(10):
        while d.pid() is not None:  # the lock is released when the process dies
            await anyio.sleep(0.05)


async def wait_for_event(client: DaemonClient, run_id: str, type_: str) -> None:
    after = 0
    with anyio.fail_after(30):
        while True:
            page = await client.call(areas.runs.EVENTS, run_id=run_id, after_sequence=after, wait_seconds=5)
            if any(e.type == type_ for e in page.data):
                return
            after = page.next_after_sequence


async def wait_in_container(device_id: str, run_id: str, name: str) -> None:
    """Wait until the run's process has written `name` in its run directory (it does so without us)."""
    container = docker.from_env().containers.get(f"agentdock-{device_id}")
    with anyio.fail_after(30):
        while container.exec_run(["test", "-e", f"{RUNS_DIR}/{run_id}/{name}"],
                                 user=f"{run_uid(run_id)}:1000").exit_code != 0:  # its directory is its own
            await anyio.sleep(0.1)


async def settled(d: Daemon, run_id: str) -> rm.Run:
    async with DaemonClient(d.settings) as client:
        with anyio.fail_after(60):
            return await areas.runs.until_ended(client, run_id)


async def test_run_that_finishes_while_the_daemon_is_down_ends_succeeded_after_restart(daemon: Daemon) -> None:
    async with DaemonClient(daemon.settings) as client:
        device = await client.call(areas.devices.CREATE, dm.DeviceCreate())
        run = await client.call(areas.runs.CREATE, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                       command="echo before; sleep 1; echo after; exit 0"))
        await wait_for_event(client, run.id, "output")
    await kill_daemon(daemon)
    await wait_in_container(device.id, run.id, "exit")
    daemon.start()
    run = await settled(daemon, run.id)
    assert (run.status, run.exit_code, run.output) == ("succeeded", 0, "before\nafter\n")


async def test_run_still_going_across_a_restart_finishes_normally_without_repeating_output(daemon: Daemon) -> None:
    async with DaemonClient(daemon.settings) as client:
        device = await client.call(areas.devices.CREATE, dm.DeviceCreate())
        run = await client.call(areas.runs.CREATE, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                       command="echo one; sleep 2; echo two >&2; echo three"))
        await wait_for_event(client, run.id, "output")
    await kill_daemon(daemon)
    daemon.start()
    run = await settled(daemon, run.id)
    assert (run.status, run.output, run.stderr) == ("succeeded", "one\nthree\n", "two\n")
    async with DaemonClient(daemon.settings) as client:
        events = (await client.call(areas.runs.EVENTS, run_id=run.id)).data
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert "".join(e.payload["text"] for e in events if e.type == "output") == "one\nthree\n"
    assert [e.type for e in events].count("run_started") == 1


async def test_ephemeral_run_across_a_restart_finishes_and_its_container_is_removed(daemon: Daemon) -> None:
    async with DaemonClient(daemon.settings) as client:
        run = await client.call(areas.runs.CREATE, rm.RunCreate(prompt="p", command="echo start; sleep 2; echo end"))
        await wait_for_event(client, run.id, "output")
    await kill_daemon(daemon)
    daemon.start()
    run = await settled(daemon, run.id)
    assert (run.status, run.output) == ("succeeded", "start\nend\n")
    # The end is committed before the container is removed (the reverse could re-run it after a crash).
    with anyio.fail_after(15):
        while owned_containers(daemon.settings.home):
            await anyio.sleep(0.1)


async def test_run_whose_container_vanished_while_the_daemon_was_down_fails_with_sandbox_lost(daemon: Daemon) -> None:
    async with DaemonClient(daemon.settings) as client:
        device = await client.call(areas.devices.CREATE, dm.DeviceCreate())
        run = await client.call(areas.runs.CREATE, rm.RunCreate(sandbox_id=device.id, prompt="p", command="sleep 1000"))
        await wait_for_event(client, run.id, "run_started")
    await kill_daemon(daemon)
    docker.from_env().containers.get(f"agentdock-{device.id}").remove(force=True)
    daemon.start()
    run = await settled(daemon, run.id)
    assert (run.status, run.failure_kind) == ("failed", "sandbox_lost")


async def test_run_whose_process_died_with_its_container_fails_with_process_lost(daemon: Daemon) -> None:
    async with DaemonClient(daemon.settings) as client:
        device = await client.call(areas.devices.CREATE, dm.DeviceCreate())
        run = await client.call(areas.runs.CREATE, rm.RunCreate(sandbox_id=device.id, prompt="p", command="sleep 1000"))
        await wait_for_event(client, run.id, "run_started")
        await wait_in_container(device.id, run.id, "pid")
    await kill_daemon(daemon)
    docker.from_env().containers.get(f"agentdock-{device.id}").restart(timeout=1)
    daemon.start()
    run = await settled(daemon, run.id)
    assert (run.status, run.failure_kind, run.exit_code) == ("failed", "process_lost", None)


async def test_labelled_container_without_a_device_row_is_removed_on_start(daemon: Daemon) -> None:
    home = str(daemon.settings.home)
    stray = docker.from_env().containers.create(
        SMALL, ["sleep", "100"], name=f"agentdock-sbx_stray_{os.getpid()}",
        labels={"agentdock.home": home, "agentdock.device_id": f"sbx_stray_{os.getpid()}",
                "agentdock.kind": "sandbox", "agentdock.ephemeral": "0"})
    daemon_mod.stop(daemon.settings)
    daemon.start()
    assert stray.id not in [c.id for c in owned_containers(daemon.settings.home)]


async def test_runs_queued_behind_the_cap_survive_a_kill_9_and_start_in_order_after_it(daemon: Daemon, monkeypatch):
    monkeypatch.setenv("AGENTDOCK_MAX_ACTIVE_RUNS", "1")
    daemon_mod.stop(daemon.settings)
    daemon.start()
    async with DaemonClient(daemon.settings) as client:
        device = await client.call(areas.devices.CREATE, dm.DeviceCreate())
        blocker = await client.call(areas.runs.CREATE, rm.RunCreate(sandbox_id=device.id, prompt="p", command="sleep 1000"))
        await wait_for_event(client, blocker.id, "run_started")
        queued = [await client.call(areas.runs.CREATE, rm.RunCreate(sandbox_id=device.id, prompt="p", command=f"echo {i}"))
                  for i in range(2)]
        assert [(await client.call(areas.runs.GET, run_id=r.id)).status for r in queued] == ["queued", "queued"]
    await kill_daemon(daemon)
    daemon.start()

    async with DaemonClient(daemon.settings) as client:
        assert [(await client.call(areas.runs.GET, run_id=r.id)).status for r in queued] == ["queued", "queued"]
        assert (await client.call(areas.runs.CANCEL, run_id=blocker.id)).status == "canceled"
    ended = [await settled(daemon, r.id) for r in queued]
    assert [(r.status, r.output) for r in ended] == [("succeeded", "0\n"), ("succeeded", "1\n")]
    assert ended[0].started_at < ended[1].started_at


async def test_an_ephemeral_run_given_a_secret_survives_a_restart_and_stays_masked(daemon: Daemon) -> None:
    from engine.secrets import SecretStore

    value = "restart-secret-" + os.urandom(8).hex()
    SecretStore(daemon.settings.secrets_dir).set("TOKEN", value.encode())
    async with DaemonClient(daemon.settings) as client:
        run = await client.call(areas.runs.CREATE, rm.RunCreate(prompt="p", secrets=["TOKEN"],
                                                       command='echo "a=$TOKEN"; sleep 2; echo "b=$TOKEN"'))
        await wait_for_event(client, run.id, "output")
    container = next(c for c in owned_containers(daemon.settings.home) if c.labels.get("agentdock.run_id") == run.id)
    assert value not in str(container.attrs["Config"])  # exec'd in a keepalive container, not its main process
    await kill_daemon(daemon)
    daemon.start()
    run = await settled(daemon, run.id)
    assert (run.status, run.output) == ("succeeded", "a=********\nb=********\n"), run
    assert owned_containers(daemon.settings.home) == []
