"""The ports the engine needs and `runtimes` implements: a sandbox backend, runtime harnesses, a clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
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
    network: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    ephemeral: bool = False
    run_id: str | None = None


class DeviceState(Port):
    """What the backend sees of a container it owns."""

    device_id: str
    container_id: str
    kind: str
    running: bool
    ephemeral: bool
    run_id: str | None
    labels: dict[str, str] = Field(default_factory=dict)


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
    require: str | None = None
    """An executable that must be on PATH (the runtime's CLI); missing -> exit 127 with a marker."""
    stdout_offset: int = 0
    stderr_offset: int = 0
    ephemeral: DeviceSpec | None = None
    """For an ephemeral run: the device to create, whose main process is the run."""


class Chunk(Port):
    stream: Literal["stdout", "stderr"]
    data: bytes


class Exit(Port):
    exit_code: int
    lost: bool = False
    """The process vanished without recording an exit code (container restarted, files removed)."""


class RunFiles(Port):
    """A finished run's files read back from a stopped container."""

    stdout: bytes
    stderr: bytes
    exit_code: int | None


RUNTIME_NOT_FOUND_EXIT = 127
RUNTIME_NOT_FOUND_MARKER = "agentdock: runtime not found:"
LOST_MARKER = "agentdock: run process lost"


class SandboxBackend(Protocol):
    async def create(self, spec: DeviceSpec) -> DeviceState: ...
    async def image_exists(self, image: str) -> bool: ...
    async def inspect(self, device_id: str) -> DeviceState | None: ...
    async def list_owned(self) -> list[DeviceState]: ...
    async def remove(self, device_id: str) -> None: ...
    def follow(self, launch: RunLaunch) -> AsyncIterator[Chunk | Exit]:
        """Start or re-attach to a run; yields output chunks, then exactly one `Exit`."""
        ...
    async def signal(self, device_id: str, run_id: str, signal: Literal["TERM", "KILL"]) -> None: ...
    async def collect(self, device_id: str, run_id: str) -> RunFiles | None: ...
    async def copy_out(self, device_id: str, path: str, max_bytes: int) -> bytes:
        """The file's bytes; raises `errors.NotFound` or `errors.LimitExceeded`."""
        ...


class EventDraft(Port):
    """An event a harness parsed from its runtime's stream, before it gets a sequence."""

    type: str
    message: str = ""
    payload: dict[str, Any] = Field(default_factory=dict)


class Parsed(Port):
    events: list[EventDraft] = Field(default_factory=list)
    output: str | None = None
    """The agent's answer so far, when this line changes it."""


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


class Clock(Protocol):
    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
