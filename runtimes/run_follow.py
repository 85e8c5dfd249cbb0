"""Following a run: launching its wrapper (exec'd in a long-lived device, or as an ephemeral run's
container's main process), passing on its output as it comes, and its end (from the wrapper's trailer,
its recorded exit, or what the host shows of the device), whatever the daemon or Docker did between."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import anyio
from docker.utils.socket import frames_iter

from engine import errors
from engine.ports import Chunk, DeviceSpec, Ending, Exit, RunLaunch
from runtimes import docker_calls, naming, procs, run_files, run_signals, wrapper

ADOPT_SECONDS = 5.0
"""How long the daemon looks for a new wrapper to move into its run's cgroups (the wrapper waits a
little longer, then goes on without: its run is then ended by its processes' environment)."""
FORK_FAILED = (b"can't fork", b"Cannot fork", b"Resource temporarily unavailable")
"""What a shell says when it cannot create a process (busybox ash, dash, bash)."""
STREAM_IDS = {1: "stdout", 2: "stderr"}
MAX_STREAM_CUTS = 200
"""How often a run's attached stream may end early (the wrapper still running) and be followed
again before the wrapper is treated as gone."""


class RunFollow(run_signals.RunSignals, run_files.RunFiles):
    """The runs of `DockerBackend`."""

    _whole: set[str]
    """Runs whose last follow's stream ended with the wrapper's trailer: nothing was missed."""

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
        name = naming.container_name(launch.device_id)
        if state.running:
            # Re-attaching to an ephemeral run after a restart: its main process is the first wrapper,
            # which stops the container when the run ends; wait for that, then read the files.
            await anyio.to_thread.run_sync(functools.partial(docker_calls.translated, self.api.wait, name),
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
                    async for chunk in self._missed(naming.container_name(launch.device_id), launch.run_id, offsets):
                        yield chunk
                self._whole.discard(launch.run_id)
                yield item
                return
            offsets[item.stream] += len(item.data)
            yield item

    async def _keeps_alive(self, device_id: str) -> bool:
        """Whether an ephemeral run's container was made a device (its main process the keepalive)."""
        info = await self._inspect(naming.container_name(device_id))
        return info is not None and (info.get("Config") or {}).get("Cmd") == naming.KEEPALIVE

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
        up = await self._cgroup(naming.container_name(launch.device_id)) is not None
        state = None if up else await self.inspect(launch.device_id)
        if up or (state is not None and state.running):
            async for item in self._follow_exec_whole(launch):
                yield item
            return
        if state is not None and launch.stdout_offset == launch.stderr_offset == 0 and await self._call(
                self._file_size, naming.container_name(launch.device_id), f"{naming.RUNS_DIR}/{launch.run_id}") is None:
            await self.remove(launch.device_id)
        async for item in self._follow_ephemeral_exec(launch, spec):
            yield item

    async def _run_ephemeral(self, launch: RunLaunch, spec: DeviceSpec) -> AsyncIterator[Chunk | Exit]:
        """The run is the container's main process: attach before start so nothing is missed."""
        name = naming.container_name(spec.device_id)
        run_user = await self._image_user(spec.image)
        await self._call(self._create, spec, wrapper.command(launch), wrapper.environment(launch, 0, 0),
                         user=f"{naming.run_uid(launch.run_id)}:{naming.image_ids(run_user)[1]}", run_user=run_user)
        sock = await self._call(self.api.attach_socket, name, params={"stdout": 1, "stderr": 1, "stream": 1})
        tail = b""
        seen = {"stdout": 0, "stderr": 0}
        trailer = wrapper.Trailer()
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
            if (stream == "stderr" and (last := logged.rfind(wrapper.TRAILER_MARK)) >= 0
                    and wrapper.TRAILER.fullmatch(logged[last:])):
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
        name = naming.container_name(launch.device_id)
        offsets = {"stdout": launch.stdout_offset, "stderr": launch.stderr_offset}
        if launch.run_id not in self._refusals_before and launch.stdout_offset == launch.stderr_offset == 0:
            cgroup = await self._cgroup(name)
            if cgroup is not None:
                self._refusals_before[launch.run_id] = cgroup.fork_refusals()
        failures = cuts = 0
        while failures < 3:
            env = wrapper.environment(launch, offsets["stdout"], offsets["stderr"])
            cgroup = await self._cgroup(name)
            run_cgroup = cgroup.run(launch.run_id) if cgroup is not None else None
            if run_cgroup is not None:
                env["AGENTDOCK_CGROUP"] = procs.run_cgroup_name(launch.run_id)
            try:
                user = await self._run_user(launch.device_id, launch.run_id)
                exec_id = (await self._call(self.api.exec_create, name, wrapper.command(launch),
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
                    trailer = wrapper.Trailer()
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
            except (errors.SandboxUnavailable, errors.NotFound):
                pass  # the exec could not start (at the pids limit, say), or its container went: look closer below
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

    async def _frames(self, sock: Any) -> AsyncIterator[Chunk]:
        frames = frames_iter(sock, tty=False)
        while True:
            frame = await anyio.to_thread.run_sync(next, frames, None, limiter=self._streams, abandon_on_cancel=True)
            if frame is None:
                return
            stream, data = frame
            if data and stream in STREAM_IDS:
                yield Chunk(stream=STREAM_IDS[stream], data=data)  # type: ignore[arg-type]
