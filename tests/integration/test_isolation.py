"""A user per run and disk quotas, on the real Docker engine.

Each run in a device executes as a uid of its own: a sibling's /proc/PID/environ (its token, its
secrets), its signals and its files are out of reach, while /workspace is shared through the group.
/workspace and /tmp have a size the kernel enforces: a run that fills one ends `disk_full`, and the
device goes on."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

from engine import models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.profiles import models as pm
from engine.callers import ROOT
from engine.settings import Settings
from runtimes import disks
from runtimes.naming import RUNS_DIR, run_uid
from runtimes.wiring import docker_engine
from tests.conftest import FULL, SMALL, Engine
from tests.integration.test_hostile_runs import container, eventually, finish, pids_in, run_in

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def in_computer(engine: Engine, device_id: str, command: str) -> rm.Run:
    run = await engine.runs.create(ROOT, rm.RunCreate(computer_id=device_id, prompt="p", command=command))
    return await finish(engine, run.id)


async def start(engine: Engine, device_id: str, command: str, **kw: Any) -> rm.Run:
    return await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device_id, prompt="p", command=command, **kw))


def pid_of(device_id: str, run_id: str) -> int:
    """The pid (in the device) of a run's command, read as the run's own user."""
    got = container(device_id).exec_run(["cat", f"{RUNS_DIR}/{run_id}/pid"], user=f"{run_uid(run_id)}:1000")
    return int(got.output) if got.exit_code == 0 and got.output.strip() else 0


async def started(device_id: str, run_id: str) -> int:
    await eventually(lambda: pid_of(device_id, run_id) > 0)
    return pid_of(device_id, run_id)


@pytest.mark.parametrize("image", [SMALL, FULL])
async def test_a_run_cannot_read_a_siblings_environment_or_signal_it(engine, image):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(image=image))
    victim = await start(engine, device.id, 'sleep 4; echo "done $AGENTDOCK_RUN_ID"',
                         env={"PRIVATE_NOTE": "victim-marker-77"})
    pid = await started(device.id, victim.id)

    spy = await run_in(engine, device.id, f"cat /proc/{pid}/environ; tr '\\0' '\\n' </proc/{pid}/environ; "
                       f"cat {RUNS_DIR}/{victim.id}/prompt; ls {RUNS_DIR}; id -u")
    assert "victim-marker-77" not in spy.output + spy.stderr
    assert "AGENTDOCK_TOKEN" not in spy.output + spy.stderr
    assert "Permission denied" in spy.stderr, spy
    assert int(spy.output.split()[-1]) == run_uid(spy.id)  # its own uid

    killer = await run_in(engine, device.id, f"kill -TERM {pid} -{pid}; kill -KILL {pid}; kill -TERM 1")
    assert killer.failure_kind == "nonzero_exit", (killer.stderr, killer.output, killer.error)
    assert "not permitted" in killer.stderr.lower() or "denied" in killer.stderr.lower(), killer

    done = await finish(engine, victim.id)
    assert (done.status, done.output) == ("succeeded", f"done {victim.id}\n"), done
    assert (await engine.devices.get(ROOT, device.id)).status is models.DeviceStatus.running


async def test_an_env_i_setsid_leftover_is_swept(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    baseline = pids_in(device.id)
    run = await run_in(engine, device.id, "env -i setsid sleep 600 >/dev/null 2>&1 </dev/null & echo started")
    assert (run.status, run.output) == ("succeeded", "started\n"), run
    assert pids_in(device.id) <= baseline  # the sleep, with no AGENTDOCK_RUN_ID left, went with the run


@pytest.mark.parametrize("image", [SMALL, FULL])
async def test_runs_share_the_workspace_through_their_group(engine, image):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(image=image))
    first = await run_in(engine, device.id, "mkdir -p sub && echo one >sub/a.txt && echo one >b.txt && echo ok")
    assert (first.status, first.output) == ("succeeded", "ok\n"), first
    second = await run_in(engine, device.id, "echo two >>sub/a.txt && rm b.txt && echo two >sub/c.txt && "
                          "mv sub/a.txt sub/d.txt && cat sub/d.txt && touch ~/.config-probe && echo home ok")
    assert (second.status, second.output) == ("succeeded", "one\ntwo\nhome ok\n"), second
    third = await run_in(engine, device.id, "cat sub/c.txt && echo three >sub/c.txt && rm -r sub && ls")
    assert (third.status, third.output) == ("succeeded", "two\n"), third
    # A tool that writes through mkstemp makes its files 0600 (hermes does): they are shared at the run's end.
    private = await run_in(engine, device.id, "umask 077 && mkdir p && echo secret-ish >p/f && echo x >/tmp/t && echo ok")
    assert (private.status, private.output) == ("succeeded", "ok\n"), private
    after = await run_in(engine, device.id, "cat p/f /tmp/t && echo more >>p/f && rm -r p /tmp/t && ls")
    assert (after.status, after.output) == ("succeeded", "secret-ish\nx\n"), after


async def test_git_and_python_work_across_runs(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(image=FULL))
    setup = ("git init -q repo && cd repo && git config user.email a@b && git config user.name a && "
             "echo x >f && git add f && git commit -qm one && python3 -c 'import json; print(json.dumps(1))'")
    first = await run_in(engine, device.id, setup)
    assert (first.status, first.output) == ("succeeded", "1\n"), first
    second = await run_in(engine, device.id, "cd repo && echo y >>f && git commit -qam two && git log --oneline | wc -l"
                          " && python3 -c 'open(\"py.txt\", \"w\").write(\"ok\")' && cat py.txt")
    assert (second.status, second.output.split()) == ("succeeded", ["2", "ok"]), second


# ---------------------------------------------------------------- disk quotas


async def test_filling_the_workspace_ends_disk_full_and_the_next_run_works(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())  # the default: 1 GiB
    assert os.path.ismount(disks.DeviceDisks.of(engine.settings.home, device.id).workspace.mount)

    run = await run_in(engine, device.id, "dd if=/dev/zero of=big bs=1M count=2048", timeout=300)

    assert (run.status, run.failure_kind) == ("failed", "disk_full"), run
    assert "No space left" in run.stderr
    after = await run_in(engine, device.id, "rm big && df -m /workspace | tail -1 && echo fine")
    assert (after.status, after.output.splitlines()[-1]) == ("succeeded", "fine"), after
    size_mb = int(after.output.split()[1])
    assert 900 <= size_mb <= 1024, after.output  # the 1 GiB filesystem, not the host's disk


async def test_filling_tmp_ends_disk_full_and_the_next_run_works(home):
    settings = Settings(home=home, image=SMALL, cancel_grace_seconds=1.0, sandbox_tmp_mb=64)
    async with docker_engine(settings).running() as engine:
        device = await engine.devices.create(ROOT, dm.DeviceCreate())
        run = await run_in(engine, device.id, "dd if=/dev/zero of=/tmp/big bs=1M count=128; exit 1")
        assert (run.status, run.failure_kind) == ("failed", "disk_full"), run
        after = await run_in(engine, device.id, "rm /tmp/big && df -m /tmp | tail -1")
        assert after.status == "succeeded", (after.stderr, after.output, after.error)
        assert 48 <= int(after.output.split()[1]) <= 64, after.output  # 64 MiB, less the filesystem's own


async def test_a_profile_and_a_device_size_their_disks_and_a_run_past_its_profiles_size_ends_disk_full(engine):
    small = await engine.profiles.create(ROOT, models.parse(pm.ProfileCreate, {
        "name": "small-disks", "runtime": "custom", "resources": {"workspace_mb": 64, "tmp_mb": 32}}))
    sizes = "df -m /workspace /tmp | tail -2 | awk '{print $2}'"
    run = await engine.runs.create(ROOT, rm.RunCreate(prompt="p", command=sizes, agent_runtime_profile_id=small.id))
    run = await finish(engine, run.id)
    assert run.status == "succeeded", run
    workspace, tmp = map(int, run.output.split())
    assert (48 <= workspace <= 64, 16 <= tmp <= 32) == (True, True), run.output  # less the filesystems' own

    filled = await engine.runs.create(ROOT, rm.RunCreate(
        prompt="p", command="dd if=/dev/zero of=big bs=1M count=100", agent_runtime_profile_id=small.id))
    filled = await finish(engine, filled.id)
    assert (filled.status, filled.failure_kind) == ("failed", "disk_full"), filled

    device = await engine.devices.create(ROOT, dm.DeviceCreate(workspace_mb=48, agent_runtime_profile_id=small.id))
    assert (device.workspace_mb, device.tmp_mb) == (48, 32)  # its own ask, the profile's for the rest
    run = await run_in(engine, device.id, sizes)
    workspace, tmp = map(int, run.output.split())
    assert (32 <= workspace <= 48, 16 <= tmp <= 32) == (True, True), run.output


@pytest.mark.parametrize("image", [SMALL, FULL])
async def test_a_run_can_write_only_where_a_size_holds(engine, image):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(image=image))
    run = await run_in(engine, device.id, "for top in /*; do case $top in /proc|/sys|/dev) ;; *) "
                       "find $top -type d 2>/dev/null;; esac; done | while read -r d; do [ -w \"$d\" ] && echo \"$d\"; done; true")
    assert run.status == "succeeded", run
    # /workspace, /tmp (also /var/tmp) and the run's own directory; no directory of the image's own (its
    # files are on a read-only root). /dev/shm is Docker's 64 MiB tmpfs, counted against its memory.
    written = run.output.splitlines()
    assert {"/workspace", "/tmp", "/var/tmp", RUNS_DIR} <= set(written), written
    allowed = ("/workspace", "/tmp", "/var/tmp", f"{RUNS_DIR}/{run.id}")
    assert all(line == RUNS_DIR or line.startswith(allowed) for line in written), written


async def test_a_listing_taken_before_a_device_was_made_leaves_its_disks_alone(engine):
    """Listing the owned containers tends their disks; a listing taken just before a device was made (a
    restart's reconcile while a resumed ephemeral run makes its sandbox) has no container for it: its
    disks must stay, or the run in it loses its /workspace and its end (seen as a group entry started
    twice under load)."""
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    own = disks.DeviceDisks.of(engine.settings.home, device.id)
    await anyio.to_thread.run_sync(engine.backend._tend_disks, set())  # as a listing from before it existed

    assert os.path.ismount(own.workspace.mount) and os.path.ismount(own.runs.mount)
    run = await run_in(engine, device.id, "echo kept > f && cat f")
    assert (run.status, run.output) == ("succeeded", "kept\n"), run


async def test_a_computers_workspace_outlives_its_container_restart_and_goes_with_it(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(kind=models.TargetKind.computer))
    own = disks.DeviceDisks.of(engine.settings.home, device.id)
    wrote = await in_computer(engine, device.id, "echo kept >note && df -m /workspace | tail -1")
    assert int(wrote.output.split()[1]) > 7000, wrote  # the computer's 8 GiB
    container(device.id).restart(timeout=1)
    await engine.backend.start(device.id)
    again = await in_computer(engine, device.id, "cat note")
    assert (again.status, again.output) == ("succeeded", "kept\n"), again
    await engine.devices.delete(ROOT, device.id)
    assert not own.top.exists() and not os.path.ismount(own.workspace.mount) and not os.path.ismount(own.runs.mount)


async def test_a_workspace_whose_mount_went_is_mounted_again_and_an_orphan_removed(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    await run_in(engine, device.id, "echo kept >note")
    own = disks.DeviceDisks.of(engine.settings.home, device.id)
    container(device.id).stop(timeout=1)
    for disk in (own.workspace, own.runs):  # as a reboot of the host would
        disks._run("umount", str(disk.mount))
    orphan = disks.DeviceDisks.of(engine.settings.home, "sbx_orphan")
    orphan.make(32, 32, 0, 0)

    await engine.backend.list_owned()  # what the daemon does at its start
    assert os.path.ismount(own.workspace.mount) and os.path.ismount(own.runs.mount)
    assert not orphan.top.exists() and not os.path.ismount(orphan.workspace.mount)
    await engine.backend.start(device.id)
    again = await run_in(engine, device.id, "cat note")
    assert (again.status, again.output) == ("succeeded", "kept\n"), again
