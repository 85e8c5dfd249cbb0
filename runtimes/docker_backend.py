"""The Docker sandbox backend: labelled containers with the security defaults, runs followed by a wrapper.

docker-py is blocking, so every call goes through `anyio.to_thread.run_sync` under a bounded
limiter; streams get their own limiter because a follower holds a thread for a run's lifetime.
Docker's errors are translated here, once, into the engine's.
"""

from __future__ import annotations

import functools
import io
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
from engine.ports import Chunk, DeviceSpec, DeviceState, Exit, RunFiles, RunLaunch

T = TypeVar("T")
RUNS_DIR = "/tmp/.agentdock/runs"
WRAPPER = resources.files("runtimes").joinpath("wrapper.sh").read_text()
# The main process of a long-lived device: wait for TERM, do nothing else.
KEEPALIVE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
STREAM_IDS = {1: "stdout", 2: "stderr"}


def container_name(device_id: str) -> str:
    return f"agentdock-{device_id}"


class DockerBackend:
    """Implements `engine.ports.SandboxBackend` on the local Docker engine."""

    def __init__(self, home: Path, *, client: docker.DockerClient | None = None, threads: int = 16) -> None:
        self.home = str(home)
        self._client = client
        self._calls = anyio.CapacityLimiter(threads)
        self._streams = anyio.CapacityLimiter(1024)

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
        return await anyio.to_thread.run_sync(functools.partial(_translated, fn, *args, **kw), limiter=self._calls)

    # ------------------------------------------------------------ devices

    def _labels(self, spec: DeviceSpec) -> dict[str, str]:
        labels = {
            "agentdock.device_id": spec.device_id,
            "agentdock.kind": spec.kind,
            "agentdock.home": self.home,
            "agentdock.ephemeral": "1" if spec.ephemeral else "0",
        }
        if spec.run_id:
            labels["agentdock.run_id"] = spec.run_id
        return labels

    def _create(self, spec: DeviceSpec, command: list[str], env: dict[str, str]) -> str:
        api = self.api
        mounts = []
        if spec.kind == "computer":
            volume = f"{container_name(spec.device_id)}-home"
            api.create_volume(volume, labels={"agentdock.home": self.home, "agentdock.device_id": spec.device_id})
            mounts.append(docker.types.Mount("/workspace", volume, type="volume"))
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=spec.pids_limit,
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",
            nano_cpus=int(spec.cpus * 1e9),
            network_mode="bridge" if spec.network else "none",
            init=True,
            mounts=mounts,
            log_config=docker.types.LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"}),
        )
        try:
            created = api.create_container(
                spec.image, command=command, name=container_name(spec.device_id), labels=self._labels(spec),
                environment={**spec.env, **env}, working_dir="/workspace", host_config=host_config,
            )
        except docker.errors.DockerException:
            for m in mounts:
                api.remove_volume(m["Source"], force=True)
            raise
        return created["Id"]

    async def create(self, spec: DeviceSpec) -> DeviceState:
        cid = await self._call(self._create, spec, KEEPALIVE, {})
        try:
            await self._call(self.api.start, cid)
        except errors.EngineError:
            await self.remove(spec.device_id)
            raise
        state = await self.inspect(spec.device_id)
        assert state is not None
        return state

    async def image_exists(self, image: str) -> bool:
        try:
            await self._call(self.api.inspect_image, image)
            return True
        except errors.NotFound:
            return False

    async def inspect(self, device_id: str) -> DeviceState | None:
        try:
            info = await self._call(self.api.inspect_container, container_name(device_id))
        except errors.NotFound:
            return None
        return _state(info["Id"], info["Config"]["Labels"] or {}, info["State"]["Running"])

    async def list_owned(self) -> list[DeviceState]:
        found = await self._call(self.api.containers, all=True, filters={"label": f"agentdock.home={self.home}"})
        return [_state(c["Id"], c["Labels"] or {}, c["State"] == "running") for c in found]

    async def remove(self, device_id: str) -> None:
        name = container_name(device_id)
        try:
            await self._call(self.api.remove_container, name, force=True, v=True)
        except errors.NotFound:
            pass
        try:
            await self._call(self.api.remove_volume, f"{name}-home", force=True)
        except errors.NotFound:
            pass

    # ------------------------------------------------------------ runs

    def _wrapper_env(self, launch: RunLaunch) -> dict[str, str]:
        return {
            **launch.env,
            "AGENTDOCK_RUN_ID": launch.run_id,
            "AGENTDOCK_RUN_DIR": f"{RUNS_DIR}/{launch.run_id}",
            "AGENTDOCK_CWD": launch.cwd,
            "AGENTDOCK_PROMPT": launch.prompt,
            "AGENTDOCK_REQUIRE": launch.require or "",
            "AGENTDOCK_STDOUT_OFFSET": str(launch.stdout_offset),
            "AGENTDOCK_STDERR_OFFSET": str(launch.stderr_offset),
        }

    async def follow(self, launch: RunLaunch) -> AsyncIterator[Chunk | Exit]:
        command = ["sh", "-c", WRAPPER, "agentdock-run", *launch.argv]
        env = self._wrapper_env(launch)
        name = container_name(launch.device_id)
        if launch.ephemeral is None:
            # The common case, a running device: exec straight away; look closer only if refused.
            try:
                exec_id = (await self._call(self.api.exec_create, name, command, environment=env))["Id"]
            except (errors.NotFound, errors.Conflict):
                pass
            else:
                async for item in self._exec(exec_id):
                    yield item
                return
        state = await self.inspect(launch.device_id)
        if state is None and launch.ephemeral is not None:
            # The run is the container's main process: attach before start so nothing is missed.
            await self._call(self._create, launch.ephemeral, command, env)
            sock = await self._call(self.api.attach_socket, name, params={"stdout": 1, "stderr": 1, "stream": 1})
            try:
                await self._call(self.api.start, name)
                async for chunk in self._frames(sock):
                    yield chunk
            finally:
                sock.close()
            result = await self._call(self.api.wait, name, timeout=30)
            yield Exit(exit_code=result["StatusCode"])
            return
        if state is None:
            raise errors.SandboxUnavailable(f"the container of {launch.device_id} is gone")
        if state.running and state.ephemeral:
            # Re-attaching to an ephemeral run after a restart: its main process is the first wrapper,
            # which stops the container when the run ends; wait for that, then read the files.
            await anyio.to_thread.run_sync(functools.partial(_translated, self.api.wait, name),
                                           limiter=self._streams, abandon_on_cancel=True)
            state = state.model_copy(update={"running": False})
        if not state.running:
            yield_from = await self.collect(launch.device_id, launch.run_id)
            if yield_from is None or yield_from.exit_code is None:
                yield Exit(exit_code=-1, lost=True)
                return
            if len(yield_from.stdout) > launch.stdout_offset:
                yield Chunk(stream="stdout", data=yield_from.stdout[launch.stdout_offset:])
            if len(yield_from.stderr) > launch.stderr_offset:
                yield Chunk(stream="stderr", data=yield_from.stderr[launch.stderr_offset:])
            yield Exit(exit_code=yield_from.exit_code)
            return
        exec_id = (await self._call(self.api.exec_create, name, command, environment=env))["Id"]
        async for item in self._exec(exec_id):
            yield item

    async def _exec(self, exec_id: str) -> AsyncIterator[Chunk | Exit]:
        sock = await self._call(self.api.exec_start, exec_id, socket=True)
        try:
            async for chunk in self._frames(sock):
                yield chunk
        finally:
            sock.close()
        info = await self._call(self.api.exec_inspect, exec_id)
        yield Exit(exit_code=info["ExitCode"] if info["ExitCode"] is not None else -1)

    async def _frames(self, sock: Any) -> AsyncIterator[Chunk]:
        frames = frames_iter(sock, tty=False)
        while True:
            frame = await anyio.to_thread.run_sync(next, frames, None, limiter=self._streams, abandon_on_cancel=True)
            if frame is None:
                return
            stream, data = frame
            if data and stream in STREAM_IDS:
                yield Chunk(stream=STREAM_IDS[stream], data=data)  # type: ignore[arg-type]

    async def signal(self, device_id: str, run_id: str, signal: Literal["TERM", "KILL"]) -> None:
        script = 'p=$(cat "$1/pid" 2>/dev/null) && [ -n "$p" ] && kill -' + signal + ' -"$p" 2>/dev/null; true'
        try:
            exec_id = (await self._call(self.api.exec_create, container_name(device_id),
                                        ["sh", "-c", script, "agentdock-signal", f"{RUNS_DIR}/{run_id}"]))["Id"]
            await self._call(self.api.exec_start, exec_id)
        except (errors.NotFound, errors.Conflict, errors.SandboxUnavailable):
            pass  # the container is gone or stopped: nothing left to signal

    async def collect(self, device_id: str, run_id: str) -> RunFiles | None:
        try:
            files = await self._call(self._read_dir, container_name(device_id), f"{RUNS_DIR}/{run_id}")
        except errors.NotFound:
            return None
        exit_text = files.get("exit", b"").strip()
        return RunFiles(stdout=files.get("stdout", b""), stderr=files.get("stderr", b""),
                        exit_code=int(exit_text) if exit_text.lstrip(b"-").isdigit() else None)

    def _read_dir(self, name: str, path: str) -> dict[str, bytes]:
        stream, _ = self.api.get_archive(name, path)
        out = {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            for member in tar.getmembers():
                f = tar.extractfile(member) if member.isfile() else None
                if f is not None:
                    out[member.name.rsplit("/", 1)[-1]] = f.read()
        return out

    async def copy_out(self, device_id: str, path: str, max_bytes: int) -> bytes:
        return await self._call(self._copy_out, container_name(device_id), path, max_bytes)

    def _copy_out(self, name: str, path: str, max_bytes: int) -> bytes:
        try:
            stream, stat = self.api.get_archive(name, path)
        except docker.errors.NotFound:
            raise errors.NotFound("artifact", path) from None
        if stat.get("size", 0) > max_bytes:
            raise errors.LimitExceeded(f"{path} is {stat['size']} bytes; artifacts are limited to {max_bytes}")
        buf = io.BytesIO()
        for part in stream:
            buf.write(part)
            if buf.tell() > max_bytes + 1_048_576:
                raise errors.LimitExceeded(f"{path} is larger than the {max_bytes}-byte artifact limit")
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise errors.InvalidInput("artifact_paths", f"{path} is not a regular file")
            f = tar.extractfile(member)
            assert f is not None
            return f.read()


def _state(cid: str, labels: dict[str, str], running: bool) -> DeviceState:
    return DeviceState(
        device_id=labels.get("agentdock.device_id", ""), container_id=cid, kind=labels.get("agentdock.kind", ""),
        running=running, ephemeral=labels.get("agentdock.ephemeral") == "1",
        run_id=labels.get("agentdock.run_id"), labels=labels,
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
