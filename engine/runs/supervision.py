"""Supervision: following one admitted run to its end.

A run's process lives in its device and records its own output and end there, so a supervisor is
only a follower: it marks the run started, launches (or re-attaches to) the process, folds its
output into events, enforces the timeout and cancel on the injected clock, and settles the run in
two phases: record the result, clean up, then publish the end. A crash between the phases resumes
at publishing, so a process is never started twice and nobody sees a run ended while its
ephemeral sandbox is still there. A pooled sandbox (`engine.pool`) is the exception: the end is
published first and the sandbox removed after, so its removal never holds the run's slot.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Any

import anyio

from engine import errors, models
from engine.runs.output import Folded, OutputFolder
from engine.ports import Clock, DeviceSpec, Ending, Exit, Harness, HarnessInput, RunLaunch, SandboxBackend
from engine.gateway import Gateway
from engine.devices.models import DeviceRow
from engine.runs.models import RunRow
from engine.secrets import Masker, SecretStore
from engine.settings import Settings
from engine.store import Draft, Store, Tx

log = logging.getLogger("agentdock.runs")

STUCK_ROUNDS = 6
"""Grace periods after a run's cancel or timeout before its device is taken for stuck."""
TERMINAL = {models.RunStatus.succeeded, models.RunStatus.failed, models.RunStatus.canceled}


class EndedElsewhere(Exception):
    """The run's record was ended by another hand (the leader settled it for a daemon it declared lost):
    what this supervisor would write is rolled back."""


class Supervision:
    """One pass of following a run to its end, with its collaborators passed in."""

    def __init__(self, run_id: str, *, store: Store, backend: SandboxBackend, harnesses: Callable[[str], Harness],
                 ephemeral_spec: Callable[[DeviceRow, str], DeviceSpec], identity: Callable[[RunRow], dict[str, str]],
                 clock: Clock, settings: Settings, cancel: anyio.Event, secrets: SecretStore | None = None,
                 gateway: Gateway, resumed: bool = False) -> None:
        self.run_id = run_id
        self.secrets = secrets or SecretStore(settings.secrets_dir)
        self.gateway = gateway
        self.secret_env: dict[str, str] = {}
        self.resumed = resumed
        """Followed again after a restart: its process may have been started by the daemon before."""
        self.store = store
        self.backend = backend
        self.harnesses = harnesses
        self.ephemeral_spec = ephemeral_spec
        """(device_id, image, run_id) -> the spec of the run's ephemeral sandbox."""
        self.identity = identity
        """The run's own environment: who it is and how to call back (`Tokens.run_env`)."""
        self.clock = clock
        self.cfg = settings
        self.cancel = cancel
        self.timed_out = False
        self.leftover_files: str | None = None
        """The device that still holds the settled run's files (see `SandboxBackend.remove_run_files`)."""
        self.pooled: bool | None = None
        """Whether the run's ephemeral sandbox is a pooled device (known once its record is read)."""
        self.leftover_device: str | None = None
        """A used pooled device, removed by the caller once the run no longer counts (its end published)."""
        self.stuck_device: str | None = None
        """The device that stopped answering under this run (see `SandboxBackend.repair`)."""

    async def run(self) -> None:
        """Follow the run to its end; a failure of Docker or of this code settles it instead."""
        try:
            await self._run()
        except Exception as exc:  # a supervisor must never take the daemon down
            log.exception("supervisor of %s failed", self.run_id)
            try:
                await self._settle_on_error(exc)
            except Exception:
                log.exception("could not settle %s; the next start of the daemon will", self.run_id)

    async def _run(self) -> None:
        row = await self.store.runs.run(self.run_id)
        if row is None or row.status in TERMINAL:
            return
        if row.finished_at is not None:  # the result was recorded before a restart: publish it
            await self._publish()
            return
        if row.status is models.RunStatus.queued:
            now = self.clock.now()
            async with self.store.write(now) as tx:
                if not await tx.runs.transition_run(self.run_id, [models.RunStatus.queued], status="running",
                                               started_at=now):
                    return  # canceled before it was started
                await tx.append_events(self.run_id, [("run_started", "Run started", {"target_id": row.target_id})],
                                       group_id=row.agent_run_group_id)
            row = row.model_copy(update={"status": models.RunStatus.running, "started_at": now})
        self.row = row
        self.chunked = bool(row.output or row.stderr)  # kept text from before a restart may be in chunks
        self.harness = self.harnesses(row.provider.value)
        self.folder = OutputFolder.resuming(
            self.harness, self.cfg.output_cap_bytes,
            offsets={"stdout": row.stdout_offset, "stderr": row.stderr_offset},
            kept={"stdout": "" if self.harness.structured else row.output, "stderr": row.stderr},
            truncated={"stdout": row.output_truncated, "stderr": row.stderr_truncated})
        if row.secrets:  # resolved now, not at create: the values never sit in the record or a queue
            # One removed since the create fails the run (`secret_missing`), also one resumed after a
            # restart: without the value its output could not be masked (its process is stopped then).
            self.secret_env = self.secrets.environment(row.secrets)
            self.folder.mask = Masker(list(self.secret_env.values()))
            # A provider's credential stays with the gateway: the run gets a placeholder and its address
            # (kept out of the container's configuration like a secret, but not masked: it is no secret).
            kept, via_gateway = self.gateway.launch_env(self.run_id, self.secret_env, self.harness)
            self.secret_env = {**kept, **via_gateway}
        assert row.started_at is not None
        deadline = row.started_at + timedelta(seconds=row.timeout)
        for attempt in range(3):
            try:
                exit_ = await self._follow(await self._launch(), deadline)
                break
            except Exception as exc:
                # Docker failed a call (a busy engine, say): while the device is still up, follow
                # again from what was consumed; the process itself was never touched.
                cause = single(exc)
                if not isinstance(cause, errors.SandboxUnavailable) or isinstance(cause, errors.DeviceStuck) \
                        or attempt == 2:
                    raise
                state = await self.backend.inspect(row.target_id)
                if state is None or not state.running:
                    raise
                log.warning("following %s again after: %s", self.run_id, cause.message)
                self.folder.rewind_partial_line()
        await self._finish(exit_)

    async def _launch(self) -> RunLaunch:
        row = self.row
        device = await self.store.devices.device(row.target_id)
        if device is None:
            raise errors.SandboxUnavailable(f"device {row.target_id} no longer exists")
        spec = self.ephemeral_spec(device, self.run_id) if row.ephemeral else None
        self.pooled = device.pool is not None
        h = self.harness
        argv = h.argv(HarnessInput(prompt=row.prompt, command=row.command, model=row.model, cwd=row.cwd))
        cap = self.cfg.output_cap_bytes + 1  # one byte past the cap tells the record it was cut
        return RunLaunch(
            run_id=self.run_id, device_id=device.id, argv=argv, cwd=row.cwd,
            env={**device.env, **row.env, **self.identity(row)}, prompt=row.prompt, require=h.binary,
            secret_env=self.secret_env,
            stdout_offset=self.folder.offsets["stdout"], stderr_offset=self.folder.offsets["stderr"],
            stdout_cap=self.cfg.structured_stream_cap_bytes if h.structured else cap, stderr_cap=cap,
            artifact_paths=artifact_paths(row), artifact_max_bytes=self.cfg.artifact_max_bytes,
            ephemeral=spec,
        )

    async def _follow(self, launch: RunLaunch, deadline: datetime) -> Exit | None:
        """Pass the process's output to the folder until it ends, flushing it as events by size or
        every flush interval; the watchdog ends the process at the deadline or on cancel."""
        exit_: Exit | None = None
        flushing = anyio.Lock()

        async def flush() -> None:
            # Shielded: a flush drains the folder before it writes, so the end of the follow (which
            # cancels the flusher) must not cut it between the two, or what it drained is lost (seen:
            # runs recorded succeeded with no output, when the end came during a timed flush).
            with anyio.CancelScope(shield=True):
                async with flushing:
                    if self.folder.has_pending:
                        await self._flush()

        async def flusher() -> None:
            while True:
                await self.clock.sleep(self.cfg.flush_interval_seconds)
                await flush()

        async def watchdog() -> None:
            """On cancel or at the deadline: TERM the process group, then KILL after the grace."""
            if not self.row.cancel_requested:
                remaining = (deadline - self.clock.now()).total_seconds()
                self.timed_out = not await self.clock.wait(self.cancel, remaining)
            await self.backend.signal(launch.device_id, self.run_id, "TERM")
            rounds = 0
            while True:  # until the follower sees the end (a process that started late is caught too)
                await self.clock.sleep(self.cfg.cancel_grace_seconds)
                rounds += 1
                if rounds < 3:
                    await self.backend.signal(launch.device_id, self.run_id, "KILL")
                elif rounds < STUCK_ROUNDS:  # the run broke its own wrapper (removed its files, say)
                    await self.backend.sweep(launch.device_id, self.run_id)  # everything of it, at once
                else:  # a sweep kills the follower's wrapper too: its device is not answering
                    raise errors.DeviceStuck(
                        f"the run's device {launch.device_id} did not answer: the run could not be ended there "
                        f"{rounds} grace periods after its {'cancel' if not self.timed_out else 'timeout'}; "
                        "the device is being repaired", suggested_command=f"agentdock sandbox get {launch.device_id}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(watchdog)
            tg.start_soon(flusher)
            async with aclosing(self.backend.follow(launch)) as stream:  # type: ignore[type-var]
                async for item in stream:
                    if isinstance(item, Exit):
                        exit_ = item
                        break
                    self.folder.take(item)
                    if self.folder.pending_bytes >= self.cfg.flush_bytes:
                        await flush()
            tg.cancel_scope.cancel()
        return exit_

    async def _flush(self) -> None:
        folded = self.folder.drain()
        try:
            async with self.store.write(self.clock.now()) as tx:
                fields = await self._kept(tx, folded, direct=False)
                if not await tx.runs.transition_run(self.run_id, [models.RunStatus.running], **fields):
                    raise EndedElsewhere
                await tx.append_events(self.run_id, folded.events, group_id=self.row.agent_run_group_id)
        except EndedElsewhere:
            self.cancel.set()  # nothing more of it can be recorded: stop its process

    async def _kept(self, tx: Tx, folded: Folded, *, direct: bool) -> dict[str, Any]:
        """The record's fields for what the folder drained (offsets, flags, a new answer). Newly
        kept text goes in as chunks, or, when nothing was chunked yet (`direct`), straight into them."""
        fields: dict[str, Any] = {"stdout_offset": folded.offsets["stdout"], "stderr_offset": folded.offsets["stderr"],
                                  "output_truncated": folded.truncated["stdout"],
                                  "stderr_truncated": folded.truncated["stderr"]}
        if folded.answer is not None:
            fields["output"] = folded.answer
        for stream, text in folded.kept.items():
            if not text:
                continue
            if direct:
                fields["output" if stream == "stdout" else "stderr"] = text
            else:
                await tx.runs.append_output(self.run_id, stream, text)
                self.chunked = True
        return fields

    async def _finish(self, exit_: Exit | None) -> None:
        self.folder.end()
        last = self.folder.drain() if self.folder.has_pending else None  # written with the result
        row = self.row
        usage: dict[str, Any] = {}
        # An ephemeral sandbox goes, with everything in it, when the run is published; a pooled one goes
        # only after, and its run was exec'd like one in any device: swept (and measured) like one.
        if not row.ephemeral or self.pooled:
            swept = await self.backend.sweep(row.target_id, self.run_id)  # whatever the run left running
            if swept.pids_exhausted and (exit_ is None or exit_.ending in (Ending.exited, Ending.lost)):
                exit_ = Exit(exit_code=None, ending=Ending.pids_exhausted)  # a fork bomb, spent or not
            elif swept.disk_full and (exit_ is None or exit_.ending is Ending.lost or (
                    exit_.ending is Ending.exited and exit_.exit_code != 0)):
                exit_ = Exit(exit_code=exit_.exit_code if exit_ else None, ending=Ending.disk_full)
            usage = {"pids_peak": swept.pids_peak, "memory_peak_bytes": swept.memory_peak_bytes}
        elif exit_ is not None and exit_.ending is Ending.exited and exit_.exit_code != 0 and \
                await self.backend.disk_full(row.target_id):  # the run was the sandbox's own process
            exit_ = Exit(exit_code=exit_.exit_code, ending=Ending.disk_full)
        kind, error = self._classify(exit_, row)
        if error and self.folder.mask:  # an adapter's message may quote what the runtime said
            error = self.folder.mask.line(error)
        exported = await self._export_artifacts(row)
        code = exit_.exit_code if exit_ is not None else None
        now = self.clock.now()
        async with self.store.write(now) as tx:
            fields: dict[str, Any] = dict(usage)
            events = list(exported)
            if last is not None:
                fields.update(await self._kept(tx, last, direct=not self.chunked))
                events = [*last.events, *exported]
            if self.chunked:
                await tx.runs.fold_output(self.run_id)
            if row.ephemeral and not self.pooled:
                # only while it is still running: a record ended elsewhere (the leader, for a daemon it
                # declared lost) keeps its end, and `_publish` below just removes the sandbox
                if await tx.runs.transition_run(self.run_id, [models.RunStatus.running], exit_code=code,
                                           failure_kind=kind, error=error, finished_at=now, **fields):
                    await tx.append_events(self.run_id, events, group_id=row.agent_run_group_id)
            else:  # nothing to clean up before the end is published: record and publish in one step
                await self._end(tx, row, events, code, kind, error, now, fields)
        if row.ephemeral and not self.pooled:
            # Two phases: the result is recorded (still `running`); remove the sandbox, then publish
            # the end. A crash in between resumes at publishing, so the run never starts again.
            await self._publish(row.model_copy(update={"exit_code": code, "failure_kind": kind, "error": error,
                                                       "finished_at": now}))
        elif self.pooled:
            # A pooled sandbox goes after the end is published, outside the run's slot: its record went
            # with the end, so a crash before its removal leaves a container the reconciler removes.
            self.leftover_device = row.target_id
        else:
            self.leftover_files = row.target_id  # removed by the caller, once this run no longer counts

    async def _end(self, tx: Tx, row: RunRow, events: list[Draft], code: int | None, kind: str | None,
                   error: str | None, now: datetime, fields: dict[str, Any] | None = None) -> bool:
        """Publish the run's end (its result and `run_finished`) in `tx`; False if it already was."""
        status = status_of(kind)
        if not await tx.runs.transition_run(self.run_id, [models.RunStatus.running, models.RunStatus.queued],
                                       status=status, exit_code=code, failure_kind=kind, error=error,
                                       finished_at=row.finished_at or now, **(fields or {})):
            return False
        await tx.append_events(self.run_id, [*events, ("run_finished", f"Run {status}", {
            "status": status, "exit_code": code, "failure_kind": kind})], group_id=row.agent_run_group_id)
        if row.ephemeral:
            await tx.devices.delete_device(row.target_id)
        return True

    async def _publish(self, row: RunRow | None = None) -> None:
        """Publish a result already recorded (`row`, when the caller has just written it): remove the
        ephemeral sandbox first, then the end."""
        row = row or await self.store.runs.run(self.run_id)
        assert row is not None
        if row.ephemeral and self.pooled is None:
            device = await self.store.devices.device(row.target_id)
            self.pooled = device is not None and device.pool is not None
        if row.ephemeral and not self.pooled:
            try:
                await self.backend.remove(row.target_id)
            except errors.EngineError:  # Docker unreachable: the reconciler removes it on the next start
                log.warning("could not remove the ephemeral sandbox %s of %s", row.target_id, self.run_id)
        async with self.store.write(self.clock.now()) as tx:
            await tx.runs.fold_output(self.run_id)
            await self._end(tx, row, [], row.exit_code, row.failure_kind, row.error, self.clock.now())
        if self.pooled:
            self.leftover_device = row.target_id
        elif not row.ephemeral:
            self.leftover_files = row.target_id

    async def _settle_on_error(self, exc: Exception) -> None:
        row = await self.store.runs.run(self.run_id)
        if row is None or row.status in TERMINAL:
            return
        exc = single(exc)  # type: ignore[assignment]
        kind = "sandbox_lost" if isinstance(exc, errors.SandboxUnavailable) else "backend_error"
        if isinstance(exc, errors.SandboxUnavailable) and not row.ephemeral:
            self.stuck_device = row.target_id  # repaired by the caller, outside the run's slot
        if isinstance(exc, errors.InvalidInput) and exc.field.startswith("secrets"):
            kind = "secret_missing"  # removed since the run's create
            if self.resumed and not row.ephemeral:  # its process may run, unmasked: stop it (an ephemeral
                try:                                # sandbox goes with everything in it when published)
                    await self.backend.sweep(row.target_id, self.run_id)
                except errors.EngineError:
                    log.warning("could not stop %s after its secret was removed", self.run_id)
        if row.finished_at is None:  # a result already recorded stands; only its publishing failed
            async with self.store.write(self.clock.now()) as tx:
                await tx.runs.transition_run(self.run_id, [models.RunStatus.running, models.RunStatus.queued],
                                        failure_kind=kind, error=str(exc)[:2000], finished_at=self.clock.now())
        await self._publish()

    def _classify(self, exit_: Exit | None, row: RunRow) -> tuple[str | None, str | None]:
        """The run's failure_kind and error (None, None: it succeeded)."""
        if row.cancel_requested or self.cancel.is_set():
            return "canceled", "canceled by request"
        if self.timed_out:
            return "timeout", f"timed out after {row.timeout} s"
        ending = exit_.ending if exit_ is not None else Ending.lost
        if ending is Ending.lost:
            return "process_lost", "the run's process ended without recording an exit code"
        if ending is Ending.sandbox_lost:
            return "sandbox_lost", "the run's sandbox stopped or disappeared while it ran"
        if ending is Ending.pids_exhausted:
            return "pids_exhausted", (
                "the run filled its sandbox's process limit (a fork bomb?); every process it started was killed")
        if ending is Ending.disk_full:
            return "disk_full", (
                "the run failed with its sandbox's /workspace or /tmp full; delete files there to make room "
                "(their sizes: AGENTDOCK_SANDBOX_WORKSPACE_MB, AGENTDOCK_SANDBOX_TMP_MB and the computer ones)")
        if ending is Ending.runtime_not_found:
            return "runtime_not_found", (
                f"the {row.provider.value} runtime ({self.harness.binary}) is not installed in the device's image; "
                f"build an image with it (`agentdock image build --runtimes {row.provider.value}` makes "
                "agentdock-agents:latest) and run in a sandbox of that image, or use provider custom with your "
                "own command")
        assert exit_ is not None
        if exit_.exit_code == 0:
            return None, None
        classify = getattr(self.harness, "classify", None)
        failure = classify(exit_.exit_code, self.folder.stderr_tail, self.folder.failure) if classify else None
        if failure is not None:
            return failure.kind, failure.message
        return "nonzero_exit", f"exited with code {exit_.exit_code}"

    async def _export_artifacts(self, row: RunRow) -> list[Draft]:
        """Read back the files the run's user copied out when its process ended (see RunLaunch)."""
        events: list[Draft] = []
        for index, path in enumerate(artifact_paths(row)):
            try:
                data = await self.backend.artifact(row.target_id, self.run_id, index, path,
                                                   self.cfg.artifact_max_bytes)
            except errors.EngineError as exc:
                events.append(("artifact_exported", f"Artifact {path} not exported: {exc.message}",
                               {"path": path, "ok": False, "error": exc.code,
                                "diagnostic": exc.diagnostic().model_dump(mode="json")}))
                continue
            digest = hashlib.sha256(data).hexdigest()
            stored = f"{self.run_id}/{digest}"
            target = self.cfg.artifacts_dir / stored
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            async with self.store.write(self.clock.now()) as tx:
                await tx.runs.upsert_artifact(self.run_id, path, len(data), digest, stored)
            events.append(("artifact_exported", f"Exported {path}", {"path": path, "ok": True, "size": len(data),
                                                                    "sha256": digest}))
        return events


def single(exc: BaseException) -> BaseException:
    """What a task group raised, out of its group when it is the only one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def artifact_paths(row: RunRow) -> list[str]:
    return [models.workspace_path(p) for p in (row.metadata or {}).get("artifact_paths") or []]


def status_of(failure_kind: str | None) -> str:
    return "succeeded" if failure_kind is None else ("canceled" if failure_kind == "canceled" else "failed")

