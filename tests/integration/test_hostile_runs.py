"""Hostile runs on the real Docker engine: a fork bomb, a run that stops its own sandbox, output
without end, symlinks at the artifact export, a crash between creating and starting a container.
Each ends the run with a reason and leaves the sandbox, the daemon and the host working."""

from __future__ import annotations

import io
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx
import pytest

from engine import errors, models, ports
from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from engine.secrets import MASK, SecretStore
from mcp_server import daemon as daemon_mod
from runtimes import harness, procs, wrapper
from runtimes.docker_backend import DockerBackend
from runtimes.naming import RUNS_DIR, run_uid
from runtimes.wiring import docker_engine
from tests.conftest import FULL, SMALL, Daemon, Engine, owned_containers
from mcp_server import areas

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

FORK_BOMB = "bomb() { bomb | bomb & }; bomb"
MEMORY_BOMB = 'x=aaaaaaaaaaaaaaaa; while :; do x="$x$x"; done'


async def finish(engine: Engine, run_id: str, timeout: float = 60) -> rm.Run:
    with anyio.fail_after(timeout):
        run = await engine.runs.wait(ROOT, run_id, timeout + 5)
    assert run.status.terminal, run
    return run


async def run_in(engine: Engine, device_id: str, command: str, **kw: Any) -> rm.Run:
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device_id, prompt="p", command=command, **kw))
    return await finish(engine, run.id)


def container(device_id: str) -> Any:
    return docker.from_env().containers.get(f"agentdock-{device_id}")


def pids_in(device_id: str) -> int:
    info = docker.from_env().api.inspect_container(f"agentdock-{device_id}")
    cgroup = procs.Cgroup.of(info["State"]["Pid"])
    assert cgroup is not None, "the test needs the host's view of the container's processes"
    return len(cgroup.pids())


async def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    """Wait, bounded, for a condition something else makes true (no event to wait on here)."""
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.05)


# ---------------------------------------------------------------- fork bomb


async def test_fork_bomb_ends_pids_exhausted_with_every_process_killed_and_the_next_run_succeeds(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(pids_limit=64))
    baseline = pids_in(device.id)

    run = await run_in(engine, device.id, FORK_BOMB, timeout=120)

    assert (run.status, run.failure_kind, run.exit_code) == ("failed", "pids_exhausted", None), run
    assert "process limit" in (run.error or "")
    # Nothing of the bomb is left: killed ones leave the cgroup once reaped (a moment), a live one never would.
    await eventually(lambda: pids_in(device.id) <= baseline, timeout=10)
    after = await run_in(engine, device.id, "echo still here")
    assert (after.status, after.output) == ("succeeded", "still here\n")
    assert (await engine.devices.get(ROOT, device.id)).status is models.DeviceStatus.running


async def test_processes_a_run_leaves_behind_are_killed_when_it_ends(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    baseline = pids_in(device.id)

    run = await run_in(engine, device.id, "sleep 1000 & setsid sleep 1001 & echo left")

    assert (run.status, run.output) == ("succeeded", "left\n")
    assert pids_in(device.id) <= baseline


# ---------------------------------------------------------------- a run against its own sandbox


async def test_a_run_cannot_stop_its_sandbox_by_signalling_init(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    await run_in(engine, device.id, "echo kept > /workspace/mark")

    run = await run_in(engine, device.id, "kill -TERM 1; kill -KILL 1; kill -TERM -1; kill -USR1 1; sleep 0.5")

    assert run.status == "failed" and run.failure_kind in ("nonzero_exit", "process_lost"), run
    assert (await engine.devices.get(ROOT, device.id)).status is models.DeviceStatus.running
    after = await run_in(engine, device.id, "cat /workspace/mark")
    assert (after.status, after.output) == ("succeeded", "kept\n")


async def test_a_run_whose_sandbox_stops_under_it_ends_sandbox_lost_and_the_next_run_starts_it_again(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    await run_in(engine, device.id, "echo kept > /workspace/mark")
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p",
                                                    command="echo started; sleep 1000"))
    await eventually(lambda: container(device.id).exec_run(["test", "-s", f"{RUNS_DIR}/{run.id}/pid"],
                                                           user=f"{run_uid(run.id)}:1000").exit_code == 0)

    container(device.id).stop(timeout=1)

    run = await finish(engine, run.id)
    assert (run.status, run.failure_kind) == ("failed", "sandbox_lost"), run
    assert (await engine.devices.get(ROOT, device.id)).status is models.DeviceStatus.stopped
    after = await run_in(engine, device.id, "cat /workspace/mark")
    assert (after.status, after.output) == ("succeeded", "kept\n")
    assert (await engine.devices.get(ROOT, device.id)).status is models.DeviceStatus.running


# ---------------------------------------------------------------- output without end


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"output_cap_bytes": 65_536})


async def test_output_without_end_keeps_only_the_cap_inside_the_sandbox_and_the_files_go_once_settled(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    run = await engine.runs.create(ROOT, rm.RunCreate(
        sandbox_id=device.id, prompt="p",
        command="head -c 20000000 /dev/zero | tr '\\0' a; head -c 5000000 /dev/zero >&2; echo printed > /workspace/done; "
                "sleep 1000"))
    stdout = f"{RUNS_DIR}/{run.id}/stdout"
    await eventually(lambda: container(device.id).exec_run(["test", "-e", "/workspace/done"]).exit_code == 0)

    sizes = container(device.id).exec_run(["sh", "-c", f"wc -c < {stdout}; wc -c < {RUNS_DIR}/{run.id}/stderr"],
                                          user=f"{run_uid(run.id)}:1000")
    kept_out, kept_err = (int(n) for n in sizes.output.split())
    assert kept_out == kept_err == 65_537  # the cap, and one byte to know it was cut

    run = await engine.runs.cancel(ROOT, run.id)
    assert run.output_truncated and len(run.output) == 65_536 and run.stderr_truncated
    await eventually(lambda: container(device.id).exec_run(["test", "-e", f"{RUNS_DIR}/{run.id}"]).exit_code != 0)


# ---------------------------------------------------------------- artifacts


async def test_artifact_export_refuses_what_the_run_cannot_read_even_through_a_symlinked_directory(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(image=FULL))
    run = await run_in(engine, device.id, "ln -s /etc /workspace/etclink; echo mine > /workspace/mine.txt",
                       metadata={"artifact_paths": ["/workspace/etclink/shadow", "/workspace/etclink/hostname",
                                                    "/workspace/mine.txt", "/workspace/etclink"]})

    assert run.status == "succeeded", run
    events = {e.payload["path"]: e.payload for e in (await engine.runs.events(ROOT, run.id, rm.EventsQuery())).data
              if e.type == "artifact_exported"}
    shadow = events["/workspace/etclink/shadow"]
    assert shadow["ok"] is False and shadow["error"] == "permission_denied"
    assert "not readable by the run's user" in shadow["diagnostic"]["message"]
    assert events["/workspace/etclink"]["ok"] is False and events["/workspace/etclink"]["error"] == "invalid_input"
    assert events["/workspace/etclink/hostname"]["ok"] is True  # the run may read it, so it may export it
    assert events["/workspace/mine.txt"]["ok"] is True
    exported = {a.path for a in (await engine.runs.artifacts(ROOT, run.id)).data}
    assert exported == {"/workspace/etclink/hostname", "/workspace/mine.txt"}
    for stored in engine.settings.artifacts_dir.rglob("*"):
        assert not stored.is_file() or b"root:" not in stored.read_bytes()


async def test_a_run_that_plants_a_link_where_its_artifacts_are_copied_exports_nothing_it_could_not_read(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(image=FULL))
    plant = ('mkdir -p "$AGENTDOCK_RUN_DIR/artifacts" && ln -s /etc/shadow "$AGENTDOCK_RUN_DIR/artifacts/0" && '
             'ln -s /etc/shadow "$AGENTDOCK_RUN_DIR/exit"; echo > /workspace/a.txt')
    run = await run_in(engine, device.id, plant, metadata={"artifact_paths": ["/workspace/a.txt"]})

    events = [e.payload for e in (await engine.runs.events(ROOT, run.id, rm.EventsQuery())).data
              if e.type == "artifact_exported"]
    assert [(e["path"], e["ok"]) for e in events] == [("/workspace/a.txt", False)]
    assert (await engine.runs.artifacts(ROOT, run.id)).data == []


# ---------------------------------------------------------------- a crash between create and start


class CrashAfterCreate(DockerBackend):
    """Creates an ephemeral run's container, then hangs as if the daemon died before starting it."""

    def __init__(self, home: Path, created: anyio.Event) -> None:
        super().__init__(home)
        self.created = created

    async def _run_ephemeral(self, launch: ports.RunLaunch, spec: ports.DeviceSpec):  # type: ignore[override]
        user = await self._image_user(spec.image)
        await self._call(self._create, spec, wrapper.command(launch), wrapper.environment(launch, 0, 0),
                         user=user, run_user=user)
        self.created.set()
        await anyio.sleep_forever()
        yield  # pragma: no cover


async def test_an_ephemeral_run_whose_container_was_created_but_never_started_runs_once_after_a_restart(settings):
    created = anyio.Event()
    crashing = Engine(settings, backend=CrashAfterCreate(settings.home, created), harnesses=harness.get)
    async with crashing.running():
        run = await crashing.runs.create(ROOT, rm.RunCreate(prompt="p", command="echo once"))
        with anyio.fail_after(30):
            await created.wait()
    # the daemon died here, between creating the container and starting it
    [state] = owned_containers(settings.home)
    assert state.status == "created"

    async with docker_engine(settings).running() as engine:
        with anyio.fail_after(60):
            run = await engine.runs.wait(ROOT, run.id, 60)
    assert (run.status, run.output, run.failure_kind) == ("succeeded", "once\n", None), run
    assert owned_containers(settings.home) == []


# ---------------------------------------------------------------- everything at once, through the daemon


async def test_fork_bomb_memory_bomb_and_a_gigabyte_of_output_at_once_leave_host_daemon_and_sandboxes_working(
        daemon: Daemon):
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.settings.control_socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://agentdock", timeout=120) as client:
        async def sandbox(**kw: Any) -> str:
            resp = await client.post("/api/v1/sandboxes", json=kw)
            assert resp.status_code == 201, resp.text
            return resp.json()["data"]["id"]

        async def run(device_id: str, command: str, results: dict[str, Any]) -> None:
            resp = await client.post("/api/v1/agent-runs", params={"wait": 110},
                                     json={"sandbox_id": device_id, "prompt": "p", "command": command,
                                           "timeout": 100})
            assert resp.status_code == 201, resp.text
            results[device_id] = resp.json()["data"]

        bomb, memory, printer = [await sandbox(pids_limit=128), await sandbox(memory_mb=128), await sandbox()]
        results: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, bomb, FORK_BOMB, results)
            tg.start_soon(run, memory, MEMORY_BOMB, results)
            tg.start_soon(run, printer, "head -c 1000000000 /dev/zero", results)

        assert (results[bomb]["status"], results[bomb]["failure_kind"]) == ("failed", "pids_exhausted")
        assert (results[memory]["status"], results[memory]["failure_kind"]) == ("failed", "nonzero_exit")
        assert results[memory]["exit_code"] == 137  # killed by the OOM killer
        assert results[printer]["status"] == "succeeded" and results[printer]["output_truncated"]

        for device_id in (bomb, memory, printer):
            results.clear()
            await run(device_id, "echo fine", results)
            assert (results[device_id]["status"], results[device_id]["output"]) == ("succeeded", "fine\n")
        health = await client.get("/api/v1/health")
        assert health.status_code == 200
    assert docker.from_env().ping()


# ---------------------------------------------------------------- a bad image, loose files


async def test_a_device_whose_container_does_not_stay_up_is_not_kept_and_says_why(engine, home):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("etc/hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    image = f"agentdock-test-noshell:{home.name.lower().replace('_', '-')}"
    docker.from_env().api.import_image_from_data(buf.getvalue(), repository=image.split(":")[0],
                                                  tag=image.split(":")[1])
    try:
        with pytest.raises(Exception) as caught:
            await engine.devices.create(ROOT, dm.DeviceCreate(image=image))
        assert getattr(caught.value, "code", None) in ("invalid_input", "sandbox_unavailable"), caught.value
        assert (await engine.devices.list(ROOT)).data == []
        assert owned_containers(home) == []
    finally:
        docker.from_env().images.remove(image, force=True)


def test_the_daemon_tightens_an_existing_home_and_keeps_its_log_and_pid_file_private(settings):
    settings.home.chmod(0o755)
    daemon_mod.log_path(settings).write_text("old\n")
    daemon_mod.log_path(settings).chmod(0o644)
    daemon_mod.start(settings)
    try:
        for path, mode in ((settings.home, 0o700), (daemon_mod.log_path(settings), 0o600),
                           (daemon_mod.pid_path(settings), 0o600), (settings.control_socket, 0o600)):
            assert stat.S_IMODE(path.stat().st_mode) == mode, path
    finally:
        daemon_mod.stop(settings)


async def test_ten_ephemeral_runs_acknowledged_just_before_a_kill_9_each_run_exactly_once(daemon: Daemon):
    from mcp_server.client import DaemonClient
    from tests.integration.test_restart import kill_daemon, settled

    async with DaemonClient(daemon.settings) as client:
        runs = [await client.call(areas.runs.CREATE, rm.RunCreate(prompt="p", command=f"echo run {i}")) for i in range(10)]
    await kill_daemon(daemon)
    daemon.start()

    for i, run in enumerate(runs):
        run = await settled(daemon, run.id)
        if (run.status, run.output, run.failure_kind) != ("succeeded", f"run {i}\n", None):
            async with DaemonClient(daemon.settings) as client:
                events = (await client.call(areas.runs.EVENTS, run_id=run.id)).data
            pytest.fail(f"{run!r}\nevents: {[(e.type, e.message, e.payload) for e in events]}")
    await eventually(lambda: owned_containers(daemon.settings.home) == [])


async def test_one_idempotency_key_with_sandbox_id_or_target_id_is_one_run(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    first = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="true",
                                                      idempotency_key="same-request"))
    again = await engine.runs.create(ROOT, rm.RunCreate(target_id=device.id, prompt="p", command="true",
                                                      idempotency_key="same-request"))
    assert again.id == first.id


async def test_a_sandbox_left_frozen_by_a_crash_mid_sweep_is_thawed_when_the_daemon_starts(settings):
    async with docker_engine(settings).running() as engine:
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
    container(device.id).pause()

    async with docker_engine(settings).running() as engine:
        assert docker.from_env().api.inspect_container(f"agentdock-{device.id}")["State"]["Paused"] is False
        run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="echo thawed"))
        with anyio.fail_after(30):
            run = await engine.runs.wait(ROOT, run.id, 30)
    assert run.output == "thawed\n"


async def test_a_run_that_removes_its_own_run_files_still_ends_at_its_timeout(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())

    run = await run_in(engine, device.id, 'rm -rf "$AGENTDOCK_RUN_DIR"; sleep 1000', timeout=2)

    assert (run.status, run.failure_kind) == ("failed", "timeout"), run
    assert (await run_in(engine, device.id, "echo ok")).output == "ok\n"


class DeafAttach(DockerBackend):
    """An attached stream that hands over nothing (what a busy engine did to a fast ephemeral run)."""

    async def _frames(self, sock):  # type: ignore[override]
        return
        yield  # pragma: no cover


async def test_an_ephemeral_run_whose_attached_stream_missed_its_output_still_records_all_of_it(settings):
    engine = Engine(settings, backend=DeafAttach(settings.home), harnesses=harness.get)
    async with engine.running():
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="echo hello; echo oops >&2"))
        with anyio.fail_after(60):
            run = await engine.runs.wait(ROOT, run.id, 60)
    assert (run.status, run.output, run.stderr) == ("succeeded", "hello\n", "oops\n"), run


async def test_a_run_in_a_sandbox_whose_attached_stream_missed_its_output_still_records_all_of_it(settings):
    """A loaded Docker engine can end an exec's stream before the last of its output: the run's
    files are the record, and what the stream missed is read from them."""
    engine = Engine(settings, backend=DeafAttach(settings.home), harnesses=harness.get)
    async with engine.running():
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        run = await run_in(engine, device.id, "echo hello; echo oops >&2; exit 3")
        quiet = await run_in(engine, device.id, "true")
    assert (run.status, run.exit_code, run.output, run.stderr) == ("failed", 3, "hello\n", "oops\n"), run
    assert (quiet.status, quiet.output, quiet.stderr) == ("succeeded", "", ""), quiet


class DeafAttachFlakyStat(DeafAttach):
    """The stream misses everything, and Docker fails the first stats of the run's files (a loaded
    engine answering 500 or timing out): what the stream missed must still be read, not taken for
    nothing (the cause of runs recorded `succeeded` with no output)."""

    failures = 6  # more than one follow asks for: the supervisor must follow again

    def _file_size(self, name, path):  # type: ignore[override]
        if self.failures > 0:
            self.failures -= 1
            raise errors.SandboxUnavailable(f"Docker could not stat {path} in {name} (HTTP 500)")
        return super()._file_size(name, path)


async def test_a_run_whose_output_files_docker_fails_to_stat_still_records_all_its_output(settings):
    engine = Engine(settings, backend=DeafAttachFlakyStat(settings.home), harnesses=harness.get)
    async with engine.running():
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        run = await run_in(engine, device.id, "echo '{\"one\": \"json line\"}'")
    assert (run.status, run.output) == ("succeeded", '{"one": "json line"}\n'), run
    assert engine.backend.failures == 0


async def test_an_ephemeral_run_given_a_secret_whose_stream_missed_its_output_still_records_all_of_it(settings):
    """An ephemeral run given a secret is exec'd in its sandbox (the secret stays out of the container's
    configuration); that path checked nothing of what its stream missed."""
    SecretStore(settings.secrets_dir).set("MISSED_TOKEN", b"s3cr3t-value-for-the-missed-test")
    engine = Engine(settings, backend=DeafAttach(settings.home), harnesses=harness.get)
    async with engine.running():
        run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command="echo printed; echo $MISSED_TOKEN",
                                                              secrets=["MISSED_TOKEN"]))
        run = await finish(engine, run.id)
    assert (run.status, run.output) == ("succeeded", f"printed\n{MASK}\n"), run


async def test_a_run_that_prints_the_wrappers_trailer_keeps_its_text_and_its_own_exit_code(engine):
    """The wrapper's last write on stderr (its offsets and the exit code) spares the calls that would
    ask Docker; a run printing the same must neither lose that text nor pass off its exit code."""
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    forged = "\x1eagentdock-end 0 0 0\x1e"

    run = await run_in(engine, device.id, f"echo out; printf '{forged}' >&2; exit 3")

    assert (run.status, run.exit_code, run.output, run.stderr) == ("failed", 3, "out\n", forged), run


def test_the_wrappers_trailer_counts_exactly_the_bytes_it_emitted():
    """The trailer is trusted as proof that nothing was missed: its offsets must be what the wrapper
    wrote (a trailer saying 0 after printing would make a lost stdout frame pass for an empty run)."""
    box = docker.from_env().containers.run(SMALL, ["sleep", "300"], detach=True, init=True)
    try:
        for command, out, err in (("echo done 7", b"done 7\n", b""), ("echo a; echo bb >&2", b"a\n", b"bb\n"),
                                  ("true", b"", b"")):
            result = box.exec_run(["/bin/sh", "-c", wrapper.SCRIPT, "agentdock-run", "sh", "-c", command], demux=True,
                                  environment={"AGENTDOCK_RUN_DIR": f"/tmp/r{len(command)}", "AGENTDOCK_CWD": "/tmp",
                                               "AGENTDOCK_PROMPT": "p"})
            stdout, stderr = result.output[0] or b"", result.output[1] or b""
            trailer = f"\x1eagentdock-end {len(out)} {len(err)} 0\x1e".encode()
            assert (result.exit_code, stdout, stderr) == (0, out, err + trailer), (command, result)
    finally:
        box.remove(force=True)
