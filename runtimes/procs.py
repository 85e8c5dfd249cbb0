"""A container's processes seen and signalled from the Docker host, without creating one inside.

A run at its container's pids limit (a fork bomb) leaves no room for `docker exec`, so the
daemon, root on the Docker host, finds the run's processes through the container's pids cgroup
and their environment (every process a run starts inherits `AGENTDOCK_RUN_ID`), and signals them
from outside. Every function here is blocking and cheap (a few small /proc and /sys reads); when
the host's /proc does not show the container (a remote Docker engine, no privileges) `Cgroup.of`
returns None and callers fall back to `docker exec`.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

MACHINERY = (b"agentdock-run", b"agentdock-launcher")
"""argv[0] of the run wrapper and launcher: they outlive a TERM so the exit code is recorded."""


@dataclass(frozen=True)
class Cgroup:
    """The pids cgroup of one container (v1 or v2)."""

    path: Path

    @classmethod
    def of(cls, host_pid: int) -> Cgroup | None:
        """The pids cgroup of the container whose main process is `host_pid` on this host."""
        if host_pid <= 0:
            return None
        try:
            lines = Path(f"/proc/{host_pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        v1 = v2 = None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(","):
                v1 = Path("/sys/fs/cgroup/pids") / path.lstrip("/")
            elif controllers == "":
                v2 = Path("/sys/fs/cgroup") / path.lstrip("/")
        for candidate in (v1, v2):
            if candidate is not None and (candidate / "cgroup.procs").exists():
                return cls(candidate)
        return None

    def live(self) -> bool:
        """The cgroup exists while its container runs; Docker removes it when it stops."""
        return (self.path / "cgroup.procs").exists()

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def fork_refusals(self) -> int:
        """How many times a process could not be created here because of the pids limit (ever)."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def exhausted(self, margin: int = 3) -> bool:
        """True when the container is at (or within `margin` of) its pids limit."""
        try:
            limit = (self.path / "pids.max").read_text().strip()
            current = int((self.path / "pids.current").read_text())
        except (OSError, ValueError):
            return False
        return limit.isdigit() and current >= int(limit) - margin


def alive(host_pid: int) -> bool:
    """False when the host shows `host_pid` gone or a zombie; True when it is alive or cannot be seen."""
    try:
        status = Path(f"/proc/{host_pid}/status").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return "\nState:\tZ" not in status


def run_processes(cgroup: Cgroup, run_id: str, *, machinery: bool = True) -> list[int]:
    """Host pids of the live processes in `cgroup` started by the run (by their inherited environment).
    With `machinery=False`, leave out agentdock's own wrapper and launcher."""
    marker = f"AGENTDOCK_RUN_ID={run_id}".encode()
    found = []
    for pid in cgroup.pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if marker not in environ.split(b"\0"):
                continue
            if not machinery:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if any(m in cmdline for m in MACHINERY):
                    continue
        except OSError:
            continue  # gone, or a zombie
        found.append(pid)
    return found


def send(pids: list[int], sig: signal.Signals) -> int:
    """Signal each pid; returns how many were still there to receive it."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except (ProcessLookupError, PermissionError):
            pass
    return sent
