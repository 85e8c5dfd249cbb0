"""Devices as containers: created with the security defaults (every capability dropped, read-only, their
own disks, limits, no network but the gateway's), started, repaired, inspected, listed with their disks
tended, removed; and the running container as the host sees it (its cgroups)."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Any

import anyio
import docker
import docker.errors

from engine import errors
from engine.ports import DeviceSpec, DeviceState
from engine.tokens import AGENT_SOCKET_IN_DEVICE
from runtimes import disks, egress_network, naming, procs

log = logging.getLogger("agentdock.docker")


class Devices(egress_network.EgressNetwork):
    """The devices of `DockerBackend`."""

    workspace_mb: dict[str, int]
    """The size of a new device's /workspace, by kind (a filesystem of its own: see `disks`)."""
    tmp_mb: dict[str, int]
    """The size of a device's /tmp, by kind (a filesystem of its own, as /workspace)."""
    _creating: set[str]
    """Devices whose workspace is made and container not yet: not orphans."""
    _image_users: dict[str, str]
    """Per image: the user its USER names."""
    _run_users: dict[str, str]
    """Per device: its image's user (the group its runs share)."""
    _cgroups: dict[str, procs.Cgroup]
    """Per running container: its cgroups as the host sees them."""

    async def _image_user(self, image: str) -> str:
        """The user the image's USER names (runs execute as it); '' for root."""
        if image not in self._image_users:
            info = await self._call(self.api.inspect_image, image)
            self._image_users[image] = (info.get("Config") or {}).get("User") or ""
        return self._image_users[image]

    def _create(self, spec: DeviceSpec, command: list[str], env: dict[str, str], *, user: str,
                run_user: str) -> str:
        """Make the device's disks, then its container (not started). While it does, `_tend_disks` leaves
        those disks alone: they have no container yet."""
        self._creating.add(spec.device_id)
        try:
            return self._create_container(spec, command, env, user=user, run_user=run_user)
        finally:
            self._creating.discard(spec.device_id)

    def _create_container(self, spec: DeviceSpec, command: list[str], env: dict[str, str], *, user: str,
                          run_user: str) -> str:
        api = self.api
        # The agent socket's directory, read-only: a run calls back as its session (a token on every
        # request). Only that directory: never control.sock, never the Docker socket.
        agent_dir = Path(self.home) / "agent"
        agent_dir.mkdir(mode=0o755, exist_ok=True)
        mounts = [docker.types.Mount(posixpath.dirname(AGENT_SOCKET_IN_DEVICE), str(agent_dir), type="bind",
                                     read_only=True)]
        if self._exists(spec.device_id):  # before its disks are made: making them clears what is there
            raise errors.Conflict(f"device {spec.device_id} already exists", evidence={"device_id": spec.device_id})
        own = disks.DeviceDisks.of(self.home, spec.device_id)
        try:
            own.make(spec.workspace_mb or self.workspace_mb[spec.kind], spec.tmp_mb or self.tmp_mb[spec.kind],
                     *naming.image_ids(run_user))
        except disks.DiskError as exc:
            raise errors.SandboxUnavailable(f"cannot make the device's /workspace and /tmp: {exc}") from None
        # Nothing else is writable (the image's own files are read-only), so nothing a run writes is
        # outside these sizes; /var/tmp is /tmp.
        mounts += [docker.types.Mount(path, str(disk.mount), type="bind") for path, disk in (
            ("/workspace", own.workspace), ("/tmp", own.tmp), ("/var/tmp", own.tmp), (naming.RUNS_DIR, own.runs))]
        egress = not spec.network and self._egress is not None
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=spec.pids_limit,
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",
            nano_cpus=int(spec.cpus * 1e9),
            network_mode="bridge" if spec.network else self._egress or "none",
            # On the egress network no name resolves (the gateway is reached by its address), but a lookup
            # waits for Docker's resolver to give up: once, for a second, not 5 s twice (CLIs look up a few).
            dns_opt=["timeout:1", "attempts:1"] if egress else None,
            init=True,
            read_only=True,
            mounts=mounts,
            log_config=docker.types.LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
        )
        try:
            created = api.create_container(
                spec.image, command=command, name=naming.container_name(spec.device_id),
                labels=naming.labels(spec, self.home, run_user), environment={**spec.env, **env},
                working_dir="/workspace", host_config=host_config, user=user,
            )
        except docker.errors.DockerException:
            own.remove()
            raise
        self._run_users[spec.device_id] = run_user
        return created["Id"]

    async def create(self, spec: DeviceSpec) -> DeviceState:
        # The device's main process runs as a user no run shares, so a run cannot signal it (or the
        # init above it) and stop the sandbox for the runs after it.
        run_user = await self._image_user(spec.image)
        cid = await self._call(self._create, spec, naming.KEEPALIVE, {}, user=naming.KEEPER, run_user=run_user)
        try:
            await self._call(self.api.start, cid)
            # Up means a shell answers in it (runs are started with one): a container whose main
            # process fails right after start may still look running for a moment.
            answered = await self._answers(naming.container_name(spec.device_id))
            info = await self._call(self.api.inspect_container, cid)
            if not answered or not info["State"]["Running"]:
                logs = await self._call(self.api.logs, cid, tail=5)
                raise errors.InvalidInput(
                    "image", f"the device's container did not stay up with a shell (running: "
                    f"{info['State']['Running']}, exit code {info['State']['ExitCode']}): "
                    f"{logs.decode(errors='replace').strip()[-300:] or 'no output'}",
                    suggested_command="agentdock image build")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.remove(spec.device_id)
            raise
        return naming.state(cid, info["Config"]["Labels"] or {}, True)

    async def start(self, device_id: str) -> DeviceState:
        state = await self.inspect(device_id)
        if state is not None and state.paused:
            await self._call(self.api.unpause, naming.container_name(device_id))
        else:
            await anyio.to_thread.run_sync(self._remount, device_id)
            await self._call(self.api.start, naming.container_name(device_id))
        state = await self.inspect(device_id)
        if state is None or not state.running:
            raise errors.SandboxUnavailable(f"{device_id} did not stay up after a restart",
                                            suggested_command=f"agentdock sandbox rm {device_id}")
        return state

    async def repair(self, device_id: str) -> str:
        """Thaw a frozen device (from the host, and through Docker if it says paused); if it still does
        not answer, end every process in it from the host and start it again: its files stay."""
        name = naming.container_name(device_id)
        info = await self._inspect(name)
        if info is None:
            return "gone"
        cgroup = await anyio.to_thread.run_sync(procs.Cgroup.of, info["State"]["Pid"])
        thawed = cgroup is not None and await anyio.to_thread.run_sync(cgroup.thaw)
        if info["State"].get("Paused"):
            thawed = True
            try:
                await self._call(self.api.unpause, name)
            except (errors.Conflict, errors.SandboxUnavailable) as exc:  # not paused after all, or stuck
                log.warning("could not unpause %s: %s", name, exc.message)
        if info["State"]["Running"] and await self._answers(name):
            return "thawed" if thawed else "answering"
        log.warning("%s does not answer: ending every process in it and starting it again", name)
        if cgroup is None or not await anyio.to_thread.run_sync(cgroup.kill_all):
            try:
                await self._call(self.api.kill, name)
            except errors.Conflict:
                pass  # not running
        self._cgroups.pop(name, None)
        await self._call(self.api.wait, name)
        await self.start(device_id)
        return "restarted"

    async def _answers(self, name: str) -> bool:
        """Whether a shell starts and ends in the container (bounded by the call timeout)."""
        try:
            probe = (await self._call(self.api.exec_create, name, ["/bin/sh", "-c", ":"], user=naming.KEEPER))["Id"]
            await self._call(self.api.exec_start, probe)
            return (await self._call(self.api.exec_inspect, probe))["ExitCode"] == 0
        except (errors.Conflict, errors.SandboxUnavailable, errors.NotFound):
            return False

    async def image_exists(self, image: str) -> bool:
        try:
            await self._call(self.api.inspect_image, image)
            return True
        except (errors.NotFound, errors.InvalidInput):
            return False

    async def inspect(self, device_id: str) -> DeviceState | None:
        info = await self._inspect(naming.container_name(device_id))
        if info is None:
            return None
        labels = info["Config"]["Labels"] or {}
        return naming.state(info["Id"], labels, info["State"]["Running"],
                      started=not info["State"].get("StartedAt", "").startswith("0001-"),
                      paused=bool(info["State"].get("Paused")))

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._call(self.api.inspect_container, name)
        except errors.NotFound:
            return None

    async def list_owned(self) -> list[DeviceState]:
        found = await self._call(self.api.containers, all=True, filters={"label": f"agentdock.home={self.home}"})
        states = [naming.state(c["Id"], c["Labels"] or {}, c["State"] == "running", paused=c["State"] == "paused")
                  for c in found]
        await anyio.to_thread.run_sync(self._tend_disks, {s.device_id for s in states})
        return states

    def _tend_disks(self, devices: set[str]) -> None:
        """Mount again the workspaces of these devices whose mount went (a reboot of the host), and
        remove those of devices that are gone (a crash between the two steps of a create or remove).

        `devices` was listed a moment ago: a device being made since has disks and no container in it.
        So a device's disks go only when it is not being made now and Docker, asked again, has no
        container for it (in that order: one made after the first check has its container by the second)."""
        for device_id in disks.owned(self.home):
            own = disks.DeviceDisks.of(self.home, device_id)
            try:
                if device_id in devices:
                    own.ensure_mounted()
                elif device_id not in self._creating and not self._exists(device_id):
                    log.warning("removing the filesystems of %s, whose container is gone", device_id)
                    own.remove()
            except disks.DiskError as exc:  # said here; a run in it fails with it when the device starts
                log.warning("the filesystems of %s: %s", device_id, exc)

    def _exists(self, device_id: str) -> bool:
        """Whether Docker has the device's container now (when it cannot say, as if it had: disks stay)."""
        try:
            self.api.inspect_container(naming.container_name(device_id))
        except docker.errors.NotFound:
            return False
        except docker.errors.DockerException:
            return True
        return True

    def _remount(self, device_id: str) -> None:
        try:
            disks.DeviceDisks.of(self.home, device_id).ensure_mounted()
        except disks.DiskError as exc:
            raise errors.SandboxUnavailable(f"cannot mount the /workspace of {device_id}: {exc}") from None

    async def remove(self, device_id: str) -> None:
        name = naming.container_name(device_id)
        self._run_users.pop(device_id, None)
        self._cgroups.pop(name, None)
        try:
            await self._call(self.api.remove_container, name, force=True, v=True)
        except errors.NotFound:
            pass
        try:  # a computer made before workspaces had a size had a volume
            await self._call(self.api.remove_volume, f"{name}-home", force=True)
        except errors.NotFound:
            pass
        await anyio.to_thread.run_sync(disks.DeviceDisks.of(self.home, device_id).remove)

    async def _run_user(self, device_id: str, run_id: str) -> str:
        """The run's own uid, in the group of the device's image user."""
        if device_id not in self._run_users:
            info = await self._inspect(naming.container_name(device_id))
            if info is None:
                raise errors.SandboxUnavailable(f"the container of {device_id} is gone")
            labels = info["Config"]["Labels"] or {}
            self._run_users[device_id] = labels.get("agentdock.run_user", info["Config"].get("User") or "")
        return f"{naming.run_uid(run_id)}:{naming.image_ids(self._run_users[device_id])[1]}"

    async def disk_full(self, device_id: str) -> bool:
        """Whether the device's /workspace, /tmp or runs' directory is full (each is mounted on the host)."""
        return await anyio.to_thread.run_sync(disks.DeviceDisks.of(self.home, device_id).full)

    async def _up(self, name: str) -> bool:
        """Is the container running? A container being stopped has lost its main process before
        Docker says so: where the host shows it, a dead (or zombie) main process means no."""
        info = await self._inspect(name)
        if info is None or not info["State"]["Running"]:
            return False
        return await anyio.to_thread.run_sync(procs.alive, info["State"]["Pid"])

    async def _cgroup(self, name: str) -> procs.Cgroup | None:
        """The running container's cgroups as the host sees them (None: stopped, or not visible)."""
        cached = self._cgroups.get(name)
        if cached is not None and cached.live():
            return cached
        info = await self._inspect(name)
        if info is None or not info["State"]["Running"]:
            return None
        cgroup = await anyio.to_thread.run_sync(procs.Cgroup.of, info["State"]["Pid"])
        if cgroup is not None:
            self._cgroups[name] = cgroup
        return cgroup
