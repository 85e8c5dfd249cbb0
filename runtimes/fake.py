"""An in-memory sandbox backend for fast engine tests. It ships with the package so it stays honest.

Its "processes" outlive the service that follows them, like real ones do: a test can stop the
run service, start a new one on the same store and backend, and watch it reconcile.
A custom command is a tiny script of space-separated steps:
`out=TEXT` (stdout line), `err=TEXT` (stderr line), `write=PATH:TEXT` (a file in the device, one line),
`exit=N`, `block` (run until signalled). `$NAME` in a TEXT is the run's environment variable NAME.
tests/integration/test_backend_contract.py holds it to the Docker backend, answer by answer.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import anyio

from engine import errors
from engine.ports import (
    Chunk,
    DeviceSpec,
    DeviceState,
    Ending,
    Exit,
    RunLaunch,
    Swept,
)

RUNTIME_NOT_FOUND_EXIT = 127
VARIABLE = re.compile(r"\$(\w+)")


@dataclass
class FakeProcess:
    device_id: str = ""
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    """Its exit code once `done` (None: it ended without recording one, as `Ending.lost`)."""
    ending: Ending = Ending.exited
    done: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)
    artifact_paths: list[str] = field(default_factory=list)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    """The backend's files of every device (the artifacts are copied from its own when it exits)."""
    exported: dict[int, bytes] = field(default_factory=dict)
    """Its artifacts by index, copied when it exited by itself (as the Docker wrapper's launcher does)."""

    def finish(self, code: int | None, ending: Ending = Ending.exited) -> None:
        if not self.done:
            if ending is Ending.exited:
                self.exported = {i: self.files[(self.device_id, path)] for i, path in enumerate(self.artifact_paths)
                                 if (self.device_id, path) in self.files}
            self.exit_code, self.ending, self.done = code, ending, True
            self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


@dataclass
class FakeBackend:
    """Implements `engine.ports.SandboxBackend` without Docker."""

    binaries: set[str] = field(default_factory=lambda: {"sh", "claude", "codex"})
    devices: dict[str, DeviceState] = field(default_factory=dict)
    processes: dict[str, FakeProcess] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    """The files in the devices, by (device_id, path): what `write=` steps made."""
    ended: dict[str, int] = field(default_factory=dict)
    """Runs told to end before their process started."""
    swept: dict[str, int] = field(default_factory=dict)
    """How many times each run's leftovers were swept."""
    removed_files: set[str] = field(default_factory=set)
    """Runs whose files were removed from their device (their artifacts with them)."""
    starts: dict[str, int] = field(default_factory=dict)
    """How many times each run's process was started (must never exceed one)."""
    specs: dict[str, DeviceSpec] = field(default_factory=dict)
    """What each device was created from (kept after its removal)."""
    followed: dict[str, RunLaunch] = field(default_factory=dict)
    """The last launch each run was followed with (its env and secrets are the exec's environment)."""

    async def image_exists(self, image: str) -> bool:
        return image != "missing:latest"

    async def create(self, spec: DeviceSpec) -> DeviceState:
        if not await self.image_exists(spec.image):
            raise errors.InvalidInput("image", f"image {spec.image} not found")
        if spec.device_id in self.devices:  # Docker refuses a second container of the same name
            raise errors.Conflict(f"a device {spec.device_id} exists already")
        labels = {"agentdock.device_id": spec.device_id, "agentdock.kind": spec.kind,
                  "agentdock.ephemeral": "1" if spec.ephemeral else "0"}
        if spec.run_id:
            labels["agentdock.run_id"] = spec.run_id
        if spec.pool:
            labels["agentdock.pool"] = spec.pool
        state = DeviceState(device_id=spec.device_id, container_id="fake-" + spec.device_id, kind=spec.kind,
                            running=True, ephemeral=spec.ephemeral, run_id=spec.run_id, pool=spec.pool,
                            labels=labels)
        self.specs[spec.device_id] = spec
        self.devices[spec.device_id] = state
        return state

    async def start(self, device_id: str) -> DeviceState:
        if device_id not in self.devices:
            raise errors.NotFound("container", device_id)
        state = self.devices[device_id] = self.devices[device_id].model_copy(update={"running": True, "paused": False})
        return state

    async def inspect(self, device_id: str) -> DeviceState | None:
        return self.devices.get(device_id)

    async def repair(self, device_id: str) -> str:
        state = self.devices.get(device_id)
        if state is None:
            return "gone"
        if state.paused:
            await self.start(device_id)
            return "thawed"
        return "answering"

    async def list_owned(self) -> list[DeviceState]:
        return list(self.devices.values())

    async def remove(self, device_id: str) -> None:
        self.devices.pop(device_id, None)
        for proc in self.processes.values():  # what ran in it goes with it, without an exit code
            if proc.device_id == device_id:
                proc.finish(None, Ending.sandbox_lost)
        for key in [k for k in self.files if k[0] == device_id]:  # its filesystems go with it
            del self.files[key]

    async def follow(self, launch: RunLaunch) -> AsyncIterator[Chunk | Exit]:
        self.followed[launch.run_id] = launch
        if launch.device_id not in self.devices:
            if launch.ephemeral is None:  # its device is gone, with its files: nothing more to pass on
                yield Exit(exit_code=None, ending=Ending.sandbox_lost)
                return
            await self.create(launch.ephemeral)
        proc = self.processes.get(launch.run_id)
        if proc is None:
            proc = self.processes[launch.run_id] = self._start(launch)
        sent = {"stdout": launch.stdout_offset, "stderr": launch.stderr_offset}
        while True:
            changed = proc.changed
            for stream, buf in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                if len(buf) > sent[stream]:
                    yield Chunk(stream=stream, data=bytes(buf[sent[stream]:]))  # type: ignore[arg-type]
                    sent[stream] = len(buf)
            if proc.done:
                yield Exit(exit_code=proc.exit_code, ending=proc.ending)
                return
            await changed.wait()

    def _start(self, launch: RunLaunch) -> FakeProcess:
        self.starts[launch.run_id] = self.starts.get(launch.run_id, 0) + 1
        proc = FakeProcess(device_id=launch.device_id, artifact_paths=list(launch.artifact_paths), files=self.files)
        if launch.require and launch.require not in self.binaries:
            proc.stderr += f"agentdock: runtime not found: '{launch.require}' is not on PATH in this image\n".encode()
            proc.finish(RUNTIME_NOT_FOUND_EXIT, Ending.runtime_not_found)
            return proc
        script = launch.argv[-1] if launch.argv[:2] == ["sh", "-c"] else "out=ok"
        spec = self.specs.get(launch.device_id)
        env = {**(spec.env if spec else {}), **launch.env, **launch.secret_env}
        code, block = 0, False
        for step in script.split():
            key, _, value = step.partition("=")
            value = VARIABLE.sub(lambda m: env.get(m[1], ""), value)
            if key == "out":
                proc.stdout += value.encode() + b"\n"
            elif key == "err":
                proc.stderr += value.encode() + b"\n"
            elif key == "write":
                path, _, text = value.partition(":")
                self.files[(launch.device_id, path)] = text.encode() + b"\n"
            elif key == "exit":
                code = int(value)
            elif key == "block":
                block = True
        if not block:
            proc.finish(code)
        elif launch.run_id in self.ended:
            proc.finish(self.ended.pop(launch.run_id))
        return proc

    def end(self, run_id: str, code: int = 0) -> None:
        """Let a blocked process finish by itself (as if its work were done), now or once it starts."""
        if run_id in self.processes:
            self.processes[run_id].finish(code)
        else:
            self.ended[run_id] = code

    def lose(self, run_id: str) -> None:
        """End a started process as if it died with its container (no exit code recorded): `process_lost`."""
        self.processes[run_id].finish(None, Ending.lost)

    async def signal(self, device_id: str, run_id: str, signal: Literal["TERM", "KILL"]) -> None:
        proc = self.processes.get(run_id)
        if proc is not None and proc.device_id == device_id and device_id in self.devices:
            proc.finish(143 if signal == "TERM" else 137)

    async def sweep(self, device_id: str, run_id: str) -> Swept:
        self.swept[run_id] = self.swept.get(run_id, 0) + 1
        proc = self.processes.get(run_id)
        if proc is None or proc.done or proc.device_id != device_id or device_id not in self.devices:
            return Swept()
        proc.finish(None, Ending.lost)  # killed with the launcher that would have recorded its exit code
        return Swept(killed=1)

    async def disk_full(self, device_id: str) -> bool:
        return False

    async def remove_run_files(self, device_id: str, run_id: str) -> None:
        self.removed_files.add(run_id)

    async def artifact(self, device_id: str, run_id: str, index: int, path: str, max_bytes: int) -> bytes:
        proc = self.processes.get(run_id)
        data = None if proc is None or proc.device_id != device_id or run_id in self.removed_files \
            else proc.exported.get(index)
        if data is None:
            raise errors.NotFound("artifact", path, evidence={"field": "artifact_paths"})
        if len(data) > max_bytes:
            raise errors.LimitExceeded(f"{path} is {len(data)} bytes; artifacts are limited to {max_bytes}")
        return data
