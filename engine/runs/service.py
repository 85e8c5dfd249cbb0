"""Agent runs: the requests (create, read, list, events, wait, cancel, artifacts) and the
supervisors of the runs admitted to start.

Creating a run records it `queued`; `engine.admission` starts queued runs in creation order under
the daemon-wide cap on active runs, each followed by an `engine.supervision.Supervision`. After a
restart, `reconcile()` resumes every run that had started; queued ones wait for admission again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskGroup

from engine import authority, errors, ids, masking, models, topics
from engine.daemons.identity import identity
from engine.devices import models as dm
from engine.runs import models as rm
from engine.callers import ROOT, Caller
from engine.masking import Masking
from engine.secrets import SecretStore
from engine.devices.service import DeviceService
from engine.gateway import Gateway
from engine.ports import Clock, DeviceSpec, Harness, SandboxBackend
from engine.profiles.models import ProfileRow
from engine.profiles.service import ProfileService
from engine.records import EventRow
from engine.devices.models import DeviceRow
from engine.runs.models import RunRow
from engine.settings import Settings
from engine.store import Store, Tx, new_id
from engine.runs.supervision import TERMINAL, Supervision
from engine.tokens import Tokens

log = logging.getLogger("agentdock.runs")
IMAGE_CHECK_SECONDS = 30
"""How long an image seen built is taken as still built (a removed one then fails its run at launch)."""


class Prepared(NamedTuple):
    """A run request checked and made into records, not yet written (`RunService.record`)."""

    run_id: str
    row: dict[str, Any]
    device_row: dict[str, Any] | None
    binary: str


class RunService:
    def __init__(self, store: Store, backend: SandboxBackend, devices: DeviceService,
                 harnesses: Callable[[str], Harness], clock: Clock, settings: Settings, tokens: Tokens,
                 secrets: SecretStore | None = None, profiles: ProfileService | None = None, *,
                 masks: Masking | None = None, gateway: Gateway | None = None) -> None:
        self.store = store
        self.tokens = tokens
        self.secrets = secrets or SecretStore(settings.secrets_dir)
        self.profiles = profiles or ProfileService(store, self.secrets, clock)
        self.masks = masks or self.profiles.masks
        self.gateway = gateway or Gateway(store, self.secrets, tokens, clock, enabled=False)
        self.backend = backend
        self.devices = devices
        self.harnesses = harnesses
        self.clock = clock
        self.settings = settings
        self.daemon_id = identity(settings.home)
        self._tg: TaskGroup | None = None
        self._cancel: dict[str, anyio.Event] = {}
        self._supervised: set[str] = set()
        self._resumed: set[str] = set()
        """Runs that had started before this daemon did (their process may already run)."""
        self._images_built: dict[str, float] = {}
        """Images seen built, and when (monotonic): a fan-out of ephemeral runs asks Docker once, not per run."""

    # ------------------------------------------------------------ lifecycle

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the supervisors' task group; reconcile, then report ready."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self.reconcile()
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None  # shutting down: a run admitted now is resumed by the next start

    async def reconcile(self) -> None:
        """Resume every run that had started, and remove containers nothing owns."""
        await self.devices.reconcile()
        for state in await self.backend.list_owned():
            if state.paused:  # frozen (by a sweep of an earlier version the daemon did not live to finish)
                await self.devices.repair(state.device_id)
        unfinished = {r.id: r for r in await self.store.runs.unfinished_runs(self.daemon_id)}
        for run in unfinished.values():
            if run.status is models.RunStatus.running:
                self._resumed.add(run.id)
                self.start(run.id)
        # An ephemeral container goes unless an unfinished run holds it: its label names the run, or for a
        # pooled one its record does (none: never claimed, or its run's end is published). Pooled records
        # no run holds go too; the pool starts afresh.
        rows = {r.id: r for r in await self.store.devices.list(include_ephemeral=True)}
        for state in await self.backend.list_owned():
            row = rows.get(state.device_id)
            holder = state.run_id or (row.run_id if row is not None else None)
            if state.ephemeral and holder not in unfinished:
                await self.backend.remove(state.device_id)
                async with self.store.write(self.clock.now()) as tx:
                    await tx.devices.delete_device(state.device_id)
        idle = [r.id for r in rows.values() if r.pool is not None and r.run_id not in unfinished
                and r.daemon_id in (None, self.daemon_id)]
        if idle:
            async with self.store.write(self.clock.now()) as tx:
                for device_id in idle:
                    await tx.devices.delete_device(device_id)

    @property
    def active(self) -> int:
        """Runs admitted and not yet settled: what the daemon-wide cap counts."""
        return len(self._supervised)

    def supervised(self, run_id: str) -> bool:
        return run_id in self._supervised

    def start(self, run_id: str) -> None:
        """Start following a run (admission calls this for a queued run; reconcile for a started one)."""
        if self._tg is None or self._tg.cancel_scope.cancel_called:
            return  # not serving (or shutting down): reconcile resumes started runs on the next start
        if run_id not in self._supervised:
            self._supervised.add(run_id)
            cancel = self._cancel.setdefault(run_id, anyio.Event())
            self._tg.start_soon(self._supervise, run_id, cancel)

    async def _supervise(self, run_id: str, cancel: anyio.Event) -> None:
        supervision = Supervision(run_id, store=self.store, backend=self.backend, harnesses=self.harnesses,
                                  ephemeral_spec=self._ephemeral_spec, identity=self._identity, clock=self.clock,
                                  settings=self.settings, cancel=cancel, secrets=self.secrets,
                                  gateway=self.gateway, resumed=run_id in self._resumed)
        self._resumed.discard(run_id)
        heeding = anyio.CancelScope()
        if self.store.shared and self._tg is not None:
            self._tg.start_soon(self._heed_cancel, run_id, cancel, heeding)
        try:
            await supervision.run()
        finally:
            heeding.cancel()
            self._supervised.discard(run_id)
            self._cancel.pop(run_id, None)
            self.store.topics.publish([topics.ADMISSION, topics.run(run_id)])  # a slot is free
        if supervision.leftover_device is not None:  # a used pooled sandbox, removed outside the run's slot
            try:
                await self.backend.remove(supervision.leftover_device)
            except errors.EngineError:
                log.warning("could not remove the pooled sandbox %s of %s (the next start will)",
                            supervision.leftover_device, run_id)
        if supervision.stuck_device is not None:  # no longer counted as active: this may take a while
            await self.devices.repair(supervision.stuck_device)
        if supervision.leftover_files is not None:  # no longer counted as active: this may take a while
            try:
                await self.backend.remove_run_files(supervision.leftover_files, run_id)
            except errors.EngineError:
                log.warning("could not remove the files of %s", run_id)

    def _identity(self, row: RunRow) -> dict[str, str]:
        return self.tokens.run_env(row.id, row.created_by, ROOT.session_id)

    def _ephemeral_spec(self, device: DeviceRow, run_id: str) -> DeviceSpec:
        """The container of a run's ephemeral sandbox, as its record (a profile's image, limits, network) says."""
        return self.devices.spec(dm.DeviceCreate(kind=models.TargetKind.sandbox, image=device.image,
                                                     cpus=device.cpus, memory_mb=device.memory_mb,
                                                     pids_limit=device.pids_limit, workspace_mb=device.workspace_mb,
                                                     tmp_mb=device.tmp_mb, network=device.network),
                                 device_id=device.id, run_id=run_id).model_copy(update={"pool": device.pool})

    @staticmethod
    def _device_request(profile: ProfileRow | None) -> dm.DeviceCreate:
        """A run's ephemeral sandbox: the profile's image, resources and network, else the defaults."""
        if profile is None:
            return dm.DeviceCreate(kind=models.TargetKind.sandbox)
        return dm.DeviceCreate(kind=models.TargetKind.sandbox, image=profile.image, network=profile.network,
                                   **profile.resources)

    # ------------------------------------------------------------ requests

    async def create(self, caller: Caller, req: rm.RunCreate) -> rm.Run:
        caller.require("runs", "agent_run")
        req = await self.masked(caller, req)
        if req.idempotency_key:
            existing = await self._same_request(caller, req)
            if existing is not None:
                return existing
        prepared = await self.prepare(caller, req)
        try:
            async with self.store.write(self.clock.now()) as tx:
                await authority.require_active(tx, caller)
                await require_profile(tx, prepared.row.get("profile_id"))
                if prepared.device_row is not None:  # counted again here: two creates cannot take one place
                    await self.devices.check_room(caller, tx=tx)
                await self.record(tx, prepared)
        except errors.Conflict:
            if req.idempotency_key:  # the same key, created by a concurrent request a moment ago
                existing = await self._same_request(caller, req)
                if existing is not None:
                    return existing
            raise
        return await self.get(caller, prepared.run_id)  # queued: admission starts it when a slot is free

    async def masked(self, caller: Caller, req: rm.RunCreateT) -> rm.RunCreateT:
        """A run request as it may be stored: its prompt, command, metadata and env values masked for the
        secrets the caller holds (`engine.masking`); a model, key or workspace holding one is refused."""
        return masking.masked(await self.masks.masker(caller), req, text=("prompt", "command"), json=("metadata",),
                              envs=("env",), ids=("model", "cwd", "idempotency_key", "workspace_id"))

    async def prepare(self, caller: Caller, req: rm.RunCreate, *, workspace: str | None = None) -> Prepared:
        """Check a run request against the world (its target, the image, its profile) and build its records,
        writing nothing: `record()` writes them, in the caller's transaction (a group's claim writes many).
        `workspace`: the run's, when a group decides it. The run and its device are held to the caller's
        effective limits."""
        kind, target_id = req.target()
        if req.secrets:
            caller.require("secrets")  # a run given a secret can print it in any disguise: only the trusted name them
            self.secrets.require(req.secrets)  # a missing one fails the create, naming it; nothing is written
        workspace = workspace or caller.use_workspace(req.workspace_id)
        field = "agent_profile_id" if req.agent_profile_id and not req.agent_runtime_profile_id else \
            "agent_runtime_profile_id"
        resolved = await self.profiles.resolve(caller, skip=req.skip_agent_runtime_profile, explicit=req.profile_asked,
                                               workspace=workspace, field=field)
        profile = resolved.profile if resolved else None
        provider = req.provider
        if profile is not None and not req.provider_given:
            provider = models.Provider(profile.runtime.value)
            if provider is models.Provider.custom and not req.command:
                raise errors.InvalidInput("command", f"the profile {profile.id}'s runtime is custom, which needs "
                                                     "`command` (the runtime command to run)")
        harness = self.harnesses(provider.value)  # type: ignore[union-attr]
        env = {**(profile.env if profile else {}), **(req.env or {})}  # run-level env overrides the profile's
        run_secrets = list(req.secrets or [])
        for name in profile.secrets if profile else []:
            if name not in run_secrets:
                run_secrets.append(name)
        self.gateway.require(run_secrets)  # refused now, not when it starts
        if profile is not None and profile.secrets:
            self.secrets.require(profile.secrets, "profile.secrets")  # removed since the profile named it
            clash = sorted(set(profile.secrets) & set(req.env or {}))
            if clash:
                raise errors.InvalidInput(f"env.{clash[0]}", f"is a secret the profile {profile.id} gives the run; "
                                                             "a run cannot also set it in env")
        now = self.clock.now()
        run_id = new_id("run")
        device_row = None
        if target_id is None:
            dreq = self._device_request(profile)
            await self.devices.check_room(caller, extra=1)
            spec = self.devices.bounded_spec(caller, dreq, run_id=run_id)
            device_row = self.devices.row(caller, spec, dreq)
            if not await self._image_built(spec.image):
                which = f"the profile {profile.id}'s image" if profile and profile.image else "the default image"
                raise errors.InvalidInput("image", f"{which} {spec.image} is not built",
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
            authority.check_target(caller.limits, target_id, image=device.image, network=device.network,
                                   field="sandbox_id" if req.sandbox_id else "computer_id" if req.computer_id
                                   else "target_id")
            if device.status == models.DeviceStatus.stopped:
                await self.devices.restart(caller, target_id)  # it stopped under an earlier run: its files are intact
            elif device.status not in (models.DeviceStatus.running, models.DeviceStatus.remote):  # remote: its
                # daemon starts it, or ends it `sandbox_lost` if the device is gone by then
                raise errors.Conflict(
                    f"{target_id} is {device.status.value}; runs need a running device",
                    suggested_command="agentdock sandbox create",
                )
            kind = device.kind
        row = {
            "id": run_id, "target_kind": kind.value, "target_id": target_id, "provider": provider.value,  # type: ignore[union-attr]
            "prompt": req.prompt, "command": req.command, "model": req.model or (profile.model if profile else None),
            "cwd": req.cwd, "timeout": req.timeout, "metadata": req.metadata, "env": env, "secrets": run_secrets,
            "profile_id": profile.id if profile else None,
            "profile_snapshot": resolved.snapshot() if resolved else None, "workspace_id": workspace,
            "status": models.RunStatus.queued.value, "ephemeral": device_row is not None,
            "idempotency_key": req.idempotency_key, "request_hash": _hash(req.fingerprint()),
            "created_at": now, "updated_at": now, "created_by": caller.session_id,
        }
        return Prepared(run_id, row, device_row, harness.binary)

    async def _image_built(self, image: str) -> bool:
        seen = self._images_built.get(image)
        if seen is not None and self.clock.monotonic() - seen < IMAGE_CHECK_SECONDS:
            return True
        if not await self.backend.image_exists(image):
            return False
        self._images_built[image] = self.clock.monotonic()
        return True

    async def record(self, tx: Tx, prepared: Prepared, group_id: str | None = None) -> None:
        """Write a prepared run `queued` (and its ephemeral sandbox's record) with its first event."""
        row = prepared.row
        if prepared.device_row is not None:
            await tx.devices.insert_device(prepared.device_row)
        await tx.runs.insert_run(row)
        await tx.append_events(prepared.run_id, [("run_queued", "Run queued", {
            "provider": row["provider"], "target_id": row["target_id"], "runtime_binary": prepared.binary})],
            group_id=group_id)

    async def _same_request(self, caller: Caller, req: rm.RunCreate) -> rm.Run | None:
        row = await self.store.runs.run_by_idempotency_key(caller.session_id, req.idempotency_key)  # type: ignore[arg-type]
        if row is None:
            return None
        if row.request_hash != _hash(req.fingerprint()):
            raise errors.Conflict(
                f"idempotency key {req.idempotency_key!r} was already used for a different request (run {row.id})",
                suggested_command=f"agentdock runs get {row.id}",
                evidence={"run_id": row.id, "idempotency_key": req.idempotency_key},
            )
        return row.record()

    async def _row(self, caller: Caller, run_id: str) -> RunRow:
        caller.require("runs")
        ids.RUN.check(run_id, "run_id")  # the surfaces check it too; this is the last line
        row = await self.store.runs.run(run_id)
        if row is None or not caller.sees(row.created_by):
            raise errors.NotFound("run", run_id)
        return row

    async def get(self, caller: Caller, run_id: str) -> rm.Run:
        caller.require("runs", "agent_run_get")
        return (await self._row(caller, run_id)).record()

    async def list(self, caller: Caller, q: rm.RunListQuery) -> rm.RunList:
        caller.require("runs", "agent_run_list")
        if q.cursor and await self.store.runs.run(q.cursor) is None:
            raise errors.InvalidInput("cursor", "unknown cursor; pass the next_cursor of a previous page")
        rows = await self.store.runs.list(q, created_by=None if caller.is_root else caller.session_id,
                                     budget=self.settings.list_page_max_bytes)
        more = len(rows) > q.limit
        rows = rows[: q.limit]
        return rm.RunList(data=[r.record() for r in rows], next_cursor=rows[-1].id if more else None)

    async def events(self, caller: Caller, run_id: str, q: rm.EventsQuery) -> rm.RunEventList:
        """Events after `q.after_sequence`; with `q.wait_seconds`, long-poll until one is committed or the run ends."""
        stream = topics.run(run_id)

        async def look() -> tuple[bool, tuple[rm.Run, list[EventRow]]]:
            run = await self.get(caller, run_id)
            rows = await self.store.events(stream, q.after_sequence, q.limit, self.settings.list_page_max_bytes)
            return bool(rows) or run.status in TERMINAL, (run, rows)

        run, rows = await topics.until(self.store.topics, self.clock, stream, q.wait_seconds, look)
        data = [rm.RunEvent.of(r) for r in rows]
        return rm.RunEventList(data=data, run_status=run.status, next_after_sequence=data[-1].sequence if data else q.after_sequence)

    async def wait(self, caller: Caller, run_id: str, timeout: float) -> rm.Run:
        """The run once it has ended, or as it is when `timeout` passes."""
        async def look() -> tuple[bool, rm.Run]:
            run = await self.get(caller, run_id)
            return run.status in TERMINAL, run

        return await topics.until(self.store.topics, self.clock, topics.run(run_id), timeout, look)

    async def cancel(self, caller: Caller, run_id: str) -> rm.Run:
        """Stop a run: one still queued ends `canceled` without starting; a started one gets TERM, then
        KILL after a grace. Waits, bounded, for it to settle."""
        caller.require("runs", "agent_run_cancel")
        run = await self.get(caller, run_id)
        if run.status is models.RunStatus.canceled:
            return run
        if run.status in TERMINAL:
            raise errors.InvalidTransition(f"run {run_id} already {run.status.value}; only unfinished runs can be canceled")
        if not await self.request_cancel(run_id):
            return await self.get(caller, run_id)
        return await self.wait(caller, run_id, self.settings.cancel_grace_seconds + 10)

    async def abandon_settled(self) -> list[str]:
        """Stop the processes of the runs this daemon still follows whose records were ended without it
        (the leader settled them `process_lost` while this daemon was silent, and their groups retried
        them elsewhere): their result could no longer be recorded. Returns those runs."""
        ended = []
        for run_id in list(self._supervised):
            state = await self.store.runs.run_cancel_state(run_id)
            if state is not None and state[0] in {s.value for s in TERMINAL}:
                self._cancel.setdefault(run_id, anyio.Event()).set()
                ended.append(run_id)
        return ended

    async def _heed_cancel(self, run_id: str, cancel: anyio.Event, scope: anyio.CancelScope) -> None:
        """A cancel asked through another daemon reaches the one running the run as a commit on the run's
        topic (NOTIFY): pass it to the supervisor."""
        with scope:
            while True:
                changed = self.store.topics.watch(topics.run(run_id))
                state = await self.store.runs.run_cancel_state(run_id)
                if state is None or state[0] in {s.value for s in TERMINAL}:
                    return
                if state[1]:
                    cancel.set()
                    return
                await changed.wait()

    async def request_cancel(self, run_id: str) -> bool:
        """Ask a run to stop without waiting: a queued one ends `canceled` now (False), a started one
        is told to end (True) and settles once its process is gone."""
        if not self.supervised(run_id) and await self._cancel_queued(run_id):
            return False
        now = self.clock.now()
        async with self.store.write(now) as tx:
            if not await tx.runs.transition_run(run_id, [models.RunStatus.running], cancel_requested=now):
                return False  # it ended meanwhile
        state = await self.store.runs.run_cancel_state(run_id)
        if state is not None and state[2] not in (None, self.daemon_id):
            return True  # started by another daemon: it sees the request when this commit reaches it
        self._cancel.setdefault(run_id, anyio.Event()).set()
        if not self.supervised(run_id):
            self.start(run_id)  # a started run whose supervisor is gone (it will see the request)
        return True

    async def _cancel_queued(self, run_id: str) -> bool:
        """End a run that was never admitted: nothing was started, so nothing needs stopping."""
        now = self.clock.now()
        row = await self.store.runs.run(run_id)
        assert row is not None
        async with self.store.write(now) as tx:
            if not await tx.runs.transition_run(run_id, [models.RunStatus.queued], status="canceled",
                                           cancel_requested=now, failure_kind="canceled",
                                           error="canceled by request before it started", finished_at=now):
                return False
            await tx.append_events(run_id, [("run_finished", "Run canceled", {
                "status": "canceled", "exit_code": None, "failure_kind": "canceled"})],
                group_id=row.agent_run_group_id)
            if row.ephemeral:
                await tx.devices.delete_device(row.target_id)
        return True

    async def artifacts(self, caller: Caller, run_id: str) -> rm.ArtifactList:
        await self._row(caller, run_id)
        return rm.ArtifactList(data=[a.record() for a in await self.store.runs.artifacts(run_id)])

    async def artifact_bytes(self, caller: Caller, run_id: str, path: str) -> bytes:
        await self._row(caller, run_id)
        try:
            resolved = models.workspace_path(path)
        except ValueError as exc:
            raise errors.InvalidInput("path", str(exc)) from None
        row = await self.store.runs.artifact(run_id, resolved)
        if row is None:
            raise errors.NotFound("artifact", f"{run_id}:{path}", suggested_command=f"agentdock runs artifacts {run_id}")
        return (self.settings.artifacts_dir / row.stored_as).read_bytes()


async def require_profile(tx: Tx, profile_id: str | None) -> None:
    """Refuse, in the writing transaction, a record naming a profile deleted since it was resolved."""
    if profile_id is not None and await tx.profiles.profile(profile_id) is None:
        raise errors.Conflict(f"agent_runtime_profile_id: profile {profile_id} was deleted meanwhile; try again",
                              evidence={"field": "agent_runtime_profile_id", "profile_id": profile_id})


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()

