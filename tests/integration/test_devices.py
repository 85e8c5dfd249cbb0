"""Devices on the real Docker engine: security defaults, sizes, live status, delete, bad images, reconcile."""

from __future__ import annotations

import os
import secrets
from typing import Any

import anyio
import docker
import docker.errors
import pytest

from engine import errors, models
from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT
from runtimes import disks
from runtimes.egress_network import egress_names
from runtimes.naming import RUNS_DIR, run_uid
from tests.conftest import SMALL, owned_containers

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MiB = 1024 * 1024


def inspect(device_id: str) -> dict[str, Any]:
    return docker.from_env().api.inspect_container(f"agentdock-{device_id}")


def exec_in(device_id: str, *cmd: str, user: str = "") -> tuple[int, str]:
    result = docker.from_env().containers.get(f"agentdock-{device_id}").exec_run(list(cmd), user=user)
    return result.exit_code, result.output.decode()


async def finish(engine: Any, run_id: str, timeout: float = 30) -> rm.Run:
    with anyio.fail_after(timeout):
        run = await engine.runs.wait(ROOT, run_id, timeout + 5)
    assert run.status.terminal, run
    return run


# ---------------------------------------------------------------- security defaults


async def test_sandbox_container_has_every_security_default_and_the_default_sandbox_size(engine, home):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(name="secure"))
    info = inspect(device.id)
    host = info["HostConfig"]

    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False
    assert host["PidsLimit"] == 256
    assert host["Memory"] == 512 * MiB
    assert host["NanoCpus"] == 1_000_000_000
    assert host["NetworkMode"] == egress_names(str(home))[0]  # only the model gateway answers there
    assert host["Init"] is True
    assert (device.cpus, device.memory_mb, device.pids_limit, device.network) == (1.0, 512, 256, False)

    binds = host.get("Binds") or []
    host_mounts = host.get("Mounts") or []
    assert not any("docker.sock" in b for b in binds)
    assert not any("docker.sock" in (m.get("Source") or "") for m in host_mounts)
    assert not any("docker.sock" in (m.get("Source") or "") or "docker.sock" in (m.get("Destination") or "")
                   for m in info["Mounts"])
    # a sandbox mounts the agent socket's directory, read-only (never control.sock), and its own filesystems
    agent_dir, *own = sorted(info["Mounts"], key=lambda m: m["Destination"] != "/run/agentdock")
    assert (agent_dir["Type"], agent_dir["Destination"], agent_dir["RW"]) == ("bind", "/run/agentdock", False)
    assert agent_dir["Source"] == str(engine.settings.agent_socket.parent)
    disks_of = disks.DeviceDisks.of(home, device.id)
    assert sorted((m["Destination"], m["Source"]) for m in own) == [
        (RUNS_DIR, str(disks_of.runs.mount)), ("/tmp", str(disks_of.tmp.mount)),
        ("/var/tmp", str(disks_of.tmp.mount)), ("/workspace", str(disks_of.workspace.mount))]
    assert host["ReadonlyRootfs"] is True  # nothing a run writes is outside those sizes

    assert info["Config"]["WorkingDir"] == "/workspace"
    # The main process runs as a user no run shares (so no run can stop the sandbox); each run as its own uid.
    assert info["Config"]["User"] == "65534:65534"
    assert exec_in(device.id, "id", "-u") == (0, "65534\n")
    run = await engine.runs.create(ROOT, rm.RunCreate(prompt="who", command="id -u", sandbox_id=device.id))
    assert (await finish(engine, run.id)).output == f"{run_uid(run.id)}\n"

    labels = info["Config"]["Labels"]
    assert labels["agentdock.device_id"] == device.id
    assert labels["agentdock.kind"] == "sandbox"
    assert labels["agentdock.home"] == str(home)
    assert device.status is models.DeviceStatus.running
    assert device.id.startswith("sbx_")


async def test_network_true_gives_the_device_a_bridge_network(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(network=True))
    assert inspect(device.id)["HostConfig"]["NetworkMode"] == "bridge"
    assert device.network is True


async def test_requested_cpus_memory_and_pids_limit_are_applied_to_the_container(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(cpus=0.5, memory_mb=64, pids_limit=32))
    host = inspect(device.id)["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * MiB
    assert host["MemorySwap"] == 64 * MiB  # no swap beyond the memory limit
    assert host["PidsLimit"] == 32
    assert (device.cpus, device.memory_mb, device.pids_limit) == (0.5, 64, 32)


async def test_pids_limit_stops_a_process_from_forking_past_it(engine):
    """Forked through `docker exec` rather than a run: a run's own wrapper shares the pid budget, so
    exhausting it from a run would make the wrapper's forks fail at random."""
    device = await engine.devices.create(ROOT, dm.DeviceCreate(pids_limit=16))
    script = (
        "( for i in $(seq 40); do sleep 60 & echo $! >>/tmp/pids; done ) 2>/tmp/err; "
        "n=0; while read p; do kill $p; n=$((n+1)); done </tmp/pids; echo started=$n; cat /tmp/err"
    )
    code, out = exec_in(device.id, "sh", "-c", script, user="1000:1000")  # /tmp is the runs' group's
    assert code == 0, out
    started = int(out.split("started=")[1].split()[0])
    assert 0 < started < 16
    assert "can't fork" in out


# ---------------------------------------------------------------- computers


async def test_computer_gets_larger_defaults_and_a_workspace_removed_with_it(engine, home):
    device = await engine.devices.create(ROOT, dm.DeviceCreate(kind=models.TargetKind.computer))
    assert device.id.startswith("cmp_")
    assert (device.kind, device.cpus, device.memory_mb, device.pids_limit) == ("computer", 2.0, 2048, 1024)
    info = inspect(device.id)
    host = info["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["PidsLimit"]) == (2_000_000_000, 2048 * MiB, 1024)
    assert info["Config"]["Labels"]["agentdock.kind"] == "computer"
    [mount] = [m for m in info["Mounts"] if m["Destination"] == "/workspace"]
    workspace = disks.DeviceDisks.of(home, device.id).workspace
    assert (mount["Type"], mount["Source"]) == ("bind", str(workspace.mount))
    assert os.path.ismount(workspace.mount)

    # the workspace is usable by a run
    run = await engine.runs.create(ROOT, rm.RunCreate(computer_id=device.id, prompt="p",
                                                    command="echo kept >/workspace/f && cat /workspace/f"))
    run = await finish(engine, run.id)
    assert (run.status, run.output, run.target_kind) == ("succeeded", "kept\n", "computer")

    await engine.devices.delete(ROOT, device.id)
    assert not os.path.ismount(workspace.mount) and not workspace.image.exists()
    assert owned_containers(home) == []


# ---------------------------------------------------------------- live status


async def test_get_and_list_report_stopped_then_missing_as_the_container_changes(engine):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    other = await engine.devices.create(ROOT, dm.DeviceCreate())
    container = docker.from_env().containers.get(f"agentdock-{device.id}")

    container.stop(timeout=5)
    assert (await engine.devices.get(ROOT, device.id)).status is models.DeviceStatus.stopped
    listed = {d.id: d.status for d in (await engine.devices.list(ROOT)).data}
    assert listed == {device.id: models.DeviceStatus.stopped, other.id: models.DeviceStatus.running}

    container.remove(force=True)
    assert (await engine.devices.get(ROOT, device.id)).status is models.DeviceStatus.missing
    listed = {d.id: d.status for d in (await engine.devices.list(ROOT)).data}
    assert listed == {device.id: models.DeviceStatus.missing, other.id: models.DeviceStatus.running}


# ---------------------------------------------------------------- delete


async def test_delete_removes_the_container_and_the_row(engine, home):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    keep = await engine.devices.create(ROOT, dm.DeviceCreate())

    deleted = await engine.devices.delete(ROOT, device.id)

    assert deleted.id == device.id
    with pytest.raises(errors.NotFound):
        await engine.devices.get(ROOT, device.id)
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(f"agentdock-{device.id}")
    assert [d.id for d in (await engine.devices.list(ROOT)).data] == [keep.id]
    assert [c.labels["agentdock.device_id"] for c in owned_containers(home)] == [keep.id]


async def test_delete_while_a_run_is_active_is_refused_and_changes_nothing(engine, home):
    device = await engine.devices.create(ROOT, dm.DeviceCreate())
    run = await engine.runs.create(ROOT, rm.RunCreate(sandbox_id=device.id, prompt="p", command="sleep 1000"))

    with pytest.raises(errors.Conflict) as caught:
        await engine.devices.delete(ROOT, device.id)

    assert run.id in caught.value.diagnostic().evidence["active_runs"]
    assert "cancel" in caught.value.message
    still = await engine.devices.get(ROOT, device.id)
    assert still.status is models.DeviceStatus.running
    assert [c.labels["agentdock.device_id"] for c in owned_containers(home)] == [device.id]
    assert not (await engine.runs.get(ROOT, run.id)).status.terminal

    canceled = await engine.runs.cancel(ROOT, run.id)
    assert canceled.status is models.RunStatus.canceled
    await engine.devices.delete(ROOT, device.id)  # allowed once nothing runs there
    with pytest.raises(errors.NotFound):
        await engine.devices.get(ROOT, device.id)


# ---------------------------------------------------------------- bad image


@pytest.mark.parametrize("kind", [models.TargetKind.sandbox, models.TargetKind.computer])
async def test_creating_with_a_missing_image_names_image_and_leaves_nothing(engine, home, kind):
    missing = f"agentdock-no-such-image-{secrets.token_hex(4)}:latest"

    with pytest.raises(errors.InvalidInput) as caught:
        await engine.devices.create(ROOT, dm.DeviceCreate(kind=kind, image=missing))

    assert caught.value.diagnostic().evidence["field"] == "image"
    assert "build" in caught.value.message or caught.value.suggested_command
    assert await engine.store.devices.list(include_ephemeral=True) == []
    assert (await engine.devices.list(ROOT)).data == []
    assert owned_containers(home) == []
    assert disks.owned(home) == []


# ---------------------------------------------------------------- reconcile


async def test_reconcile_removes_a_labelled_container_without_a_row_and_spares_other_homes(engine, home):
    client = docker.from_env()
    kept = await engine.devices.create(ROOT, dm.DeviceCreate())
    orphan_id = f"sbx_x{secrets.token_hex(6)}"
    foreign_id = f"sbx_x{secrets.token_hex(6)}"
    other_home = f"/tmp/ad-other-{secrets.token_hex(4)}"

    def labelled(device_id: str, for_home: str) -> Any:
        return client.containers.create(
            SMALL, ["sleep", "3600"], name=f"agentdock-{device_id}",
            labels={"agentdock.home": for_home, "agentdock.device_id": device_id, "agentdock.ephemeral": "0",
                    "agentdock.kind": "sandbox"})

    orphan = labelled(orphan_id, str(home))
    foreign = labelled(foreign_id, other_home)
    try:
        removed = await engine.devices.reconcile()

        assert removed == [orphan_id]
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(orphan.id)
        assert client.containers.get(foreign.id).labels["agentdock.home"] == other_home
        assert (await engine.devices.get(ROOT, kept.id)).status is models.DeviceStatus.running
    finally:
        foreign.remove(force=True)
