"""Each run in a shared device has cgroups of its own: its end kills everything it started at once,
without freezing the device for the runs beside it (real Docker)."""

from __future__ import annotations

import time

import anyio
import docker
import pytest

from engine import errors
from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from runtimes import procs
from runtimes.naming import RUNS_DIR, run_uid
from tests.integration.test_hostile_runs import FORK_BOMB, container, eventually, finish, pids_in, run_in

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def host_cgroup(device_id: str) -> procs.Cgroup:
    info = docker.from_env().api.inspect_container(f"agentdock-{device_id}")
    cgroup = procs.Cgroup.of(info["State"]["Pid"])
    assert cgroup is not None and cgroup.unified is not None, "the test needs the host's v2 cgroup (cgroup.kill)"
    return cgroup


async def test_a_run_is_born_in_its_own_cgroup_and_records_its_process_and_memory_peaks(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())

    run = await run_in(engine, device.id, "cat /proc/self/cgroup; sleep 0.3 & sleep 0.3 & sleep 0.3 & wait")

    assert run.status == "succeeded", run
    assert f"/{procs.run_cgroup_name(run.id)}" in run.output  # every line: v1 and v2
    assert run.pids_peak is not None and run.pids_peak >= 4, run  # the launcher, the command and its sleeps
    assert run.memory_peak_bytes is not None and run.memory_peak_bytes > 0, run
    own = host_cgroup(device.id).run(run.id)
    assert own is not None and not own.exists()  # removed with the run


async def test_a_process_that_clears_its_environment_and_leaves_its_session_is_still_killed_at_the_end(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    baseline = pids_in(device.id)

    run = await run_in(engine, device.id, "env -i setsid sh -c 'exec sleep 1002' </dev/null >/dev/null 2>&1 & "
                                          "echo gone")

    assert (run.status, run.output) == ("succeeded", "gone\n")
    assert pids_in(device.id) <= baseline
    assert "sleep 1002" not in container(device.id).exec_run(["ps", "-o", "args"]).output.decode()


async def test_a_fork_bomb_beside_other_runs_never_freezes_the_device_and_they_all_finish(engine):
    """The sweep that used to `docker pause` the device could catch an exec half made and leave the
    device frozen; now only the bomb's own cgroup is killed, while other runs exec beside it."""
    device = await engine.devices.create(ROOT, dm.DeviceCreate(pids_limit=96))
    since = int(time.time()) - 1
    bomb = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                           command=f"sleep 1; {FORK_BOMB}; sleep 3", timeout=120))
    neighbours: list[rm.Run] = []

    async def neighbour(i: int) -> None:
        neighbours.append(await run_in(engine, device.id, f"echo n{i}", timeout=120))

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(neighbour, i)
    bomb = await finish(engine, bomb.id, timeout=120)

    assert (bomb.status, bomb.failure_kind) == ("failed", "pids_exhausted"), bomb
    # A neighbour exec'd while the bomb filled the device may itself have found no room for a process;
    # none may hang, and none may find the device frozen.
    assert len(neighbours) == 12
    for run in neighbours:
        assert run.status.terminal and "paused" not in (run.error or ""), run
    paused = list(docker.from_env().events(since=since, until=int(time.time()) + 1, decode=True,
                                           filters={"container": f"agentdock-{device.id}", "event": "pause"}))
    assert paused == []
    assert docker.from_env().api.inspect_container(f"agentdock-{device.id}")["State"]["Paused"] is False
    after = await run_in(engine, device.id, "echo fine")
    assert (after.status, after.output) == ("succeeded", "fine\n")


async def test_cancelling_a_run_at_the_pids_limit_ends_it_and_leaves_the_device_usable(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(pids_limit=64))
    run = await engine.runs.create(ROOT, rm.RunCreate(
        sandbox_id=device.id, prompt="p", command="while :; do sleep 1000 & done", timeout=300))
    await eventually(lambda: host_cgroup(device.id).exhausted(), timeout=60)  # (no exec fits in it now)

    await engine.runs.cancel(ROOT, run.id)
    run = await finish(engine, run.id, timeout=120)

    assert (run.status, run.failure_kind) == ("canceled", "canceled"), run
    after = await run_in(engine, device.id, "echo usable")
    assert (after.status, after.output) == ("succeeded", "usable\n")


# ---------------------------------------------------------------- a device that stops answering


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"docker_call_timeout_seconds": 3.0, "cancel_grace_seconds": 0.5})


def freeze(device_id: str) -> procs.Cgroup:
    """Freeze the container from the host, as a runc init caught mid-exec by a pause once left it:
    Docker does not know, and every exec into it hangs."""
    cgroup = host_cgroup(device_id)
    assert cgroup.freezer is not None, "the test needs the host's v1 freezer"
    (cgroup.freezer / "freezer.state").write_text("FROZEN")
    return cgroup


async def test_a_frozen_device_holds_no_other_run_its_runs_end_and_it_is_repaired(engine):
    stuck = await engine.devices.create(ROOT, dm.DeviceCreate())
    other = await engine.devices.create(ROOT, dm.DeviceCreate())
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=stuck.id, prompt="p",
                                                          command="echo started; sleep 1000", timeout=4))
    await eventually(lambda: container(stuck.id).exec_run(["test", "-s", f"{RUNS_DIR}/{run.id}/pid"],
                                                          user=f"{run_uid(run.id)}:1000").exit_code == 0)
    cgroup = freeze(stuck.id)

    beside = await run_in(engine, other.id, "echo beside")  # not held by the frozen device
    run = await finish(engine, run.id, timeout=120)

    assert beside.output == "beside\n"
    assert (run.status, run.failure_kind) == ("failed", "sandbox_lost"), run
    assert "did not answer" in (run.error or ""), run
    after = await run_in(engine, stuck.id, "echo again", timeout=30)  # repaired once the run ended
    assert (after.status, after.output) == ("succeeded", "again\n"), after
    assert (cgroup.freezer / "freezer.state").read_text().strip() == "THAWED"


async def test_the_daemon_starts_and_runs_when_a_device_cannot_be_repaired(settings):
    from runtimes.docker_backend import DockerBackend
    from runtimes.wiring import docker_engine
    from tests.conftest import Engine
    from runtimes import harness

    class Unrepairable(DockerBackend):
        """Docker refuses to unpause (seen: "Cannot unpause ... container not paused"), and the container
        cannot be restarted either."""

        async def _call(self, fn, *args, **kw):  # type: ignore[override]
            if getattr(fn, "__name__", "") in ("unpause", "start", "kill") and args[0] == f"agentdock-{device.id}":
                raise errors.SandboxUnavailable(f"Cannot {fn.__name__} {args[0]}: container not paused")
            return await super()._call(fn, *args, **kw)

    async with docker_engine(settings).running() as engine:
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
    container(device.id).pause()
    async with Engine(settings, backend=Unrepairable(settings.home), harnesses=harness.get).running() as engine:
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="echo started anyway"))
        run = await finish(engine, run.id)
    assert run.output == "started anyway\n"
