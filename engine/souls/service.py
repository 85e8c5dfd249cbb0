"""Souls as the engine serves them: read from files, validated, snapshotted for spawned sessions, and
imported from Claude Code agent files.

A soul lives in `$AGENTDOCK_HOME/souls/<agent_name>.md`, or first in a workspace's
`.agentdock/souls/<agent_name>.md` (AGENTDOCK_SOUL_WORKSPACE). The name is checked by its charset, so it
is one file name, and every directory below the root is opened without following symbolic links, so a
link planted in a workspace cannot make the daemon read (and show) another file.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import anyio

from engine import errors
from engine.souls import claude_agent as soul_import
from engine.souls import models as souls
from engine.souls import parser as soul_parser
from engine.callers import Caller
from engine.ports import Clock
from engine.settings import Settings
from engine.store import Store, new_id

HOME_PARTS = ("souls",)
WORKSPACE_PARTS = (".agentdock", "souls")
TOOLSET = "soul"


class _File(NamedTuple):
    """What reading a soul's file found."""

    path: Path
    source: souls.Source
    data: bytes | None
    """None: no such file."""
    modified: datetime | None
    problem: str | None
    """Why the file that is there may not be read."""


class SoulService:
    def __init__(self, store: Store, clock: Clock, settings: Settings) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings

    @property
    def limits(self) -> souls.Limits:
        s = self.settings
        return souls.Limits(max_bytes=s.soul_max_bytes, max_body_bytes=s.soul_max_body_bytes,
                            context_projection_bytes=s.soul_context_projection_bytes)

    def _name(self, agent_name: str | None) -> str:
        if agent_name is None:
            return self.settings.soul_agent_name
        if not isinstance(agent_name, str) or not souls.AGENT_NAME.fullmatch(agent_name):
            raise errors.InvalidInput("agent_name", "must be 1 to 64 lowercase letters, digits, '-' or '_', starting "
                                      "with a letter or digit (it names the file <agent_name>.md)")
        return agent_name

    # ------------------------------------------------------------ reading

    async def get(self, caller: Caller, agent_name: str | None = None, *, snapshot_id: str | None = None,
                  ) -> souls.Soul:
        """An agent's soul: the snapshot a spawned session took when `snapshot_id` is given, else its file.
        No file is not an error: `present: false`, `validation_status: missing`."""
        caller.require(TOOLSET)
        if snapshot_id is None and agent_name is None:
            return await self.own(caller)
        if snapshot_id is not None:
            return await self._from_snapshot(agent_name, snapshot_id)
        soul, _ = await self._load(self._name(agent_name))
        return soul

    async def own(self, caller: Caller) -> souls.Soul:
        """The caller's own soul: a spawned session's is the one it took at spawn, the root's is its file.
        Who one is needs no `soul` toolset (the context bundle carries it)."""
        session = None if caller.is_root else await self.store.sessions.session(caller.session_id)
        if session is not None and session.soul_snapshot_id is not None:
            return await self._from_snapshot(session.agent_name, session.soul_snapshot_id)
        soul, _ = await self._load(self._name(session.agent_name if session else None))
        return soul

    async def validate(self, caller: Caller, req: souls.SoulValidate) -> souls.Soul:
        """Check `req.content` (nothing is stored), or the stored soul of `req.agent_name`."""
        caller.require(TOOLSET)
        name = self._name(req.agent_name)
        if req.content is None:
            soul, _ = await self._load(name)
            return soul
        return await anyio.to_thread.run_sync(partial(
            soul_parser.parse, req.content, None, agent_name=name, limits=self.limits, enabled=self.settings.soul_enabled,
            source=souls.Source.request, created_at=self.clock.now()))

    async def snapshot(self, caller: Caller, agent_name: str | None = None) -> tuple[str, souls.Soul]:
        """Keep the soul `agent_name` has now (none, too, is kept) for a session spawned by `caller`: later
        reads with the returned snapshot id see this document whatever happens to the file. A step of spawn,
        so it needs no `soul` toolset; an invalid soul is kept too (the returned soul says so)."""
        row, data, soul = await self.snapshot_row(caller, agent_name)
        async with self.store.write(self.clock.now()) as tx:
            await tx.souls.insert_soul_snapshot(row, data)
        return row["id"], soul

    async def snapshot_row(self, caller: Caller, agent_name: str | None = None,
                           ) -> tuple[dict[str, Any], bytes | None, souls.Soul]:
        """`snapshot()` read but not written: the row and document for the caller's own transaction (a
        spawn writes its child's snapshot with the child, or nothing when it is refused)."""
        name = self._name(agent_name)
        soul, data = await self._load(name)
        snapshot_id = new_id("snap")
        row = {"id": snapshot_id, "agent_name": name, "digest": soul.digest if data is not None else None,
               "source": soul.config_provenance.source.value, "source_path": soul.source_path,
               "document_modified": soul.created_at, "created_at": self.clock.now(), "created_by": caller.session_id}
        return row, data, soul.model_copy(update={"snapshot_id": snapshot_id})

    async def _from_snapshot(self, agent_name: str | None, snapshot_id: str) -> souls.Soul:
        souls.SNAPSHOT.check(snapshot_id, "snapshot_id")
        row = await self.store.souls.soul_snapshot(snapshot_id)
        if row is None or (agent_name is not None and row.agent_name != agent_name):
            raise errors.NotFound("soul snapshot", snapshot_id)
        common = {"limits": self.limits, "enabled": self.settings.soul_enabled, "source": souls.Source.snapshot,
                  "snapshot_id": snapshot_id, "created_at": row.created_at}
        if row.content is None:
            return soul_parser.missing(row.agent_name, row.source_path, **common)
        return await anyio.to_thread.run_sync(partial(soul_parser.parse, row.content, row.source_path,
                                                      agent_name=row.agent_name, **common))

    async def _load(self, name: str) -> tuple[souls.Soul, bytes | None]:
        """The soul in the first place that has one (the workspace's, then the home's), and its bytes."""
        common = {"limits": self.limits, "enabled": self.settings.soul_enabled}
        found = None
        for root, parts, source in self._places():
            found = await anyio.to_thread.run_sync(_read, root, parts, name, source)
            if found.data is not None or found.problem is not None:
                break
        assert found is not None
        path = str(found.path)
        if found.problem is not None:
            return soul_parser.unreadable(name, path, found.problem, source=found.source, **common), None
        if found.data is None:
            return soul_parser.missing(name, path, source=found.source, **common), None
        soul = await anyio.to_thread.run_sync(partial(soul_parser.parse, found.data, path, agent_name=name,
                                                      source=found.source, created_at=found.modified, **common))
        return soul, found.data

    def _places(self) -> list[tuple[Path, tuple[str, ...], souls.Source]]:
        places = [(self.settings.home, HOME_PARTS, souls.Source.home)]
        if self.settings.soul_workspace is not None:
            places.insert(0, (self.settings.soul_workspace, WORKSPACE_PARTS, souls.Source.workspace))
        return places

    # ------------------------------------------------------------ import

    async def import_agent(self, caller: Caller, req: souls.SoulImport) -> souls.SoulImported:
        """Write a Claude Code agent file as `$AGENTDOCK_HOME/souls/<name>.md`, validated first: an invalid
        result, or an existing soul without `force`, writes nothing. Only the local user may."""
        caller.require(TOOLSET)
        if not caller.is_root:
            raise errors.PermissionDenied(f"session {caller.session_id} may not write souls; only the local user "
                                          "may import one", evidence={"session_id": caller.session_id})
        converted = soul_import.convert(req.content, req.name, self.settings.soul_max_bytes)
        path = self.settings.souls_dir / f"{converted.name}.md"
        soul = await anyio.to_thread.run_sync(partial(
            soul_parser.parse, converted.document, str(path), agent_name=converted.name, limits=self.limits,
            enabled=self.settings.soul_enabled, source=souls.Source.home, created_at=self.clock.now()))
        if not soul.valid:
            return souls.SoulImported(soul=soul, path=str(path), written=False, replaced=False,
                                      dropped_keys=converted.dropped_keys)
        try:
            replaced = await anyio.to_thread.run_sync(_write, self.settings.home, converted.name,
                                                      converted.document.encode(), req.force)
        except FileExistsError:
            raise errors.Conflict(f"a soul for {converted.name} already exists at {path}; import with --force "
                                  "(force: true) to replace it", suggested_command=f"agentdock soul get {converted.name}",
                                  evidence={"field": "force", "path": str(path)}) from None
        return souls.SoulImported(soul=soul, path=str(path), written=True, replaced=replaced,
                                  dropped_keys=converted.dropped_keys)


# ---------------------------------------------------------------- files (blocking: run in a worker thread)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _open_dirs(root: Path, parts: tuple[str, ...], *, create: bool = False) -> int | None:
    """A descriptor of `root/parts...`, each part opened without following a symbolic link (the root may be
    one); None when a part does not exist (and is not to be created)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                return None
            os.close(fd)
            fd = child
        opened, fd = fd, -1
        return opened
    finally:
        if fd != -1:
            os.close(fd)


def _read(root: Path, parts: tuple[str, ...], name: str, source: souls.Source) -> _File:
    path = root.joinpath(*parts, f"{name}.md")
    try:
        dir_fd = _open_dirs(root, parts)
    except FileNotFoundError:
        return _File(path, source, None, None, None)
    except OSError as exc:
        return _File(path, source, None, None, _why(exc, "a directory on the way"))
    if dir_fd is None:
        return _File(path, source, None, None, None)
    try:
        fd = os.open(f"{name}.md", _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return _File(path, source, None, None, None)
    except OSError as exc:
        return _File(path, source, None, None, _why(exc, "the file"))
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return _File(path, source, None, None, "not a regular file; a soul is a Markdown file")
        data = f.read(souls.MAX_SOURCE_BYTES)
    return _File(path, source, data, datetime.fromtimestamp(info.st_mtime, UTC), None)


def _why(exc: OSError, what: str) -> str:
    if exc.errno == errno.ELOOP:
        return f"{what} is a symbolic link; agentdock reads souls only from real directories and regular files"
    if exc.errno == errno.ENOTDIR:
        return f"{what} is not a directory"
    if exc.errno == errno.EACCES:
        return f"permission denied reading {what}"
    return f"cannot read {what} ({exc.strerror or type(exc).__name__})"


def _write(home: Path, name: str, document: bytes, force: bool) -> bool:
    """Write `souls/<name>.md` under `home` whole or not at all (a temporary file linked or renamed into
    place); without `force` an existing soul raises `FileExistsError`. Says whether one was replaced."""
    home.mkdir(parents=True, exist_ok=True)
    dir_fd = _open_dirs(home, HOME_PARTS, create=True)
    assert dir_fd is not None
    final, tmp = f"{name}.md", f".{name}.md.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(document)
                f.flush()
                os.fsync(f.fileno())
            if not force:
                os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
                return False
            try:
                os.stat(final, dir_fd=dir_fd, follow_symlinks=False)
                existed = True
            except FileNotFoundError:
                existed = False
            os.replace(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return existed
        finally:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
    finally:
        os.close(dir_fd)
