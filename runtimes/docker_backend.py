"""The Docker sandbox backend: labelled containers with the security defaults, runs followed by a wrapper.

docker-py is blocking, so every call goes through `anyio.to_thread.run_sync` under a bounded
limiter; streams get their own limiter because a follower holds a thread for a run's lifetime.
Docker's errors are translated here, once, into the engine's.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import logging
import posixpath
import re
import signal
import socket
import struct
import tarfile
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import docker
import docker.errors
import requests.exceptions
from docker.utils.socket import frames_iter

from engine import errors
from engine.ports import Chunk, DeviceSpec, DeviceState, Ending, Exit, RunLaunch, Swept
from engine.tokens import AGENT_SOCKET_IN_DEVICE
from runtimes import disks, procs

log = logging.getLogger("agentdock.docker")
T = TypeVar("T")
RUNS_DIR = "/agentdock/runs"
"""Where the runs' files are: a filesystem of the device's own (`disks.DeviceDisks.runs`)."""
WRAPPER = resources.files("runtimes").joinpath("wrapper.sh").read_text()
# The main process of a long-lived device: wait for TERM, do nothing else. It runs as KEEPER, a user
# no run shares, so no run can signal it; `docker stop`/`rm -f` still end it.
KEEPALIVE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
KEEPER = "65534:65534"
RUN_UID_BASE = 1 << 20
RUN_UID_SPAN = 1 << 30
"""Each run executes as a uid of its own, from this range (above any image's users and KEEPER), with
the group of the image's user: it shares /workspace with the runs beside it through that group, but
cannot read their /proc/PID/environ (their tokens and secrets), signal them, or enter their files."""
CALL_TIMEOUT_SECONDS = 30.0
"""The longest one Docker call may take before it is abandoned (setting `docker_call_timeout_seconds`)."""
DEVICE_CALLS = 8
"""Docker calls on one container at once."""
ADOPT_SECONDS = 5.0
"""How long the daemon looks for a new wrapper to move into its run's cgroups (the wrapper waits a
little longer, then goes on without: its run is then ended by its processes' environment)."""
FORK_FAILED = (b"can't fork", b"Cannot fork", b"Resource temporarily unavailable")
"""What a shell says when it cannot create a process (busybox ash, dash, bash)."""
STREAM_IDS = {1: "stdout", 2: "stderr"}
TRAILER_MARK = b"\x1eagentdock-end "
TRAILER = re.compile(rb"\x1eagentdock-end (\d+) (\d+) (-?\d+)\x1e")
"""What the wrapper writes last on stderr: the offsets it emitted up to, and the run's exit code."""


MISSED_STAT_ATTEMPTS = 4
"""How often the size of a run's output file is asked for before the follow gives up (and is retried)."""
MAX_STREAM_CUTS = 200
"""How often a run's attached stream may end early (the wrapper still running) and be followed
again before the wrapper is treated as gone."""


def container_name(device_id: str) -> str:
    return f"agentdock-{device_id}"


def run_uid(run_id: str) -> int:
    """The run's own uid, from its id: known again after a restart of the daemon without a record.
    Two runs of one device share one only by a hash collision in RUN_UID_SPAN (about 1 in 10^9 a pair)."""
    digest = hashlib.sha256(run_id.encode()).digest()
    return RUN_UID_BASE + int.from_bytes(digest[:8], "big") % RUN_UID_SPAN


def image_ids(image_user: str) -> tuple[int, int]:
    """The uid and gid an image's USER names ('' or a name that is not a number: root's, 0)."""
    user, _, group = image_user.partition(":")
    uid = int(user) if user.isdigit() else 0
    return uid, int(group) if group.isdigit() else uid


def _run_id_of(path: str) -> str:
    """The run whose directory `path` is in (RUNS_DIR/<run_id>/...)."""
    return path.removeprefix(RUNS_DIR + "/").split("/", 1)[0]


def host_address(network: dict[str, Any]) -> str:
    """The host's address on a Docker bridge network (as `inspect_network` gives it): its IPAM gateway,
    or, where Docker did not record one (the default bridge, after dockerd restarts on an existing
    docker0), the IPv4 address of its bridge interface."""
    config = ((network.get("IPAM") or {}).get("Config") or [{}])[0]
    if config.get("Gateway"):
        return str(config["Gateway"]).split("/")[0]
    iface = (network.get("Options") or {}).get("com.docker.network.bridge.name") or (
        "docker0" if network.get("Name") == "bridge" else None)
    if iface:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:  # SIOCGIFADDR
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", iface[:15].encode()))
                return socket.inet_ntoa(packed[20:24])
            except OSError:
                pass
    raise errors.SandboxUnavailable(f"Docker network {network.get('Name')!r} shows no address of the host")


def egress_names(home: str) -> tuple[str, str]:
    """A home's internal network and its bridge interface (at most 15 characters)."""
    digest = hashlib.sha256(home.encode()).hexdigest()[:10]
    return f"agentdock-egress-{digest}", f"adgw{digest}"


class DockerBackend:
    """Implements `engine.ports.SandboxBackend` on the local Docker engine."""

    def __init__(self, home: Path, *, client: docker.DockerClient | None = None, threads: int = 16,
                 call_timeout: float = CALL_TIMEOUT_SECONDS, workspace_mb: dict[str, int] | None = None,
                 tmp_mb: dict[str, int] | None = None) -> None:
        self.home = str(home)
        self.workspace_mb = workspace_mb or {"sandbox": 1024, "computer": 8192}
        """The size of a new device's /workspace, by kind (a filesystem of its own: see `disks`)."""
        self.tmp_mb = tmp_mb or {"sandbox": 256, "computer": 1024}
        """The size of a device's /tmp, by kind (a filesystem of its own, as /workspace)."""
        self._creating: set[str] = set()
        """Devices whose workspace is made and container not yet: not orphans."""
        self._client = client
        self._calls = anyio.CapacityLimiter(threads)
        self.call_timeout = call_timeout
        self._per_device: dict[str, anyio.CapacityLimiter] = {}
        """Per container: at most DEVICE_CALLS of the calls at once, so a device that stopped answering
        holds only its own share of the threads."""
        self._streams = anyio.CapacityLimiter(1024)
        self._image_users: dict[str, str] = {}
        self._run_users: dict[str, str] = {}
        self._cgroups: dict[str, procs.Cgroup] = {}
        self._whole: set[str] = set()
        """Runs whose last follow's stream ended with the wrapper's trailer: nothing was missed."""
        self._refusals_before: dict[str, int] = {}
        """Per run: the device's count of refused forks when the run was first followed."""
        self._egress: str | None = None
        """The internal network devices without `network` join (`join_egress`); None: no network at all."""

    @property
    def api(self) -> docker.APIClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=60)
            except docker.errors.DockerException as exc:
                raise errors.SandboxUnavailable(
                    f"cannot reach the Docker engine: {exc}", suggested_command="docker info") from exc
        return self._client.api

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """One blocking Docker call on a worker thread, bounded: a call that Docker does not answer in
        `call_timeout` is abandoned (its thread ends with the HTTP timeout) and raises
        `SandboxUnavailable`, so one stuck container never holds the runs of another, or the daemon."""
        name = args[0] if args and isinstance(args[0], str) and args[0].startswith("agentdock-") else None
        limiter = self._per_device.setdefault(name, anyio.CapacityLimiter(DEVICE_CALLS)) if name else None
        call = functools.partial(_translated, fn, *args, **kw)
        try:
            with anyio.fail_after(self.call_timeout):
                if limiter is None:
                    return await anyio.to_thread.run_sync(call, limiter=self._calls, abandon_on_cancel=True)
                async with limiter:
                    return await anyio.to_thread.run_sync(call, limiter=self._calls, abandon_on_cancel=True)
        except TimeoutError:
            what = getattr(fn, "__name__", "a call")
            raise errors.SandboxUnavailable(
                f"Docker did not answer {what}{' on ' + name if name else ''} within {self.call_timeout:g} s "
                "(the engine is overloaded, or the container is stuck)", suggested_command="docker info") from None

    # ------------------------------------------------------------ devices

    def _labels(self, spec: DeviceSpec, run_user: str) -> dict[str, str]:
        labels = {
            "agentdock.device_id": spec.device_id,
            "agentdock.kind": spec.kind,
            "agentdock.home": self.home,
            "agentdock.ephemeral": "1" if spec.ephemeral else "0",
            "agentdock.run_user": run_user,
        }
        if spec.run_id:
            labels["agentdock.run_id"] = spec.run_id
        if spec.pool:
            labels["agentdock.pool"] = spec.pool
        return labels

    async def _image_user(self, image: str) -> str:
        """The user the image's USER names (runs execute as it); '' for root."""
        if image not in self._image_users:
            info = await self._call(self.api.inspect_image, image)
            self._image_users[image] = (info.get("Config") or {}).get("User") or ""
        return self._image_users[image]

    def _create(self, spec: DeviceSpec, command: list[str], env: dict[str, str], *, user: str,
                run_user: str) -> str:
        api = self.api
        # The agent socket's directory, read-only: a run calls back as its session (a token on every
        # request). Only that directory: never control.sock, never the Docker socket.
        agent_dir = Path(self.home) / "agent"
        agent_dir.mkdir(mode=0o755, exist_ok=True)
        mounts = [docker.types.Mount(posixpath.dirname(AGENT_SOCKET_IN_DEVICE), str(agent_dir), type="bind",
                                     read_only=True)]
        own = disks.DeviceDisks.of(self.home, spec.device_id)
        try:
            own.make(spec.workspace_mb or self.workspace_mb[spec.kind], spec.tmp_mb or self.tmp_mb[spec.kind],
                     *image_ids(run_user))
        except disks.DiskError as exc:
            raise errors.SandboxUnavailable(f"cannot make the device's /workspace and /tmp: {exc}") from None
        # Nothing else is writable (the image's own files are read-only), so nothing a run writes is
        # outside these sizes; /var/tmp is /tmp.
        mounts += [docker.types.Mount(path, str(disk.mount), type="bind") for path, disk in (
            ("/workspace", own.workspace), ("/tmp", own.tmp), ("/var/tmp", own.tmp), (RUNS_DIR, own.runs))]
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
                spec.image, command=command, name=container_name(spec.device_id),
                labels=self._labels(spec, run_user), environment={**spec.env, **env}, working_dir="/workspace",
                host_config=host_config, user=user,
            )
        except docker.errors.DockerException:
            own.remove()
            raise
        self._run_users[spec.device_id] = run_user
        return created["Id"]

    # ------------------------------------------------------------ the model gateway's network

    async def egress_network(self) -> tuple[str, str, str]:
        """This home's internal network (made if missing): no route out, no traffic between its
        containers, only the host's address on it, where the model gateway listens. Returns its name,
        its bridge interface on the host and that address. Devices join it only after `join_egress`."""
        name, iface = egress_names(self.home)

        def ensure() -> str:
            try:
                info = self.api.inspect_network(name)
            except docker.errors.NotFound:
                self.api.create_network(name, driver="bridge", internal=True, labels={"agentdock.home": self.home},
                                        options={"com.docker.network.bridge.enable_icc": "false",
                                                 "com.docker.network.bridge.name": iface})
                info = self.api.inspect_network(name)
            return host_address(info)

        return name, iface, await self._call(ensure)

    def join_egress(self, network: str) -> None:
        """Devices created from now on (without `network`) are on `network` instead of none."""
        self._egress = network

    async def remove_egress_network(self) -> bool:
        """Remove this home's internal network if no container is on it; says whether it is gone."""
        name, _ = egress_names(self.home)
        try:
            await self._call(self.api.remove_network, name)
        except errors.NotFound:
            pass
        except (errors.Conflict, errors.SandboxUnavailable):
            return False  # devices still on it (they outlive the daemon), or Docker is away
        return True

    async def create(self, spec: DeviceSpec) -> DeviceState:
        # The device's main process runs as a user no run shares, so a run cannot signal it (or the
        # init above it) and stop the sandbox for the runs after it.
        run_user = await self._image_user(spec.image)
        self._creating.add(spec.device_id)
        try:
            cid = await self._call(self._create, spec, KEEPALIVE, {}, user=KEEPER, run_user=run_user)
        finally:
            self._creating.discard(spec.device_id)
        try:
            await self._call(self.api.start, cid)
            # Up means a shell answers in it (runs are started with one): a container whose main
            # process fails right after start may still look running for a moment.
            answered = await self._answers(container_name(spec.device_id))
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
        return _state(cid, info["Config"]["Labels"] or {}, True)

    async def start(self, device_id: str) -> DeviceState:
        state = await self.inspect(device_id)
        if state is not None and state.paused:
            await self._call(self.api.unpause, container_name(device_id))
        else:
            await anyio.to_thread.run_sync(self._remount, device_id)
            await self._call(self.api.start, container_name(device_id))
        state = await self.inspect(device_id)
        if state is None or not state.running:
            raise errors.SandboxUnavailable(f"{device_id} did not stay up after a restart",
                                            suggested_command=f"agentdock sandbox rm {device_id}")
        return state

    async def repair(self, device_id: str) -> str:
        """Thaw a frozen device (from the host, and through Docker if it says paused); if it still does
        not answer, end every process in it from the host and start it again: its files stay."""
        name = container_name(device_id)
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
            probe = (await self._call(self.api.exec_create, name, ["/bin/sh", "-c", ":"], user=KEEPER))["Id"]
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
        info = await self._inspect(container_name(device_id))
        if info is None:
            return None
        labels = info["Config"]["Labels"] or {}
        return _state(info["Id"], labels, info["State"]["Running"],
                      started=not info["State"].get("StartedAt", "").startswith("0001-"),
                      paused=bool(info["State"].get("Paused")))

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._call(self.api.inspect_container, name)
        except errors.NotFound:
            return None

    async def list_owned(self) -> list[DeviceState]:
        found = await self._call(self.api.containers, all=True, filters={"label": f"agentdock.home={self.home}"})
        states = [_state(c["Id"], c["Labels"] or {}, c["State"] == "running", paused=c["State"] == "paused")
                  for c in found]
        await anyio.to_thread.run_sync(self._tend_disks, {s.device_id for s in states})
        return states

    def _tend_disks(self, devices: set[str]) -> None:
        """Mount again the workspaces of these devices whose mount went (a reboot of the host), and
        remove those of devices that are gone (a crash between the two steps of a create or remove)."""
        for device_id in disks.owned(self.home):
            own = disks.DeviceDisks.of(self.home, device_id)
            try:
                if device_id in devices:
                    own.ensure_mounted()
                elif device_id not in self._creating:
                    log.warning("removing the filesystems of %s, whose container is gone", device_id)
                    own.remove()
            except disks.DiskError as exc:  # said here; a run in it fails with it when the device starts
                log.warning("the filesystems of %s: %s", device_id, exc)

    def _remount(self, device_id: str) -> None:
        try:
            disks.DeviceDisks.of(self.home, device_id).ensure_mounted()
        except disks.DiskError as exc:
            raise errors.SandboxUnavailable(f"cannot mount the /workspace of {device_id}: {exc}") from None

    async def remove(self, device_id: str) -> None:
        name = container_name(device_id)
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
            info = await self._inspect(container_name(device_id))
            if info is None:
                raise errors.SandboxUnavailable(f"the container of {device_id} is gone")
            labels = info["Config"]["Labels"] or {}
            self._run_users[device_id] = labels.get("agentdock.run_user", info["Config"].get("User") or "")
        return f"{run_uid(run_id)}:{image_ids(self._run_users[device_id])[1]}"

    # ------------------------------------------------------------ runs

    def _wrapper_env(self, launch: RunLaunch, stdout_offset: int, stderr_offset: int) -> dict[str, str]:
        """The exec's environment. Secrets go only here, in an exec's environment, never into a
        container's configuration (which `docker inspect` shows): see `_follow_ephemeral_exec`."""
        run_dir = f"{RUNS_DIR}/{launch.run_id}"
        return {
            # A HOME of its own, in its directory (removed with it): a HOME shared with the runs beside
            # it would let one plant a ~/.bashrc or ~/.gitconfig that runs as the next. No passwd entry
            # names its uid: these say who it is to the tools that ask.
            "HOME": f"{run_dir}/home", "USER": "agent", "LOGNAME": "agent",
            **launch.env,
            **launch.secret_env,
            "AGENTDOCK_RUN_ID": launch.run_id,
            "AGENTDOCK_RUN_DIR": run_dir,
            "AGENTDOCK_CWD": launch.cwd,
            "AGENTDOCK_PROMPT": launch.prompt,
            "AGENTDOCK_REQUIRE": launch.require or "",
            "AGENTDOCK_STDOUT_OFFSET": str(stdout_offset),
            "AGENTDOCK_STDERR_OFFSET": str(stderr_offset),
            "AGENTDOCK_STDOUT_CAP": str(launch.stdout_cap),
            "AGENTDOCK_STDERR_CAP": str(launch.stderr_cap),
            "AGENTDOCK_ARTIFACTS": "\n".join(launch.artifact_paths),
            "AGENTDOCK_ARTIFACT_MAX": str(launch.artifact_max_bytes),
        }

    async def follow(self, launch: RunLaunch) -> AsyncIterator[Chunk | Exit]:
        if launch.ephemeral is None:
            async for item in self._follow_exec_whole(launch):
                yield item
            return
        if launch.ephemeral.pool is not None:
            async for item in self._follow_pooled(launch, launch.ephemeral):
                yield item
            return
        if launch.secret_env or await self._keeps_alive(launch.device_id):
            async for item in self._follow_ephemeral_exec(launch, launch.ephemeral):
                yield item
            return
        state = await self.inspect(launch.device_id)
        if state is not None and not state.started:
            # Created but never started (the daemon died in between): nothing ran, so start afresh.
            await self.remove(launch.device_id)
            state = None
        if state is None:
            async for item in self._run_ephemeral(launch, launch.ephemeral):
                yield item
            return
        name = container_name(launch.device_id)
        if state.running:
            # Re-attaching to an ephemeral run after a restart: its main process is the first wrapper,
            # which stops the container when the run ends; wait for that, then read the files.
            await anyio.to_thread.run_sync(functools.partial(_translated, self.api.wait, name),
                                           limiter=self._streams, abandon_on_cancel=True)
        async for item in self._settle_from_files(launch, launch.stdout_offset, launch.stderr_offset,
                                                  Ending.lost):
            yield item

    async def _follow_exec_whole(self, launch: RunLaunch) -> AsyncIterator[Chunk | Exit]:
        """`_follow_exec`, then what its stream missed, read from the run's files, before the end."""
        offsets = {"stdout": launch.stdout_offset, "stderr": launch.stderr_offset}
        async for item in self._follow_exec(launch):
            if isinstance(item, Exit):
                if launch.run_id not in self._whole:
                    async for chunk in self._missed(container_name(launch.device_id), launch.run_id, offsets):
                        yield chunk
                self._whole.discard(launch.run_id)
                yield item
                return
            offsets[item.stream] += len(item.data)
            yield item

    async def _keeps_alive(self, device_id: str) -> bool:
        """Whether an ephemeral run's container was made a device (its main process the keepalive)."""
        info = await self._inspect(container_name(device_id))
        return info is not None and (info.get("Config") or {}).get("Cmd") == KEEPALIVE

    async def _follow_ephemeral_exec(self, launch: RunLaunch, spec: DeviceSpec) -> AsyncIterator[Chunk | Exit]:
        """An ephemeral run given secrets: its container is made like any device (the keepalive its main
        process, nothing of the run in its configuration) and the run exec'd in it, so the secrets are
        in the exec's environment only."""
        state = await self.inspect(launch.device_id)
        if state is not None and not state.started:
            await self.remove(launch.device_id)
            state = None
        if state is None:
            await self.create(spec)
        elif not state.running:
            async for item in self._settle_from_files(launch, launch.stdout_offset, launch.stderr_offset,
                                                      Ending.sandbox_lost):
                yield item
            return
        async for item in self._follow_exec_whole(launch):
            yield item

    async def _follow_pooled(self, launch: RunLaunch, spec: DeviceSpec) -> AsyncIterator[Chunk | Exit]:
        """A run in a pooled device (started ahead, the keepalive its main process): followed like a run
        in any running device. One found stopped before the run began in it (a Docker restart stops
        every container) is replaced by a fresh one, so the run still starts once."""
        # Its cgroup, found (and kept for the exec) only while it runs, saves an inspect on the way in.
        up = await self._cgroup(container_name(launch.device_id)) is not None
        state = None if up else await self.inspect(launch.device_id)
        if up or (state is not None and state.running):
            async for item in self._follow_exec_whole(launch):
                yield item
            return
        if state is not None and launch.stdout_offset == launch.stderr_offset == 0 and await self._call(
                self._file_size, container_name(launch.device_id), f"{RUNS_DIR}/{launch.run_id}") is None:
            await self.remove(launch.device_id)
        async for item in self._follow_ephemeral_exec(launch, spec):
            yield item

    async def _run_ephemeral(self, launch: RunLaunch, spec: DeviceSpec) -> AsyncIterator[Chunk | Exit]:
        """The run is the container's main process: attach before start so nothing is missed."""
        name = container_name(spec.device_id)
        run_user = await self._image_user(spec.image)
        await self._call(self._create, spec, _wrapper_command(launch), self._wrapper_env(launch, 0, 0),
                         user=f"{run_uid(launch.run_id)}:{image_ids(run_user)[1]}", run_user=run_user)
        sock = await self._call(self.api.attach_socket, name, params={"stdout": 1, "stderr": 1, "stream": 1})
        tail = b""
        seen = {"stdout": 0, "stderr": 0}
        trailer = Trailer()
        try:
            await self._call(self.api.start, name)
            async for chunk in self._frames(sock):
                for piece in trailer.take(chunk):
                    if piece.stream == "stderr":
                        tail = (tail + piece.data)[-512:]
                    seen[piece.stream] += len(piece.data)
                    yield piece
            for piece in trailer.end():
                tail = (tail + piece.data)[-512:]
                seen["stderr"] += len(piece.data)
                yield piece
        finally:
            sock.close()
        result = await self._call(self.api.wait, name, timeout=30)
        # Docker's log of the container has everything the wrapper printed: pass on what the
        # attached stream missed (a busy engine can drop a fast run's output from the attach).
        for stream, flags in (("stdout", {"stdout": True, "stderr": False}),
                              ("stderr", {"stdout": False, "stderr": True})):
            logged = await self._call(self.api.logs, name, **flags)
            if stream == "stderr" and (last := logged.rfind(TRAILER_MARK)) >= 0 and TRAILER.fullmatch(logged[last:]):
                logged = logged[:last]  # the wrapper's trailer is not the run's output
            if len(logged) > seen[stream]:
                missed = logged[seen[stream]:]
                if stream == "stderr":
                    tail = (tail + missed)[-512:]
                yield Chunk(stream=stream, data=missed)  # type: ignore[arg-type]
        ending = await self._recorded_end(name, launch.run_id, result["StatusCode"])
        if ending is None:
            # The wrapper, the container's main process, died before the run recorded its end; the
            # container and every process in it went with it. Its last words say whether it could fork.
            forked_out = any(m in tail for m in FORK_FAILED)
            ending = Exit(exit_code=None, ending=Ending.pids_exhausted if forked_out else Ending.lost)
        yield ending

    async def _follow_exec(self, launch: RunLaunch) -> AsyncIterator[Chunk | Exit]:
        """Follow a run in a long-lived device with the wrapper exec'd as the run's user. A wrapper
        that dies before the run ends (killed by the run, or unable to fork at the pids limit) is
        replaced, resuming from the bytes already passed on; at the pids limit the run is killed."""
        name = container_name(launch.device_id)
        offsets = {"stdout": launch.stdout_offset, "stderr": launch.stderr_offset}
        if launch.run_id not in self._refusals_before and launch.stdout_offset == launch.stderr_offset == 0:
            cgroup = await self._cgroup(name)
            if cgroup is not None:
                self._refusals_before[launch.run_id] = cgroup.fork_refusals()
        failures = cuts = 0
        while failures < 3:
            env = self._wrapper_env(launch, offsets["stdout"], offsets["stderr"])
            cgroup = await self._cgroup(name)
            run_cgroup = cgroup.run(launch.run_id) if cgroup is not None else None
            if run_cgroup is not None:
                env["AGENTDOCK_CGROUP"] = procs.run_cgroup_name(launch.run_id)
            try:
                user = await self._run_user(launch.device_id, launch.run_id)
                exec_id = (await self._call(self.api.exec_create, name, _wrapper_command(launch),
                                            environment=env, user=user))["Id"]
            except (errors.NotFound, errors.Conflict, errors.SandboxUnavailable):
                state = await self.inspect(launch.device_id)
                if state is None or not state.running:
                    async for item in self._settle_from_files(launch, offsets["stdout"], offsets["stderr"],
                                                              Ending.sandbox_lost):
                        yield item
                    return
                raise
            code, running = -1, False
            try:
                sock = await self._call(self.api.exec_start, exec_id, socket=True)
                try:
                    if run_cgroup is not None:
                        assert cgroup is not None
                        await anyio.to_thread.run_sync(procs.adopt_wrapper, cgroup, run_cgroup, launch.run_id,
                                                       ADOPT_SECONDS, limiter=self._streams)
                    trailer = Trailer()
                    async for chunk in self._frames(sock):
                        for piece in trailer.take(chunk):
                            offsets[piece.stream] += len(piece.data)
                            yield piece
                    for piece in trailer.end():
                        offsets[piece.stream] += len(piece.data)
                        yield piece
                finally:
                    sock.close()
                if trailer.says(offsets) is not None:  # the whole stream came, with the exit code
                    code = trailer.says(offsets)  # type: ignore[assignment]
                    self._whole.add(launch.run_id)
                else:
                    info = await self._call(self.api.exec_inspect, exec_id)
                    code = info["ExitCode"] if info["ExitCode"] is not None else -1
                    running = bool(info.get("Running"))
            except errors.SandboxUnavailable:
                pass  # the exec could not start (at the pids limit, say): look closer below
            if running and cuts < MAX_STREAM_CUTS:
                # The stream ended while the wrapper still runs: a loaded Docker engine cut it. The
                # run's end, if recorded, is in its files; else follow again, a little later, from the
                # bytes already passed on (that wrapper goes on alone).
                ending = await self._recorded_end(name, launch.run_id, -1)
                if ending is not None:
                    yield ending
                    return
                cuts += 1
                await anyio.sleep(min(0.05 * cuts, 1.0))
                continue
            ending = await self._recorded_end(name, launch.run_id, code)
            if ending is not None:
                yield ending
                return
            if not await self._up(name):
                async for item in self._settle_from_files(launch, offsets["stdout"], offsets["stderr"],
                                                          Ending.sandbox_lost):
                    yield item
                return
            cgroup = await self._cgroup(name)
            if cgroup is not None and await anyio.to_thread.run_sync(cgroup.exhausted):
                await self._end_run(name, launch.run_id)
                yield Exit(exit_code=None, ending=Ending.pids_exhausted)
                return
            if code == 255 or (cgroup is not None and not await anyio.to_thread.run_sync(
                    functools.partial(procs.run_processes, cgroup, launch.run_id))):
                # the wrapper saw the process vanish without an exit code (255), or nothing of it is left
                yield await self._recorded_end(name, launch.run_id, -1) or Exit(exit_code=None, ending=Ending.lost)
                return
            failures += 1
        yield Exit(exit_code=None, ending=Ending.lost)

    async def _missed(self, name: str, run_id: str, offsets: dict[str, int]) -> AsyncIterator[Chunk]:
        """What the attached stream lost: a loaded Docker engine can end an exec's stream before the
        last of its output (seen under a load of 16 on two cores: a run 'succeeded' printing
        nothing). The run's files are the record; their sizes, from two stat requests, say whether
        anything is missing, and only then is the file read. A stat that fails is not taken for
        "nothing missed": it is asked again, and if Docker still cannot say, the follow fails
        (`SandboxUnavailable`) and the supervisor follows the run again from what it holds."""
        run_dir = f"{RUNS_DIR}/{run_id}"
        sizes: dict[str, int | None] = {}

        async def stat(stream: str) -> None:
            for attempt in range(MISSED_STAT_ATTEMPTS):
                try:
                    sizes[stream] = await self._call(self._file_size, name, f"{run_dir}/{stream}")
                    return
                except errors.SandboxUnavailable:
                    if attempt == MISSED_STAT_ATTEMPTS - 1:
                        raise
                    await anyio.sleep(0.1 * (attempt + 1))

        try:
            async with anyio.create_task_group() as tg:
                for stream in ("stdout", "stderr"):
                    tg.start_soon(stat, stream)
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
        for stream in ("stdout", "stderr"):
            size = sizes[stream]
            if size is not None and size > offsets[stream]:
                log.warning("run %s: %d bytes of %s missed by the attached stream, read from its file",
                            run_id, size - offsets[stream], stream)
                data = (await self._call(self._read_files, name, run_dir, (stream,))).get(stream, b"")
                if len(data) > offsets[stream]:
                    yield Chunk(stream=stream, data=data[offsets[stream]:])  # type: ignore[arg-type]
                    offsets[stream] = len(data)

    def _file_size(self, name: str, path: str) -> int | None:
        """A file's size in the container, from a HEAD request (no archive is made); None: no such
        file. Any other answer is Docker failing to say, and raises."""
        res = self.api.head(self.api._url("/containers/{0}/archive", name), params={"path": path})
        if res.status_code == 404:  # no such file (or no such container, and its files with it)
            return None
        if res.status_code != 200:
            raise errors.SandboxUnavailable(f"Docker could not stat {path} in {name} (HTTP {res.status_code})")
        stat = res.headers.get("x-docker-container-path-stat")
        return int(docker.utils.decode_json_header(stat).get("size", 0)) if stat else None

    async def _recorded_end(self, name: str, run_id: str, wrapper_code: int) -> Exit | None:
        """The run's end as its launcher recorded it, or None if it recorded none (yet). A wrapper
        exit of 0 is the run's own 0; anything else is checked against the files, without a process."""
        if wrapper_code == 0:
            return Exit(exit_code=0)
        files = await self._call(self._read_files, name, f"{RUNS_DIR}/{run_id}", ("exit", "missing"))
        exit_text = files.get("exit", b"").strip()
        if not exit_text.lstrip(b"-").isdigit():
            return None
        ending = Ending.runtime_not_found if "missing" in files else Ending.exited
        return Exit(exit_code=int(exit_text), ending=ending)

    async def _settle_from_files(self, launch: RunLaunch, stdout_offset: int, stderr_offset: int,
                                 otherwise: Ending) -> AsyncIterator[Chunk | Exit]:
        """A run whose container stopped: pass on the output not yet seen, and its end if recorded."""
        name = container_name(launch.device_id)
        run_dir = f"{RUNS_DIR}/{launch.run_id}"
        try:
            files = await self._call(self._read_files, name, run_dir, ("stdout", "stderr", "exit"))
            if files.get("exit", b"").strip() == b"127":
                files.update(await self._call(self._read_files, name, run_dir, ("missing",)))
        except (errors.NotFound, errors.SandboxUnavailable):
            files = {}  # the container is gone with them
        for stream, offset in (("stdout", stdout_offset), ("stderr", stderr_offset)):
            data = files.get(stream, b"")
            if len(data) > offset:
                yield Chunk(stream=stream, data=data[offset:])  # type: ignore[arg-type]
        exit_text = files.get("exit", b"").strip()
        if exit_text.lstrip(b"-").isdigit():
            yield Exit(exit_code=int(exit_text),
                       ending=Ending.runtime_not_found if "missing" in files else Ending.exited)
        else:
            yield Exit(exit_code=None, ending=otherwise)

    async def _frames(self, sock: Any) -> AsyncIterator[Chunk]:
        frames = frames_iter(sock, tty=False)
        while True:
            frame = await anyio.to_thread.run_sync(next, frames, None, limiter=self._streams, abandon_on_cancel=True)
            if frame is None:
                return
            stream, data = frame
            if data and stream in STREAM_IDS:
                yield Chunk(stream=STREAM_IDS[stream], data=data)  # type: ignore[arg-type]

    # ------------------------------------------------------------ signals, from inside or from the host

    async def signal(self, device_id: str, run_id: str, signal_: Literal["TERM", "KILL"]) -> None:
        """Signal the command's process group from inside; if that is impossible (no room for a
        process at the pids limit), or for KILL, also every process of the command from the host."""
        name = container_name(device_id)
        sent = await self._exec_signal(device_id, run_id, signal_)
        if signal_ == "KILL" or not sent:
            cgroup = await self._cgroup(name)
            if cgroup is None:
                return
            if signal_ == "KILL" and await anyio.to_thread.run_sync(cgroup.exhausted):
                await self._end_run(name, run_id)  # at the pids limit: everything of it, at once
            elif signal_ == "KILL":  # the wrapper and launcher stay to record the exit code
                await anyio.to_thread.run_sync(functools.partial(procs.stop_and_kill, cgroup, run_id,
                                                                 machinery=False), limiter=self._streams)
            else:
                procs.send(await anyio.to_thread.run_sync(functools.partial(
                    procs.run_processes, cgroup, run_id, machinery=False)), signal.SIGTERM)

    async def _exec_signal(self, device_id: str, run_id: str, signal_: str) -> bool:
        script = 'p=$(cat "$1/pid" 2>/dev/null) && [ -n "$p" ] && kill -' + signal_ + ' -"$p" 2>/dev/null; true'
        try:
            exec_id = (await self._call(self.api.exec_create, container_name(device_id),
                                        ["sh", "-c", script, "agentdock-signal", f"{RUNS_DIR}/{run_id}"],
                                        user=await self._run_user(device_id, run_id)))["Id"]
            await self._call(self.api.exec_start, exec_id)
            return (await self._call(self.api.exec_inspect, exec_id))["ExitCode"] == 0
        except (errors.NotFound, errors.Conflict, errors.SandboxUnavailable):
            return False  # gone, stopped, or no room for one more process

    async def sweep(self, device_id: str, run_id: str) -> Swept:
        name = container_name(device_id)
        cgroup = await self._cgroup(name)
        if cgroup is None:  # the host cannot see the container's processes: do what can be done inside
            await self._exec_signal(device_id, run_id, "KILL")
            return Swept()
        find = functools.partial(procs.run_processes, cgroup, run_id)
        before = self._refusals_before.pop(run_id, None)
        own = cgroup.run(run_id)
        usage = await anyio.to_thread.run_sync(own.usage) if own is not None else procs.Usage()
        if usage.forks_refused is not None:  # the run's own count
            exhausted = usage.forks_refused > 0
        elif before is not None:  # did the device refuse a fork while the run ran?
            exhausted = cgroup.fork_refusals() > before
        else:  # followed since a restart: is it at the limit now, with the run's processes in it?
            exhausted = await anyio.to_thread.run_sync(cgroup.exhausted) and bool(await anyio.to_thread.run_sync(find))
        killed, _ = await self._end_run(name, run_id)
        return Swept(killed=killed, pids_exhausted=exhausted, pids_peak=usage.pids_peak,
                     memory_peak_bytes=usage.memory_peak_bytes, disk_full=await self.disk_full(device_id))

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

    async def _end_run(self, name: str, run_id: str) -> tuple[int, procs.Usage]:
        """Kill every process of the run from the host, never freezing the device: its own cgroups at
        once (`cgroup.kill`), then any process of it found outside them (stopped, then killed)."""
        cgroup = await self._cgroup(name)
        if cgroup is None:
            return 0, procs.Usage()

        def end() -> tuple[int, procs.Usage]:
            own = cgroup.run(run_id)
            usage = own.usage() if own is not None else procs.Usage()
            killed = own.kill() if own is not None else 0
            return killed + procs.stop_and_kill(cgroup, run_id), usage

        return await anyio.to_thread.run_sync(end, limiter=self._streams)

    async def remove_run_files(self, device_id: str, run_id: str) -> None:
        """Removed by the run's own user: no other may enter its directory (and root in a device, with
        every capability dropped, may not either)."""
        try:
            exec_id = (await self._call(self.api.exec_create, container_name(device_id),
                                        ["rm", "-rf", f"{RUNS_DIR}/{run_id}"],
                                        user=await self._run_user(device_id, run_id)))["Id"]
            await self._call(self.api.exec_start, exec_id)
        except errors.NotFound:
            pass  # the device is gone, and the files with it
        except (errors.Conflict, errors.SandboxUnavailable) as exc:
            log.warning("could not remove the files of %s in %s: %s", run_id, device_id, exc.message)

    # ------------------------------------------------------------ files

    def _read_files(self, name: str, path: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
        """Read the regular files named `wanted` in the run directory `path`. Only files owned by
        the run's own uid are read: the run could have swapped any of them for a link elsewhere."""
        out: dict[str, bytes] = {}
        for file in wanted:
            try:
                out[file] = self._read_file(name, f"{path}/{file}", limit=None)
            except (errors.NotFound, errors.PermissionDenied, errors.InvalidInput):
                pass
        return out

    def _read_file(self, name: str, path: str, limit: int | None) -> bytes:
        try:
            stream, stat = self.api.get_archive(name, path)
        except docker.errors.NotFound:
            raise errors.NotFound("file", path) from None
        if limit is not None and stat.get("size", 0) > limit:
            raise errors.LimitExceeded(f"{path} is {stat['size']} bytes; the limit is {limit}")
        buf = io.BytesIO()
        for part in stream:
            buf.write(part)
            if limit is not None and buf.tell() > limit + 1_048_576:
                raise errors.LimitExceeded(f"{path} is larger than the {limit}-byte limit")
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise errors.InvalidInput("path", f"{path} is not a regular file")
            if member.uid != run_uid(_run_id_of(path)):
                raise errors.PermissionDenied(f"{path} is not the run's own file")
            f = tar.extractfile(member)
            assert f is not None
            return f.read()

    async def artifact(self, device_id: str, run_id: str, index: int, path: str, max_bytes: int) -> bytes:
        name = container_name(device_id)
        base = f"{RUNS_DIR}/{run_id}/artifacts/{index}"
        try:
            data = await self._call(self._read_file, name, base, max_bytes)
        except errors.NotFound:
            reason = (await self._call(self._read_files, name, f"{RUNS_DIR}/{run_id}/artifacts",
                                       (f"{index}.err",))).get(f"{index}.err", b"").strip().decode(errors="replace")
            if reason == "unreadable":
                raise errors.PermissionDenied(
                    f"{path} is not readable by the run's user; only what the run itself can read is exported",
                    evidence={"field": "artifact_paths", "path": path}) from None
            if reason == "not_a_file":
                raise errors.InvalidInput("artifact_paths", f"{path} is not a regular file") from None
            raise errors.NotFound("artifact", path, evidence={"field": "artifact_paths"}) from None
        if len(data) > max_bytes:
            raise errors.LimitExceeded(f"{path} is larger than the {max_bytes}-byte artifact limit",
                                       evidence={"field": "artifact_paths", "path": path, "limit": max_bytes})
        return data


class Trailer:
    """Holds back what may be the start of the wrapper's trailer at the end of stderr, and reads it
    once the stream ends. The run cannot pass off its own text as the trailer: the wrapper writes the
    real one after all the run's output, and only the stream's very last bytes are taken for it."""

    def __init__(self) -> None:
        self.held = b""
        self.found: tuple[int, int, int] | None = None

    def take(self, chunk: Chunk) -> list[Chunk]:
        if chunk.stream != "stderr":
            return [chunk]
        data = self.held + chunk.data
        cut = data.rfind(TRAILER_MARK)
        if cut < 0 or len(data) - cut > 64:
            cut = len(data)
            for n in range(min(len(TRAILER_MARK) - 1, len(data)), 0, -1):  # a mark split across chunks
                if data.endswith(TRAILER_MARK[:n]):
                    cut = len(data) - n
                    break
        self.held = data[cut:]
        return [Chunk(stream="stderr", data=data[:cut])] if cut else []

    def end(self) -> list[Chunk]:
        match = TRAILER.fullmatch(self.held)
        if match is not None:
            self.found = (int(match[1]), int(match[2]), int(match[3]))
            self.held = b""
            return []
        held, self.held = self.held, b""
        return [Chunk(stream="stderr", data=held)] if held else []

    def says(self, offsets: dict[str, int]) -> int | None:
        """The run's exit code, when the trailer came and its offsets are what arrived."""
        if self.found is None or (self.found[0], self.found[1]) != (offsets["stdout"], offsets["stderr"]):
            return None
        return self.found[2]


def _wrapper_command(launch: RunLaunch) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, "agentdock-run", *launch.argv]


def _state(cid: str, labels: dict[str, str], running: bool, *, started: bool = True,
           paused: bool = False) -> DeviceState:
    return DeviceState(
        device_id=labels.get("agentdock.device_id", ""), container_id=cid, kind=labels.get("agentdock.kind", ""),
        running=running, ephemeral=labels.get("agentdock.ephemeral") == "1",
        run_id=labels.get("agentdock.run_id"), labels=labels, started=started, paused=paused,
        pool=labels.get("agentdock.pool"),
    )


def _translated(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Call docker-py and translate its errors into the engine's, once, here."""
    try:
        return fn(*args, **kw)
    except docker.errors.ImageNotFound as exc:
        raise errors.InvalidInput(
            "image", f"image not found ({exc.explanation}); build the agentdock images or name a local image",
            suggested_command="agentdock image build") from exc
    except docker.errors.NotFound as exc:
        raise errors.NotFound("container", str(exc.explanation or exc)) from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise errors.Conflict(f"Docker refused: {exc.explanation}") from exc
        raise errors.SandboxUnavailable(f"Docker error: {exc.explanation or exc}", suggested_command="docker info") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise errors.SandboxUnavailable(f"cannot reach the Docker engine: {exc}", suggested_command="docker info") from exc
