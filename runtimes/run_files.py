"""A run's files in its device (RUNS_DIR/<run_id>): its output, exit and artifacts, read through Docker's
archive API only where the run's own uid owns them; what a follow's stream missed, and a stopped run's
end, read back from them."""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import AsyncIterator

import anyio
import docker
import docker.errors

from engine import errors
from engine.ports import Chunk, Ending, Exit, RunLaunch
from runtimes import devices, naming

log = logging.getLogger("agentdock.docker")
MISSED_STAT_ATTEMPTS = 4
"""How often the size of a run's output file is asked for before the follow gives up (and is retried)."""


class RunFiles(devices.Devices):
    """The runs' files of `DockerBackend`."""

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
            if member.uid != naming.run_uid(naming.run_id_of(path)):
                raise errors.PermissionDenied(f"{path} is not the run's own file")
            f = tar.extractfile(member)
            assert f is not None
            return f.read()

    async def artifact(self, device_id: str, run_id: str, index: int, path: str, max_bytes: int) -> bytes:
        name = naming.container_name(device_id)
        base = f"{naming.RUNS_DIR}/{run_id}/artifacts/{index}"
        try:
            data = await self._call(self._read_file, name, base, max_bytes)
        except errors.NotFound:
            reason = (await self._call(self._read_files, name, f"{naming.RUNS_DIR}/{run_id}/artifacts",
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

    async def remove_run_files(self, device_id: str, run_id: str) -> None:
        """Removed by the run's own user: no other may enter its directory (and root in a device, with
        every capability dropped, may not either)."""
        try:
            exec_id = (await self._call(self.api.exec_create, naming.container_name(device_id),
                                        ["rm", "-rf", f"{naming.RUNS_DIR}/{run_id}"],
                                        user=await self._run_user(device_id, run_id)))["Id"]
            await self._call(self.api.exec_start, exec_id)
        except errors.NotFound:
            pass  # the device is gone, and the files with it
        except (errors.Conflict, errors.SandboxUnavailable) as exc:
            log.warning("could not remove the files of %s in %s: %s", run_id, device_id, exc.message)

    async def _missed(self, name: str, run_id: str, offsets: dict[str, int]) -> AsyncIterator[Chunk]:
        """What the attached stream lost: a loaded Docker engine can end an exec's stream before the
        last of its output (seen under a load of 16 on two cores: a run 'succeeded' printing
        nothing). The run's files are the record; their sizes, from two stat requests, say whether
        anything is missing, and only then is the file read. A stat that fails is not taken for
        "nothing missed": it is asked again, and if Docker still cannot say, the follow fails
        (`SandboxUnavailable`) and the supervisor follows the run again from what it holds."""
        run_dir = f"{naming.RUNS_DIR}/{run_id}"
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
        files = await self._call(self._read_files, name, f"{naming.RUNS_DIR}/{run_id}", ("exit", "missing"))
        exit_text = files.get("exit", b"").strip()
        if not exit_text.lstrip(b"-").isdigit():
            return None
        ending = Ending.runtime_not_found if "missing" in files else Ending.exited
        return Exit(exit_code=int(exit_text), ending=ending)

    async def _settle_from_files(self, launch: RunLaunch, stdout_offset: int, stderr_offset: int,
                                 otherwise: Ending) -> AsyncIterator[Chunk | Exit]:
        """A run whose container stopped: pass on the output not yet seen, and its end if recorded."""
        name = naming.container_name(launch.device_id)
        run_dir = f"{naming.RUNS_DIR}/{launch.run_id}"
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
