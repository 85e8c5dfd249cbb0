"""A device's /workspace of a fixed size: an ext4 filesystem in a sparse image file under the daemon's
home, loop-mounted on the host and bind-mounted into the container (and likewise its runs' files).

Docker's overlay2 (and its named volumes) have no size limit here, so a run could fill the host's disk
through /workspace; the kernel refuses a write past the end of this filesystem instead (ENOSPC), and
only this device is full. The image file is the workspace: it survives a restart of the container
and a kill of the daemon (the host keeps the mount); at the daemon's start a mount that went (a
reboot of the host) is made again, and one whose device is gone is removed.

Every function here is blocking (a `mkfs`, a `mount`): call it on a worker thread. They need root
on the Docker host, as the daemon is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

RUNS_MB = 2048
"""The size of a device's runs' directory: its runs' output files are capped (64 MiB at most each), and
they are removed once a run's result is recorded; sparse, it takes on the host only what is written."""
FULL_MARGIN_BYTES = 1_048_576
"""A filesystem with less than this free (for anyone: it reserves nothing for root) counts as full."""


class DiskError(Exception):
    """The workspace could not be made or mounted (no loop devices, not root): what the command said."""


@dataclass(frozen=True)
class Disk:
    """One filesystem of a device: its image file and its host mount point."""

    image: Path
    mount: Path

    def make(self, size_mb: int, uid: int, gid: int, mode: int) -> None:
        """Create the image (sparse: it takes room only as it is written), make the filesystem, mount
        it, and give its top directory `mode`."""
        with open(self.image, "wb") as f:
            f.truncate(size_mb * 1_048_576)
        # -m 0: no blocks reserved for root (nothing runs as root in a device); lazy init: made in ms
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E",
             f"lazy_itable_init=1,lazy_journal_init=1,root_owner={uid}:{gid}", str(self.image))
        self.mount.mkdir(mode=0o755, exist_ok=True)
        self._mount()
        (self.mount / "lost+found").rmdir()
        os.chmod(self.mount, mode)

    def _mount(self) -> None:
        # nosuid, nodev: nothing on it gains privileges; noinit_itable: no background zeroing of the image
        _run("mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noinit_itable", str(self.image), str(self.mount))

    def ensure_mounted(self) -> None:
        if self.image.exists() and not os.path.ismount(self.mount):
            self.mount.mkdir(mode=0o755, exist_ok=True)
            self._mount()

    def full(self) -> bool:
        return os.path.ismount(self.mount) and is_full(self.mount)

    def unmount(self) -> None:
        """Lazily: a container still holding it lets go when it goes (the loop device with it)."""
        if os.path.ismount(self.mount):
            _run("umount", "-l", str(self.mount))


@dataclass(frozen=True)
class DeviceDisks:
    """A device's filesystems: its /workspace, its /tmp, and the directory of its runs' files (their
    output, exit codes, HOMEs), apart so that a full workspace or /tmp leaves the next run room to start."""

    top: Path

    @classmethod
    def of(cls, home: str | Path, device_id: str) -> DeviceDisks:
        return cls(Path(home) / "disks" / device_id)

    @property
    def workspace(self) -> Disk:
        return Disk(self.top / "workspace.img", self.top / "workspace")

    @property
    def tmp(self) -> Disk:
        return Disk(self.top / "tmp.img", self.top / "tmp")

    @property
    def runs(self) -> Disk:
        return Disk(self.top / "runs.img", self.top / "runs")

    def make(self, workspace_mb: int, tmp_mb: int, uid: int, gid: int) -> None:
        """/workspace and /tmp are shared by the runs: the group's, setgid, group-writable (/tmp is not
        sticky, so a run may remove what an earlier one left there and filled it with). In the runs'
        directory each run makes its own; none may list, rename or remove another's (1733)."""
        self.remove()  # what an earlier attempt under this id left
        self.top.parent.mkdir(mode=0o700, exist_ok=True)
        self.top.mkdir(mode=0o700)
        try:
            self.workspace.make(workspace_mb, uid, gid, 0o2775)
            self.tmp.make(tmp_mb, 0, gid, 0o2775)
            self.runs.make(RUNS_MB, 0, 0, 0o1733)
        except DiskError:
            self.remove()
            raise

    def disks(self) -> tuple[Disk, Disk, Disk]:
        return self.workspace, self.tmp, self.runs

    def ensure_mounted(self) -> None:
        """Mount again what went (a reboot of the host); nothing if there is nothing to mount."""
        for disk in self.disks():
            disk.ensure_mounted()

    def full(self) -> bool:
        return any(disk.full() for disk in self.disks())

    def remove(self) -> None:
        """Unmount and delete it all."""
        for disk in self.disks():
            disk.unmount()
        shutil.rmtree(self.top, ignore_errors=True)


def is_full(path: str | Path) -> bool:
    """Whether the filesystem at `path` has (almost) no room left for an unprivileged writer."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_MARGIN_BYTES or (st.f_files > 0 and st.f_favail == 0)


def owned(home: str | Path) -> list[str]:
    """The device ids that have disks under `home`."""
    try:
        return sorted(p.name for p in (Path(home) / "disks").iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiskError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise DiskError(f"{' '.join(argv[:2])}... failed: {(done.stderr or done.stdout).strip()[-300:]}")
