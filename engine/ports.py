"""The ports the engine needs and `runtimes` implements: a sandbox backend, runtime harnesses, a clock."""

from __future__ import annotations

import anyio
from collections.abc import AsyncIterator
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field


class Port(BaseModel):
    model_config = ConfigDict(frozen=True)


class DeviceSpec(Port):
    """Everything needed to create one labelled container."""

    device_id: str
    kind: Literal["sandbox", "computer"]
    image: str
    cpus: float
    memory_mb: int
    pids_limit: int
    workspace_mb: int | None = None
    """Size of /workspace in MiB (None: the backend's default for the kind)."""
    tmp_mb: int | None = None
    network: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    ephemeral: bool = False
    run_id: str | None = None
    pool: str | None = None
    """For a pooled device (started ahead of any run, see `engine.pool`): its pool's key, labelled on it."""


class DeviceState(Port):
    """What the backend sees of a container it owns."""

    device_id: str
    container_id: str
    kind: str
    running: bool
    ephemeral: bool
    run_id: str | None
    started: bool = True
    """False for a container created but never started (a crash between the two)."""
    paused: bool = False
    """Frozen (the backend freezes a device for a moment to kill a fork bomb; a crash then leaves it so)."""
    labels: dict[str, str] = Field(default_factory=dict)
    pool: str | None = None
    """The pool it was started for (`DeviceSpec.pool`)."""


class RunLaunch(Port):
    """Start (if not yet started) and follow one run's process inside a device.

    The process writes its stdout, stderr and exit code to files inside the container, so it
    outlives this daemon; following resumes from the given byte offsets.
    """

    run_id: str
    device_id: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    prompt: str
    secret_env: dict[str, str] = Field(default_factory=dict, repr=False)
    """The values of the secrets the run names, by name: given to the run's process only (the exec's
    environment), never to the container's configuration, a label or a log line."""
    require: str | None = None
    """An executable that must be on PATH (the runtime's CLI); missing -> `Ending.runtime_not_found`."""
    stdout_offset: int = 0
    stderr_offset: int = 0
    stdout_cap: int = 1_048_577
    """Bytes of stdout kept inside the device; the rest is drained and dropped."""
    stderr_cap: int = 1_048_577
    artifact_paths: list[str] = Field(default_factory=list)
    """Files to copy out, as the run's own user, when the process ends (read back with `artifact`)."""
    artifact_max_bytes: int = 10_485_760
    ephemeral: DeviceSpec | None = None
    """For an ephemeral run: the device to create, whose main process is the run. A pooled one
    (`DeviceSpec.pool`) was started ahead and the run is exec'd in it, like in any device."""


class Chunk(Port):
    stream: Literal["stdout", "stderr"]
    data: bytes


class Ending(StrEnum):
    """How a run's process ended, as the backend saw it."""

    exited = "exited"
    """It exited by itself (or by a signal the run was sent) and recorded its exit code."""
    runtime_not_found = "runtime_not_found"
    """The runtime's executable (`RunLaunch.require`) is not in the image; nothing was started."""
    lost = "lost"
    """It vanished without recording an exit code (container restarted, files removed)."""
    pids_exhausted = "pids_exhausted"
    """It filled the device's pids limit (a fork bomb); the backend killed every process it started."""
    sandbox_lost = "sandbox_lost"
    """Its device stopped or disappeared under it."""
    disk_full = "disk_full"
    """It failed with its device's /workspace or /tmp full (their sizes are enforced by the kernel)."""


class Exit(Port):
    exit_code: int | None
    """The process's exit code when `ending` is `exited` or `runtime_not_found`."""
    ending: Ending = Ending.exited


class Swept(Port):
    """What a sweep of a run's leftover processes found."""

    killed: int = 0
    pids_exhausted: bool = False
    """The device was at its pids limit, with the run's processes in it (a fork bomb)."""
    pids_peak: int | None = None
    """The most processes the run had at once (its own cgroup's count; None where not measured)."""
    memory_peak_bytes: int | None = None
    """The most memory the run's processes used at once (None where not measured)."""
    disk_full: bool = False
    """The device's /workspace or /tmp was full when the run ended."""


class SandboxBackend(Protocol):
    async def create(self, spec: DeviceSpec) -> DeviceState:
        """Create and start the device; a container that does not stay up is removed and refused."""
        ...
    async def start(self, device_id: str) -> DeviceState:
        """Start a stopped device again (its files intact), or thaw a frozen one."""
        ...
    async def repair(self, device_id: str) -> str:
        """Make a device that stopped answering usable again: thaw it, or end every process in it and
        start it again (its files stay). Says what it did: answering, thawed, restarted or gone."""
        ...
    async def image_exists(self, image: str) -> bool: ...
    async def inspect(self, device_id: str) -> DeviceState | None: ...
    async def list_owned(self) -> list[DeviceState]: ...
    async def remove(self, device_id: str) -> None: ...
    def follow(self, launch: RunLaunch) -> AsyncIterator[Chunk | Exit]:
        """Start or re-attach to a run; yields output chunks, then exactly one `Exit`."""
        ...
    async def signal(self, device_id: str, run_id: str, signal: Literal["TERM", "KILL"]) -> None:
        """TERM or KILL the run's command (the wrapper survives to record its exit code)."""
        ...
    async def sweep(self, device_id: str, run_id: str) -> Swept:
        """Kill every process the run started that is still there, even at the device's pids limit."""
        ...
    async def disk_full(self, device_id: str) -> bool:
        """Whether the device's /workspace or /tmp is full (what `sweep` reports, for a device not swept)."""
        ...
    async def remove_run_files(self, device_id: str, run_id: str) -> None:
        """Remove the run's files inside the device once its result is recorded."""
        ...
    async def artifact(self, device_id: str, run_id: str, index: int, path: str, max_bytes: int) -> bytes:
        """The bytes of `RunLaunch.artifact_paths[index]` as the run's user copied them; raises
        `errors.NotFound`, `errors.PermissionDenied`, `errors.InvalidInput` or `errors.LimitExceeded`."""
        ...


class EventDraft(Port):
    """An event a harness parsed from its runtime's stream, before it gets a sequence."""

    type: str
    message: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)


class Failure(Port):
    """Why a runtime failed, as its adapter reads it (a missing credential, say)."""

    kind: str
    """The run's `failure_kind`, e.g. `auth_required`."""
    message: str
    """What went wrong and what to do: which secret to set."""


class Parsed(Port):
    events: list[EventDraft] = Field(default_factory=list)
    output: str | None = None
    """The agent's answer so far, when this line changes it."""
    failure: Failure | None = None
    """Set when this line says how the run failed (an authentication error, say)."""


class HarnessInput(Port):
    prompt: str
    command: str | None
    model: str | None
    cwd: str


class Harness(Protocol):
    """Turns a run into a command line, and the runtime's stdout stream into typed events."""

    provider: str
    binary: str | None
    """Executable that must exist in the image; None when the command is the user's own."""
    structured: bool
    """True when stdout is a JSON-lines stream to parse line by line; False: stdout is the output."""

    def argv(self, run: HarnessInput) -> list[str]: ...
    def parse_line(self, line: str) -> Parsed: ...
    def classify(self, exit_code: int | None, stderr_tail: str, hint: Failure | None) -> Failure | None:
        """Why a run that exited non-zero failed, when the runtime said so (its stderr's last lines,
        or a `Parsed.failure` its stream gave); None: an ordinary `nonzero_exit`."""
        ...
    def gateway_env(self, provider: str, base_url: str, placeholder: str) -> dict[str, str]:
        """The environment that sends this runtime's requests to `provider` through the model gateway at
        `base_url`, with `placeholder` where its key would be."""
        ...


class Clock(Protocol):
    """Where the engine's time comes from (`engine.clock.SystemClock`, `engine.clock.FakeClock`)."""

    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...
    async def wait(self, event: anyio.Event, timeout: float) -> bool:
        """Wait for `event` at most `timeout` seconds; True if it was set."""
        ...
