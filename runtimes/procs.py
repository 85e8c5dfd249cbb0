"""A container's processes seen and ended from the Docker host, without creating one inside.

The daemon is root on the Docker host. Each run in a long-lived device gets cgroups of its own,
nested under its container's (`RunCgroup`): the run's wrapper is moved into them before it starts
anything, so every process the run makes is born there, whatever it does to its environment.
Ending the run is then one write to `cgroup.kill` (cgroup v2, also mounted beside v1 as the
"unified" hierarchy on hybrid hosts), atomic against forks: a fork bomb ends at once and nothing
else in the device is touched (the container is never frozen, so an exec under way in it cannot
be caught half made). The run's v1 `pids` and `memory` cgroups, where the host has them, give its
peak process count and memory.

Runs that are not in cgroups of their own (started before this version, or the move timed out)
are found by their inherited environment (`AGENTDOCK_RUN_ID`), stopped with SIGSTOP until none is
left running (a stopped process cannot fork), then killed.

Every function here is blocking and cheap (small /proc and /sys reads and writes); when the host's
/proc does not show the container (a remote Docker engine, no privileges) `Cgroup.of` returns None
and callers fall back to `docker exec`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MACHINERY = (b"agentdock-run", b"agentdock-launcher")
"""argv[0] of the run wrapper and launcher: they outlive a TERM so the exit code is recorded."""
CGROUP_ROOT = Path("/sys/fs/cgroup")


def run_cgroup_name(run_id: str) -> str:
    """The name of a run's own cgroups (run ids are `<prefix>_<hex>`: safe in a path)."""
    return f"agentdock-{run_id}"


@dataclass(frozen=True)
class Cgroup:
    """The cgroups of one container: its v1 pids (and memory) cgroups and its v2 (unified) cgroup."""

    path: Path
    """Where its processes are listed and its pids limit is: the v1 pids cgroup, else the v2 one."""
    unified: Path | None = None
    """Its v2 cgroup (with `cgroup.kill`), on a v2 or hybrid host."""
    memory: Path | None = None
    """Its v1 memory cgroup, on a v1 or hybrid host."""
    freezer: Path | None = None
    """Its v1 freezer cgroup (what `docker pause` freezes on a v1 host)."""

    @classmethod
    def of(cls, host_pid: int, root: Path = CGROUP_ROOT) -> Cgroup | None:
        """The cgroups of the container whose main process is `host_pid` on this host."""
        if host_pid <= 0:
            return None
        try:
            lines = Path(f"/proc/{host_pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        pids = memory = unified = freezer = None
        v2_root = root / "unified" if (root / "unified" / "cgroup.procs").exists() else root
        for line in lines:
            _, controllers, path = line.split(":", 2)
            names = controllers.split(",")
            if "pids" in names:
                pids = root / "pids" / path.lstrip("/")
            elif "memory" in names:
                memory = root / "memory" / path.lstrip("/")
            elif "freezer" in names:
                freezer = root / "freezer" / path.lstrip("/")
            elif controllers == "":
                unified = v2_root / path.lstrip("/")
        unified = unified if unified is not None and (unified / "cgroup.kill").exists() else None
        memory = memory if memory is not None and (memory / "cgroup.procs").exists() else None
        freezer = freezer if freezer is not None and (freezer / "freezer.state").exists() else None
        for candidate in (pids, unified):
            if candidate is not None and (candidate / "cgroup.procs").exists():
                return cls(candidate, unified=unified, memory=memory, freezer=freezer)
        return None

    def live(self) -> bool:
        """The cgroup exists while its container runs; Docker removes it when it stops."""
        return (self.path / "cgroup.procs").exists()

    def pids(self) -> list[int]:
        """Every process of the container, those in the runs' own cgroups included."""
        found: list[int] = []
        for directory in _tree(self.path):
            found.extend(_procs(directory))
        return found

    def fork_refusals(self) -> int:
        """How many times a process could not be created here because of the pids limit (ever)."""
        return _max_events(self.path)

    def exhausted(self, margin: int = 3) -> bool:
        """True when the container is at (or within `margin` of) its pids limit."""
        try:
            limit = (self.path / "pids.max").read_text().strip()
            current = int((self.path / "pids.current").read_text())
        except (OSError, ValueError):
            return False
        return limit.isdigit() and current >= int(limit) - margin

    def thaw(self) -> bool:
        """Thaw the container if it is frozen (v1 freezer or v2 `cgroup.freeze`); says whether it was."""
        was = False
        try:
            if self.freezer is not None and (self.freezer / "freezer.state").read_text().strip() != "THAWED":
                (self.freezer / "freezer.state").write_text("THAWED")
                was = True
            if self.unified is not None and (self.unified / "cgroup.freeze").exists() and \
                    (self.unified / "cgroup.freeze").read_text().strip() == "1":
                (self.unified / "cgroup.freeze").write_text("0")
                was = True
        except OSError:
            pass
        return was

    def kill_all(self) -> bool:
        """Kill every process in the container at once (its main process too, so it stops)."""
        if self.unified is None:
            return False
        try:
            (self.unified / "cgroup.kill").write_text("1")
        except OSError:
            return False
        return True

    def run(self, run_id: str) -> RunCgroup | None:
        """The run's own cgroups, where the host can make them (it needs the v2 `cgroup.kill`)."""
        if self.unified is None:
            return None
        name = run_cgroup_name(run_id)
        return RunCgroup(unified=self.unified / name, pids=self.path / name if self.path != self.unified else None,
                         memory=self.memory / name if self.memory is not None else None)


@dataclass(frozen=True)
class Usage:
    """What a run's own cgroups measured of it."""

    pids_peak: int | None = None
    memory_peak_bytes: int | None = None
    forks_refused: int | None = None
    """How often the run could not create a process for want of room under the pids limit (a v1 host
    counts a refusal in the cgroup of the process that forked, so this is the run's own count)."""


@dataclass(frozen=True)
class RunCgroup:
    """One run's cgroups inside its container's: v2 for `cgroup.kill`, v1 pids and memory for figures."""

    unified: Path
    pids: Path | None = None
    memory: Path | None = None

    def _dirs(self) -> list[Path]:
        return [p for p in (self.pids, self.memory, self.unified) if p is not None]

    def exists(self) -> bool:
        return (self.unified / "cgroup.procs").exists()

    def make(self) -> None:
        for directory in self._dirs():
            directory.mkdir(exist_ok=True)

    def join(self, pid: int) -> bool:
        """Move `pid` into every one of the run's cgroups; False if it is gone (or cannot be moved)."""
        try:
            self.make()
            for directory in self._dirs():
                (directory / "cgroup.procs").write_text(str(pid))
        except OSError:
            return False
        return True

    def members(self) -> list[int]:
        return _procs(self.unified)

    def populated(self) -> bool:
        try:
            for line in (self.unified / "cgroup.events").read_text().splitlines():
                if line.startswith("populated "):
                    return line.split()[1] != "0"
        except OSError:
            return False
        return bool(self.members())

    def usage(self) -> Usage:
        if not self.exists():
            return Usage()
        return Usage(pids_peak=_int(self.pids / "pids.peak") if self.pids else None,
                     memory_peak_bytes=_int(self.memory / "memory.max_usage_in_bytes") if self.memory else None,
                     forks_refused=_max_events(self.pids) if self.pids else None)

    def kill(self, wait: float = 5.0) -> int:
        """Kill every process in the run's cgroups at once, wait (bounded) until they are gone, and
        remove the cgroups; returns how many processes were there."""
        if not self.exists():
            return 0
        count = len(self.members())
        try:
            (self.unified / "cgroup.kill").write_text("1")
        except OSError:
            return 0
        deadline = time.monotonic() + wait
        while self.populated() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.remove()
        return count

    def remove(self) -> None:
        """Remove the (empty) cgroups; one still in use stays, and goes with its container."""
        for directory in self._dirs():
            try:
                directory.rmdir()
            except OSError:
                pass


def _max_events(directory: Path) -> int:
    try:
        for line in (directory / "pids.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _tree(top: Path) -> Iterator[Path]:
    yield top
    try:
        children = [p for p in top.iterdir() if p.is_dir()]
    except OSError:
        return
    for child in children:
        yield from _tree(child)


def _procs(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(host_pid: int) -> bool:
    """False when the host shows `host_pid` gone or a zombie; True when it is alive or cannot be seen."""
    try:
        status = Path(f"/proc/{host_pid}/status").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return "\nState:\tZ" not in status


def _is_run(pid: int, marker: bytes, *, machinery: bool, wrapper_only: bool = False) -> bool:
    try:
        if marker not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return False
        if wrapper_only or not machinery:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            is_machinery = any(m in argv0 for m in MACHINERY)
            if wrapper_only:
                return len(argv0) > 3 and argv0[3] == MACHINERY[0]  # sh -c WRAPPER agentdock-run ...
            if is_machinery:
                return False
    except OSError:
        return False  # gone, or a zombie
    return True


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def run_processes(cgroup: Cgroup, run_id: str, *, machinery: bool = True) -> list[int]:
    """Host pids of the live processes in `cgroup` started by the run (by their inherited environment).
    With `machinery=False`, leave out agentdock's own wrapper and launcher."""
    marker = f"AGENTDOCK_RUN_ID={run_id}".encode()
    return [pid for pid in cgroup.pids() if _is_run(pid, marker, machinery=machinery)]


def adopt_wrapper(cgroup: Cgroup, run: RunCgroup, run_id: str, wait: float) -> bool:
    """Find the run's newly exec'd wrapper among the container's own processes and move it into the
    run's cgroups (it waits for that before it starts the run). Bounded by `wait` seconds."""
    marker = f"AGENTDOCK_RUN_ID={run_id}".encode()
    deadline = time.monotonic() + wait
    try:
        run.make()
    except OSError:
        return False
    while True:
        for pid in _procs(cgroup.path):  # only the container's direct members: a moved one is not listed
            if _is_run(pid, marker, machinery=True, wrapper_only=True) and not _is_run(
                    _parent(pid), marker, machinery=True):  # not a fork of it on its way to exec
                joined = run.join(pid)
                send([pid], signal.SIGURG)  # ends its wait at once (ignored unless it traps it)
                return joined
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.0005)


def stop_and_kill(cgroup: Cgroup, run_id: str, *, machinery: bool = True, rounds: int = 100) -> int:
    """End the run's processes found by their environment, without freezing the container: SIGSTOP
    each until a round finds none still running (a stopped process cannot fork, so a fork bomb runs
    out), then SIGKILL them all. Returns how many were killed."""
    stopped: set[int] = set()
    for _ in range(rounds):
        fresh = [pid for pid in run_processes(cgroup, run_id, machinery=machinery) if pid not in stopped]
        if not fresh:
            break
        for pid in fresh:
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
    return send(sorted(stopped), signal.SIGKILL)


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
