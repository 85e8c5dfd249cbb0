"""Agent runs: create, supervise (stream, coalesce, time out, cancel), settle, and reconcile after a restart.

A run's process lives in its device and records its own output and exit code there, so the
supervisor is only a follower: after a daemon restart `reconcile()` starts a supervisor for every
unfinished run, which resumes from the byte offsets committed with the last events.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
from collections.abc import Callable
from contextlib import aclosing
from datetime import timedelta
from typing import Any

import anyio
from anyio.abc import TaskGroup

from engine import errors, ids, models
from engine.callers import Caller
from engine.devices import DeviceService
from engine.ports import (
    Chunk,
    Clock,
    Ending,
    Exit,
    Harness,
    HarnessInput,
    RunLaunch,
    SandboxBackend,
)
from engine.settings import Settings
from engine.store import Store, new_id

log = logging.getLogger("agentdock.runs")

TERMINAL = {models.RunStatus.succeeded, models.RunStatus.failed, models.RunStatus.canceled}


class Changes:
    """Wakes waiters when a run changes (new events or a new status)."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}

    def notify(self, run_id: str) -> None:
        ev = self._events.pop(run_id, None)
        if ev is not None:
            ev.set()

    def watch(self, run_id: str) -> anyio.Event:
        """Take this before reading state, then wait on it: a change after the read still wakes it."""
        return self._events.setdefault(run_id, anyio.Event())

    @staticmethod
    async def wait(ev: anyio.Event, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await ev.wait()


class RunService:
    def __init__(
        self,
        store: Store,
        backend: SandboxBackend,
        devices: DeviceService,
        harnesses: Callable[[str], Harness],
        clock: Clock,
        settings: Settings,
    ) -> None:
        self.store = store
        self.backend = backend
        self.devices = devices
        self.harnesses = harnesses
        self.clock = clock
        self.settings = settings
        self.changes = Changes()
        self._tg: TaskGroup | None = None
        self._cancel: dict[str, anyio.Event] = {}
        self._supervised: set[str] = set()

    # ------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the supervisors' task group; reconcile unfinished runs, then report ready."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self.reconcile()
            task_status.started()
            await anyio.sleep_forever()

    async def reconcile(self) -> None:
        """Resume every unfinished run and remove containers nothing owns."""
        await self.devices.reconcile()
        for state in await self.backend.list_owned():
            if state.paused:  # frozen by a sweep the daemon did not live to finish
                await self.backend.start(state.device_id)
        unfinished = {r["id"] for r in await self.store.unfinished_runs()}
        for run_id in unfinished:
            self._supervise(run_id)
        for state in await self.backend.list_owned():
            if state.ephemeral and state.run_id not in unfinished:
                await self.backend.remove(state.device_id)
                async with self.store.write(self.clock.now()) as tx:
                    await tx.delete_device(state.device_id)

    def _supervise(self, run_id: str) -> None:
        assert self._tg is not None, "RunService.serve() is not running"
        if run_id not in self._supervised:
            self._supervised.add(run_id)
            self._cancel.setdefault(run_id, anyio.Event())
            self._tg.start_soon(self._supervisor, run_id)

    # ------------------------------------------------------------ requests

    async def create(self, caller: Caller, req: models.RunCreate) -> models.Run:
        caller.require("runs")
        if req.idempotency_key:
            existing = await self._same_request(caller, req)
            if existing is not None:
                return existing
        kind, target_id = req.target()
        harness = self.harnesses(req.provider.value)  # type: ignore[union-attr]
        now = self.clock.now()
        run_id = new_id("run")
        device_row = None
        if target_id is None:
            dreq = models.DeviceCreate(kind=models.TargetKind.sandbox)
            spec = self.devices.spec(dreq, run_id=run_id)
            device_row = self.devices.row(caller, spec, dreq)
            if not await self.backend.image_exists(spec.image):
                raise errors.InvalidInput("image", f"the default image {spec.image} is not built",
                                          suggested_command="agentdock image build")
            kind, target_id = models.TargetKind.sandbox, spec.device_id
        else:
            try:
                device = await self.devices.get(caller, target_id)
            except errors.NotFound:
                field = "sandbox_id" if req.sandbox_id else "computer_id" if req.computer_id else "target_id"
                raise errors.NotFound("sandbox", target_id, evidence={"field": field}) from None
            if kind is not None and kind != device.kind:
                raise errors.InvalidInput("target_kind", f"{target_id} is a {device.kind.value}, not a {kind.value}")
            if device.status == models.DeviceStatus.stopped:
                await self.devices.restart(caller, target_id)  # it stopped under an earlier run: its files are intact
            elif device.status != models.DeviceStatus.running:
                raise errors.Conflict(
                    f"{target_id} is {device.status.value}; runs need a running device",
                    suggested_command="agentdock sandbox create",
                )
            kind = device.kind
        row = {
            "id": run_id, "target_kind": kind.value, "target_id": target_id, "provider": req.provider.value,  # type: ignore[union-attr]
            "prompt": req.prompt, "command": req.command, "model": req.model, "cwd": req.cwd,
            "timeout": req.timeout, "metadata": req.metadata, "env": req.env or {},
            "status": models.RunStatus.queued.value, "ephemeral": device_row is not None,
            "idempotency_key": req.idempotency_key, "request_hash": _hash(req.fingerprint()),
            "created_at": now, "updated_at": now, "created_by": caller.session_id,
        }
        try:
            async with self.store.write(now) as tx:
                if device_row is not None:
                    await tx.insert_device(device_row)
                await tx.insert_run(row)
                await tx.append_events(run_id, [("run_queued", "Run queued", {
                    "provider": row["provider"], "target_id": target_id, "runtime_binary": harness.binary})])
        except Exception as exc:
            if req.idempotency_key and "UNIQUE" in str(exc):
                existing = await self._same_request(caller, req)
                if existing is not None:
                    return existing
            raise
        self._supervise(run_id)
        return await self.get(caller, run_id)

    async def _same_request(self, caller: Caller, req: models.RunCreate) -> models.Run | None:
        row = await self.store.run_by_idempotency_key(caller.session_id, req.idempotency_key)  # type: ignore[arg-type]
        if row is None:
            return None
        if row["request_hash"] != _hash(req.fingerprint()):
            raise errors.Conflict(
                f"idempotency key {req.idempotency_key!r} was already used for a different request (run {row['id']})",
                suggested_command=f"agentdock runs get {row['id']}",
                evidence={"run_id": row["id"], "idempotency_key": req.idempotency_key},
            )
        return _run(row)

    async def get(self, caller: Caller, run_id: str) -> models.Run:
        caller.require("runs")
        ids.RUN.check(run_id, "run_id")  # the surfaces check it too; this is the last line
        row = await self.store.run(run_id)
        if row is None or not caller.sees(row["created_by"]):
            raise errors.NotFound("run", run_id)
        return _run(row)

    async def list(self, caller: Caller, q: models.RunListQuery) -> models.RunList:
        caller.require("runs")
        if q.cursor and await self.store.run(q.cursor) is None:
            raise errors.InvalidInput("cursor", "unknown cursor; pass the next_cursor of a previous page")
        rows = await self.store.runs(q, created_by=None if caller.is_root else caller.session_id)
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        return models.RunList(data=[_run(r) for r in rows], next_cursor=rows[-1]["id"] if more else None)

    async def events(self, caller: Caller, run_id: str, q: models.EventsQuery) -> models.RunEventList:
        """Events after `q.after`; with `q.wait`, long-poll until one arrives or the run ends."""
        deadline = self.clock.monotonic() + q.wait
        while True:
            changed = self.changes.watch(run_id)
            run = await self.get(caller, run_id)
            rows = await self.store.events(run_id, q.after, q.limit)
            remaining = deadline - self.clock.monotonic()
            if rows or run.status in TERMINAL or remaining <= 0:
                break
            await self.changes.wait(changed, remaining)
        data = [_event(r) for r in rows]
        return models.RunEventList(data=data, run_status=run.status, next_after=data[-1].sequence if data else q.after)

    async def wait(self, caller: Caller, run_id: str, timeout: float) -> models.Run:
        """The run once it has ended, or as it is when `timeout` passes."""
        with anyio.move_on_after(timeout):
            while True:
                changed = self.changes.watch(run_id)
                if (await self.get(caller, run_id)).status in TERMINAL:
                    break
                await self.changes.wait(changed, 5)
        return await self.get(caller, run_id)

    async def cancel(self, caller: Caller, run_id: str) -> models.Run:
        """Ask the run to stop (TERM, then KILL after a grace); waits, bounded, for it to settle."""
        run = await self.get(caller, run_id)
        if run.status is models.RunStatus.canceled:
            return run
        if run.status in TERMINAL:
            raise errors.InvalidTransition(f"run {run_id} already {run.status.value}; only unfinished runs can be canceled")
        now = self.clock.now()
        async with self.store.write(now) as tx:
            await tx.update_run(run_id, cancel_requested=now)
        self._cancel.setdefault(run_id, anyio.Event()).set()
        self._supervise(run_id)
        return await self.wait(caller, run_id, self.settings.cancel_grace_seconds + 10)

    async def artifacts(self, caller: Caller, run_id: str) -> models.ArtifactList:
        await self.get(caller, run_id)
        return models.ArtifactList(data=[
            models.Artifact(agent_run_id=run_id, path=a["path"], size=a["size"], sha256=a["sha256"],
                            created_at=a["created_at"])
            for a in await self.store.artifacts(run_id)
        ])

    async def artifact_bytes(self, caller: Caller, run_id: str, path: str) -> bytes:
        await self.get(caller, run_id)
        try:
            resolved = models.workspace_path(path)
        except ValueError as exc:
            raise errors.InvalidInput("path", str(exc)) from None
        row = await self.store.artifact(run_id, resolved)
        if row is None:
            raise errors.NotFound("artifact", f"{run_id}:{path}", suggested_command=f"agentdock runs artifacts {run_id}")
        return (self.settings.artifacts_dir / row["stored_as"]).read_bytes()

    # ------------------------------------------------------------ supervision

    async def _supervisor(self, run_id: str) -> None:
        try:
            await _Supervision(self, run_id).run()
        except Exception as exc:  # the supervisor must never take the daemon down
            log.exception("supervisor of %s failed", run_id)
            try:
                await self._settle_on_error(run_id, exc)
            except Exception:
                log.exception("could not settle %s; the next start of the daemon will", run_id)
        finally:
            self._supervised.discard(run_id)
            self._cancel.pop(run_id, None)
            self.changes.notify(run_id)

    async def _settle_on_error(self, run_id: str, exc: Exception) -> None:
        row = await self.store.run(run_id)
        if row is None or row["status"] in TERMINAL:
            return
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # the follower's task group wraps what the backend raised
        kind = "sandbox_lost" if isinstance(exc, errors.SandboxUnavailable) else "backend_error"
        if row["finished_at"] is None:  # a result already recorded stands; only its publishing failed
            async with self.store.write(self.clock.now()) as tx:
                await tx.update_run(run_id, failure_kind=kind, error=str(exc)[:2000], finished_at=self.clock.now())
        await _Supervision(self, run_id)._publish()


class _Supervision:
    """One pass of following a run to its end. Holds the stream decoding and coalescing state."""

    def __init__(self, svc: RunService, run_id: str) -> None:
        self.svc = svc
        self.run_id = run_id
        self.cfg = svc.settings
        self.pending: list[tuple[str, str, dict[str, Any]]] = []
        self.pending_bytes = 0
        self.first_pending_at: float | None = None
        self.dec = {"stdout": codecs.getincrementaldecoder("utf-8")("replace"),
                    "stderr": codecs.getincrementaldecoder("utf-8")("replace")}
        self.line_buf = b""
        self.timed_out = False

    async def run(self) -> None:
        svc, now = self.svc, self.svc.clock.now()
        row = await svc.store.run(self.run_id)
        if row is None or row["status"] in TERMINAL:
            return
        if row["finished_at"] is not None:  # the result was recorded before a restart: publish it
            await self._publish()
            return
        self.row = row
        self.harness = svc.harnesses(row["provider"])
        self.output, self.stderr = row["output"], row["stderr"]
        self.offsets = {"stdout": row["stdout_offset"], "stderr": row["stderr_offset"]}
        self.truncated = {"stdout": row["output_truncated"], "stderr": row["stderr_truncated"]}
        self.kept = {"stdout": len(self.output.encode()), "stderr": len(self.stderr.encode())}
        if row["status"] == models.RunStatus.queued:
            async with svc.store.write(now) as tx:
                await tx.update_run(self.run_id, status="running", started_at=now)
                await tx.append_events(self.run_id, [("run_started", "Run started", {"target_id": row["target_id"]})])
            row["started_at"] = now
            svc.changes.notify(self.run_id)
        started = row["started_at"] if not isinstance(row["started_at"], str) else _parse_ts(row["started_at"])
        deadline = started + timedelta(seconds=row["timeout"])

        exit_ = await self._follow(await self._launch(), deadline)
        await self._finish(exit_)

    async def _launch(self) -> RunLaunch:
        row = self.row
        device = await self.svc.store.device(row["target_id"])
        if device is None:
            raise errors.SandboxUnavailable(f"device {row['target_id']} no longer exists")
        spec = None
        if row["ephemeral"]:
            spec = self.svc.devices.spec(
                models.DeviceCreate(kind=models.TargetKind.sandbox, image=device["image"]),
                device_id=device["id"], run_id=self.run_id)
        h = self.harness
        argv = h.argv(HarnessInput(prompt=row["prompt"], command=row["command"], model=row["model"], cwd=row["cwd"]))
        cap = self.cfg.output_cap_bytes + 1  # one byte past the cap tells the record it was cut
        return RunLaunch(
            run_id=self.run_id, device_id=device["id"], argv=argv, cwd=row["cwd"],
            env={**device["env"], **row["env"]}, prompt=row["prompt"], require=h.binary,
            stdout_offset=self.offsets["stdout"], stderr_offset=self.offsets["stderr"],
            stdout_cap=self.cfg.structured_stream_cap_bytes if h.structured else cap, stderr_cap=cap,
            artifact_paths=self._artifact_paths(row), artifact_max_bytes=self.cfg.artifact_max_bytes,
            ephemeral=spec,
        )

    @staticmethod
    def _artifact_paths(row: dict[str, Any]) -> list[str]:
        return [models.workspace_path(p) for p in (row["metadata"] or {}).get("artifact_paths") or []]

    async def _follow(self, launch: RunLaunch, deadline: Any) -> Exit | None:
        svc = self.svc
        send, receive = anyio.create_memory_object_stream[Chunk | Exit](64)
        exit_: Exit | None = None

        async def pump() -> None:
            async with send, aclosing(svc.backend.follow(launch)) as stream:  # type: ignore[type-var]
                async for item in stream:
                    await send.send(item)

        async def watchdog() -> None:
            """On cancel or at the deadline: TERM the process group, then KILL after the grace."""
            cancel = svc._cancel.setdefault(self.run_id, anyio.Event())
            if not self.row["cancel_requested"]:
                remaining = (deadline - svc.clock.now()).total_seconds()
                with anyio.move_on_after(max(remaining, 0)) as timer:
                    await cancel.wait()
                self.timed_out = timer.cancelled_caught
            await svc.backend.signal(launch.device_id, self.run_id, "TERM")
            rounds = 0
            while True:  # until the follower sees the end (a process that started late is caught too)
                await anyio.sleep(self.cfg.cancel_grace_seconds)
                rounds += 1
                if rounds < 3:
                    await svc.backend.signal(launch.device_id, self.run_id, "KILL")
                else:  # the run broke its own wrapper (removed its files, say): end everything of it
                    await svc.backend.sweep(launch.device_id, self.run_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            dog = anyio.CancelScope()

            async def run_dog() -> None:
                with dog:
                    await watchdog()

            tg.start_soon(run_dog)
            async with receive:
                while True:
                    timeout = None
                    if self.first_pending_at is not None:
                        timeout = max(0.0, self.first_pending_at + self.cfg.flush_interval_seconds - svc.clock.monotonic())
                    with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                        try:
                            item = await receive.receive()
                        except anyio.EndOfStream:
                            break
                        if isinstance(item, Exit):
                            exit_ = item
                            break
                        self._take(item)
                    if self.first_pending_at is not None and (
                        self.pending_bytes >= self.cfg.flush_bytes
                        or svc.clock.monotonic() - self.first_pending_at >= self.cfg.flush_interval_seconds
                    ):
                        await self._flush()
            dog.cancel()
            tg.cancel_scope.cancel()
        return exit_

    def _take(self, chunk: Chunk) -> None:
        """Fold a chunk into pending events and the kept text."""
        if self.first_pending_at is None:
            self.first_pending_at = self.svc.clock.monotonic()
        self.pending_bytes += len(chunk.data)
        if chunk.stream == "stdout" and self.harness.structured:
            self.line_buf += chunk.data
            *lines, self.line_buf = self.line_buf.split(b"\n")
            for line in lines:
                self.offsets["stdout"] += len(line) + 1
                self._parse(line)
            return
        self.offsets[chunk.stream] += len(chunk.data)
        text = self.dec[chunk.stream].decode(chunk.data)
        self._keep(chunk.stream, text, "output" if chunk.stream == "stdout" else "stderr")

    def _parse(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        parsed = self.harness.parse_line(text)
        for ev in parsed.events:
            self.pending.append((ev.type, ev.message, ev.payload))
        if parsed.output is not None:
            data = parsed.output.encode()
            self.output = data[: self.cfg.output_cap_bytes].decode("utf-8", "ignore")
            self.truncated["stdout"] = len(data) > self.cfg.output_cap_bytes

    def _keep(self, stream: str, text: str, event_type: str) -> None:
        """Keep text up to the cap (in bytes); once a stream is cut, keep nothing more of it."""
        if self.truncated[stream]:
            return
        data = text.encode()
        room = self.cfg.output_cap_bytes - self.kept[stream]
        cut = len(data) > room
        if cut:
            text = data[:room].decode("utf-8", "ignore")
            self.truncated[stream] = True
        self.kept[stream] += len(text.encode())
        if stream == "stdout":
            self.output += text
        else:
            self.stderr += text
        if text:
            if self.pending and self.pending[-1][0] == event_type and "text" in self.pending[-1][2]:
                self.pending[-1][2]["text"] += text  # coalesce into the open event
            else:
                self.pending.append((event_type, "", {"text": text}))
        if cut:
            self.pending.append((event_type, f"{stream} cut at {self.cfg.output_cap_bytes} bytes",
                                 {"truncated": True}))

    async def _flush(self) -> None:
        svc = self.svc
        async with svc.store.write(svc.clock.now()) as tx:
            await tx.append_events(self.run_id, self.pending)
            await tx.update_run(
                self.run_id, output=self.output, stderr=self.stderr, stdout_offset=self.offsets["stdout"],
                stderr_offset=self.offsets["stderr"], output_truncated=self.truncated["stdout"],
                stderr_truncated=self.truncated["stderr"],
            )
        self.pending, self.pending_bytes, self.first_pending_at = [], 0, None
        svc.changes.notify(self.run_id)

    async def _finish(self, exit_: Exit | None) -> None:
        svc = self.svc
        if self.line_buf:
            self.offsets["stdout"] += len(self.line_buf)
            self._parse(self.line_buf)
            self.line_buf = b""
        if self.pending:
            await self._flush()
        row = await svc.store.run(self.run_id)
        assert row is not None
        if not row["ephemeral"]:  # an ephemeral sandbox goes, with everything in it, when the run is published
            swept = await svc.backend.sweep(row["target_id"], self.run_id)  # whatever the run left running
            if swept.pids_exhausted and (exit_ is None or exit_.ending in (Ending.exited, Ending.lost)):
                exit_ = Exit(exit_code=None, ending=Ending.pids_exhausted)  # a fork bomb, spent or not
        _, kind, error = self._classify(exit_, row)
        exported = await self._export_artifacts(row)
        code = exit_.exit_code if exit_ is not None else None
        # Two phases: record the result (still `running`), clean up, then publish the end. A crash in
        # between resumes at publishing, so an ephemeral run is never started again and nobody sees
        # it ended while its sandbox is still there.
        async with svc.store.write(svc.clock.now()) as tx:
            await tx.append_events(self.run_id, exported)
            await tx.update_run(self.run_id, exit_code=code, failure_kind=kind, error=error,
                                finished_at=svc.clock.now())
        await self._publish()

    async def _publish(self) -> None:
        svc = self.svc
        row = await svc.store.run(self.run_id)
        assert row is not None
        if row["ephemeral"]:
            try:
                await svc.backend.remove(row["target_id"])
            except errors.EngineError:  # Docker unreachable: the reconciler removes it on the next start
                log.warning("could not remove the ephemeral sandbox %s of %s", row["target_id"], self.run_id)
        kind, code = row["failure_kind"], row["exit_code"]
        status = "succeeded" if kind is None else ("canceled" if kind == "canceled" else "failed")
        async with svc.store.write(svc.clock.now()) as tx:
            await tx.update_run(self.run_id, status=status)
            await tx.append_events(self.run_id, [("run_finished", f"Run {status}", {
                "status": status, "exit_code": code, "failure_kind": kind})])
            if row["ephemeral"]:
                await tx.delete_device(row["target_id"])
        svc.changes.notify(self.run_id)
        if not row["ephemeral"]:
            # After publishing, so the waiter is not kept waiting for it; a crash in between leaves
            # this run's (capped) files behind in the device.
            await svc.backend.remove_run_files(row["target_id"], self.run_id)

    def _classify(self, exit_: Exit | None, row: dict[str, Any]) -> tuple[str, str | None, str | None]:
        if row["cancel_requested"] or self.svc._cancel.get(self.run_id, anyio.Event()).is_set():
            return "canceled", "canceled", "canceled by request"
        if self.timed_out:
            return "failed", "timeout", f"timed out after {row['timeout']} s"
        ending = exit_.ending if exit_ is not None else Ending.lost
        if ending is Ending.lost:
            return "failed", "process_lost", "the run's process ended without recording an exit code"
        if ending is Ending.sandbox_lost:
            return "failed", "sandbox_lost", "the run's sandbox stopped or disappeared while it ran"
        if ending is Ending.pids_exhausted:
            return "failed", "pids_exhausted", (
                "the run filled its sandbox's process limit (a fork bomb?); every process it started was killed")
        if ending is Ending.runtime_not_found:
            return "failed", "runtime_not_found", (
                f"the {row['provider']} runtime ({self.harness.binary}) is not installed in the device's image; "
                "use an image that has it, or provider custom with your own command")
        if exit_.exit_code == 0:  # type: ignore[union-attr]
            return "succeeded", None, None
        return "failed", "nonzero_exit", f"exited with code {exit_.exit_code}"  # type: ignore[union-attr]

    async def _export_artifacts(self, row: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Read back the files the run's user copied out when its process ended (see RunLaunch)."""
        svc, events = self.svc, []
        for index, path in enumerate(self._artifact_paths(row)):
            try:
                data = await svc.backend.artifact(row["target_id"], self.run_id, index, path,
                                                  self.cfg.artifact_max_bytes)
            except errors.EngineError as exc:
                events.append(("artifact_exported", f"Artifact {path} not exported: {exc.message}",
                               {"path": path, "ok": False, "error": exc.code,
                                "diagnostic": exc.diagnostic().model_dump(mode="json")}))
                continue
            digest = hashlib.sha256(data).hexdigest()
            stored = f"{self.run_id}/{digest}"
            target = svc.settings.artifacts_dir / stored
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            async with svc.store.write(svc.clock.now()) as tx:
                await tx.upsert_artifact(self.run_id, path, len(data), digest, stored)
            events.append(("artifact_exported", f"Exported {path}", {"path": path, "ok": True, "size": len(data),
                                                                    "sha256": digest}))
        return events


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _parse_ts(s: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _run(row: dict[str, Any]) -> models.Run:
    return models.Run(
        id=row["id"], target_kind=row["target_kind"], target_id=row["target_id"], provider=row["provider"],
        prompt=row["prompt"], command=row["command"], model=row["model"], cwd=row["cwd"], timeout=row["timeout"],
        metadata=row["metadata"], env_keys=sorted(row["env"]), status=row["status"], output=row["output"],
        stderr=row["stderr"], output_truncated=row["output_truncated"], stderr_truncated=row["stderr_truncated"],
        exit_code=row["exit_code"], failure_kind=row["failure_kind"], error=row["error"], ephemeral=row["ephemeral"],
        agent_run_group_id=row["agent_run_group_id"], orchestration_role=row["orchestration_role"],
        parent_agent_run_id=row["parent_agent_run_id"], profile_id=row["profile_id"],
        idempotency_key=row["idempotency_key"], started_at=row["started_at"], finished_at=row["finished_at"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def _event(row: dict[str, Any]) -> models.RunEvent:
    return models.RunEvent(
        id=row["id"], agent_run_id=row["run_id"], agent_run_group_id=row["agent_run_group_id"],
        sequence=row["sequence"], type=row["type"], message=row["message"], payload=row["payload"],
        created_at=row["created_at"],
    )
