"""Signals to a run: TERM and KILL from inside its device (its process group), and from the host through the
device's cgroups when that cannot be done inside (at the pids limit), or for KILL; and the sweep that ends
whatever is left of a run and says what it used."""

from __future__ import annotations

import functools
import signal
from typing import Literal

import anyio

from engine import errors
from engine.ports import Swept
from runtimes import devices, naming, procs


class RunSignals(devices.Devices):
    """The signals and sweeps of `DockerBackend`."""

    _refusals_before: dict[str, int]
    """Per run: the device's count of refused forks when the run was first followed."""

    async def signal(self, device_id: str, run_id: str, signal_: Literal["TERM", "KILL"]) -> None:
        """Signal the command's process group from inside; if that is impossible (no room for a
        process at the pids limit), or for KILL, also every process of the command from the host."""
        name = naming.container_name(device_id)
        sent = await self._exec_signal(device_id, run_id, signal_)
        if signal_ == "KILL" or not sent:
            cgroup = await self._cgroup(name)
            if cgroup is None:
                return
            if signal_ == "KILL" and await anyio.to_thread.run_sync(cgroup.exhausted):
                await self._end_run(name, run_id)  # at the pids limit: everything of it, at once
            elif signal_ == "KILL":  # the wrapper and launcher stay to record the exit code
                await anyio.to_thread.run_sync(functools.partial(procs.stop_and_kill, cgroup, run_id,
                                                                 machinery=False), limiter=self._streams)
            else:
                procs.send(await anyio.to_thread.run_sync(functools.partial(
                    procs.run_processes, cgroup, run_id, machinery=False)), signal.SIGTERM)

    async def _exec_signal(self, device_id: str, run_id: str, signal_: str) -> bool:
        script = 'p=$(cat "$1/pid" 2>/dev/null) && [ -n "$p" ] && kill -' + signal_ + ' -"$p" 2>/dev/null; true'
        try:
            exec_id = (await self._call(self.api.exec_create, naming.container_name(device_id),
                                        ["sh", "-c", script, "agentdock-signal", f"{naming.RUNS_DIR}/{run_id}"],
                                        user=await self._run_user(device_id, run_id)))["Id"]
            await self._call(self.api.exec_start, exec_id)
            return (await self._call(self.api.exec_inspect, exec_id))["ExitCode"] == 0
        except (errors.NotFound, errors.Conflict, errors.SandboxUnavailable):
            return False  # gone, stopped, or no room for one more process

    async def sweep(self, device_id: str, run_id: str) -> Swept:
        name = naming.container_name(device_id)
        cgroup = await self._cgroup(name)
        if cgroup is None:  # the host cannot see the container's processes: do what can be done inside
            await self._exec_signal(device_id, run_id, "KILL")
            return Swept()
        find = functools.partial(procs.run_processes, cgroup, run_id)
        before = self._refusals_before.pop(run_id, None)
        own = cgroup.run(run_id)
        usage = await anyio.to_thread.run_sync(own.usage) if own is not None else procs.Usage()
        if usage.forks_refused is not None:  # the run's own count
            exhausted = usage.forks_refused > 0
        elif before is not None:  # did the device refuse a fork while the run ran?
            exhausted = cgroup.fork_refusals() > before
        else:  # followed since a restart: is it at the limit now, with the run's processes in it?
            exhausted = await anyio.to_thread.run_sync(cgroup.exhausted) and bool(await anyio.to_thread.run_sync(find))
        killed, _ = await self._end_run(name, run_id)
        return Swept(killed=killed, pids_exhausted=exhausted, pids_peak=usage.pids_peak,
                     memory_peak_bytes=usage.memory_peak_bytes, disk_full=await self.disk_full(device_id))

    async def _end_run(self, name: str, run_id: str) -> tuple[int, procs.Usage]:
        """Kill every process of the run from the host, never freezing the device: its own cgroups at
        once (`cgroup.kill`), then any process of it found outside them (stopped, then killed)."""
        cgroup = await self._cgroup(name)
        if cgroup is None:
            return 0, procs.Usage()

        def end() -> tuple[int, procs.Usage]:
            own = cgroup.run(run_id)
            usage = own.usage() if own is not None else procs.Usage()
            killed = own.kill() if own is not None else 0
            return killed + procs.stop_and_kill(cgroup, run_id), usage

        return await anyio.to_thread.run_sync(end, limiter=self._streams)
