"""Devices: sandboxes and computers, each one labelled container with the security defaults, held to
the creating session's effective limits (`engine.authority`)."""

from __future__ import annotations

import logging
from typing import Any

import anyio

from engine import authority, errors, ids, masking, models
from engine.devices import models as dm
from engine.daemons.identity import identity
from engine.approvals import models as approval_models
from engine.approvals.service import ApprovalService
from engine.callers import ROOT, Caller
from engine.masking import Masking
from engine.profiles.service import ProfileService
from engine.quotas.service import Quotas
from engine.secrets import SecretStore
from engine.ports import Clock, DeviceSpec, SandboxBackend
from engine.settings import Settings
from engine.store import Store, Tx, new_id

SIZES = {
    models.TargetKind.sandbox: {"cpus": 1.0, "memory_mb": 512, "pids_limit": 256},
    models.TargetKind.computer: {"cpus": 2.0, "memory_mb": 2048, "pids_limit": 1024},
}
log = logging.getLogger("agentdock.devices")
PREFIX = {models.TargetKind.sandbox: "sbx", models.TargetKind.computer: "cmp"}


class DeviceService:
    def __init__(self, store: Store, backend: SandboxBackend, clock: Clock, settings: Settings,
                 profiles: ProfileService | None = None, approvals: ApprovalService | None = None, *,
                 quotas: Quotas | None = None, masks: Masking | None = None) -> None:
        self.profiles = profiles or ProfileService(store, SecretStore(settings.secrets_dir), clock)
        self.approvals = approvals or ApprovalService(store, clock, settings)
        self.quotas = quotas or Quotas(store, settings)
        self.masks = masks or self.profiles.masks
        self.store = store
        self.backend = backend
        self.clock = clock
        self.settings = settings
        self.daemon_id = identity(settings.home)
        self._repairing: dict[str, anyio.Lock] = {}

    def bounded_spec(self, caller: Caller, req: dm.DeviceCreate, *, asked: frozenset[str] = frozenset(),
                     defaulted: frozenset[str] = frozenset(), run_id: str | None = None) -> DeviceSpec:
        """`spec()` within the caller's effective limits: what it `asked` for beyond them is refused, a
        network or size from a profile or a default is lowered to them, an image that was a default
        (`defaulted`) replaced by theirs (`authority.fit_device`)."""
        spec = self.spec(req, run_id=run_id)
        values = {k: getattr(spec, k) for k in authority.DEVICE_FIELDS}
        defaulted = defaulted | {k for k in ("image", *authority.RESOURCES) if getattr(req, k) is None}
        what = f"this {req.kind.value}" if run_id is None else f"the ephemeral sandbox of run {run_id}"
        limits = caller.limits
        if not caller.is_root:  # only the local user makes disks larger than the operator's setting
            disks = self.disk_sizes(req.kind)
            limits = limits.model_copy(update={"resources": limits.resources.model_copy(update={
                k: min(v for v in (getattr(limits.resources, k), disks[k]) if v is not None)
                for k in authority.DISKS})})
        return spec.model_copy(update=authority.fit_device(limits, values, asked=asked, defaulted=defaulted,
                                                           what=what))

    def disk_sizes(self, kind: models.TargetKind) -> dict[str, int]:
        """A device kind's /workspace and /tmp sizes in MiB, as the daemon's settings give them."""
        s = self.settings
        if kind is models.TargetKind.computer:
            return {"workspace_mb": s.computer_workspace_mb, "tmp_mb": s.computer_tmp_mb}
        return {"workspace_mb": s.sandbox_workspace_mb, "tmp_mb": s.sandbox_tmp_mb}

    def spec(self, req: dm.DeviceCreate, *, device_id: str | None = None, run_id: str | None = None) -> DeviceSpec:
        size = SIZES[req.kind] | self.disk_sizes(req.kind)
        return DeviceSpec(
            device_id=device_id or new_id(PREFIX[req.kind]),
            kind=req.kind.value,
            image=req.image or self.settings.image,
            cpus=req.cpus or size["cpus"],
            memory_mb=req.memory_mb or size["memory_mb"],
            pids_limit=req.pids_limit or size["pids_limit"],
            workspace_mb=req.workspace_mb or size["workspace_mb"],
            tmp_mb=req.tmp_mb or size["tmp_mb"],
            network=req.network,
            env=req.env or {},
            ephemeral=run_id is not None,
            run_id=run_id,
        )

    def row(self, caller: Caller, spec: DeviceSpec, req: dm.DeviceCreate) -> dict[str, Any]:
        now = self.clock.now()
        return {"created_by": caller.session_id,
            "id": spec.device_id, "kind": spec.kind, "name": req.name, "image": spec.image, "cpus": spec.cpus,
            "memory_mb": spec.memory_mb, "pids_limit": spec.pids_limit, "workspace_mb": spec.workspace_mb,
            "tmp_mb": spec.tmp_mb, "network": spec.network,
            "env": spec.env, "metadata": req.metadata, "ephemeral": spec.ephemeral, "run_id": spec.run_id,
            "created_at": now, "updated_at": now, "daemon_id": self.daemon_id,
        }

    async def check_room(self, caller: Caller, *, extra: int = 1, tx: Tx | None = None) -> None:
        """Refuse a new device when the caller's session, or a session above it, has effective limits
        whose `max_child_sandboxes` its tree of sessions has already reached, or when the caller's tree or
        workspace has its quota of live devices (`engine.quotas`)."""
        await self.quotas.check_devices(caller, extra=extra, tx=tx)
        session_id: str | None = caller.session_id
        while session_id and session_id != ROOT.session_id:
            row = await self.store.sessions.session(session_id)
            if row is None:
                return
            limit = row.effective_limits().max_child_sandboxes
            if limit is not None:
                live = await (tx.profiles.live_devices_of_tree(row.id) if tx else self.store.profiles.live_devices_of_tree(row.id))
                if live + extra > limit:
                    raise errors.LimitExceeded(
                        f"max_child_sandboxes: session {row.id}'s effective limits (its runtime profile's within its "
                        f"parent's) allow {limit} live sandboxes for it and the sessions below it; {live} exist. "
                        "Delete one or wait for a run's ephemeral sandbox to go",
                        suggested_command="agentdock sandbox list",
                        evidence={"field": "max_child_sandboxes", "limit": limit, "live": live,
                                  "session_id": row.id, "profile_id": row.profile_id})
            session_id = row.parent_session_id

    async def create(self, caller: Caller, req: dm.DeviceCreate) -> dm.Device:
        """Create the container first, then its row: a crash in between leaves a labelled container
        with no row, which the reconciler removes; a failed create leaves nothing."""
        caller.require("devices", "sandbox_create")
        req = masking.masked(await self.masks.masker(caller), req, text=("name",), json=("metadata",), envs=("env",),
                             ids=("image",))
        workspace = caller.use_workspace(req.workspace_id)
        await self.check_room(caller)
        asked = frozenset(k for k in req.model_fields_set
                          if k in authority.DEVICE_FIELDS and getattr(req, k) is not None)
        # What it left out may come from a profile; only one it named itself cannot be moved to the limits' image.
        defaulted = frozenset() if req.agent_runtime_profile_id else frozenset({"image"}) - asked
        original = req
        if req.network:  # asked for (a profile that gives its devices network decided that itself)
            authority.fit_device(caller.limits, {"network": True}, asked=asked)  # refused before anyone is asked
        req = await self._with_profile(caller, req, workspace)
        spec = self.bounded_spec(caller, req, asked=asked, defaulted=defaulted)
        if original.network:  # every other check passed: now a person is asked
            await self.approvals.require(caller, approval_models.create_networked_device(original))
        state = await self.backend.create(spec)
        try:
            async with self.store.write(self.clock.now()) as tx:
                await authority.require_active(tx, caller)
                await self.check_room(caller, tx=tx)  # again, counted in the transaction: no race past the limit
                await tx.devices.insert_device(self.row(caller, spec, req))
        except BaseException:
            await self.backend.remove(state.device_id)
            raise
        return await self.get(caller, spec.device_id)

    async def _with_profile(self, caller: Caller, req: dm.DeviceCreate, workspace: str) -> dm.DeviceCreate:
        """The request with what it leaves out (image, resources, network) taken from its
        profile: the one it names, else the caller session's, else the workspace's or tenant's default.
        (What the caller's effective limits allow is `bounded_spec`'s to decide.)"""
        session = None if caller.is_root else await self.store.sessions.session(caller.session_id)
        governing = session.profile_snapshot if session else None
        if req.skip_agent_runtime_profile:
            return req
        if governing is None or req.agent_runtime_profile_id:
            resolved = await self.profiles.resolve(caller, skip=False, explicit=req.agent_runtime_profile_id,
                                                   workspace=workspace)
            governing = resolved.snapshot() if resolved else None
        if governing is None:
            return req
        kinds = (governing.get("applies_to") or {}).get("resources") or ["sandbox", "computer"]
        if req.kind.value not in kinds:
            if req.agent_runtime_profile_id:
                raise errors.InvalidInput("kind", f"profile {governing['id']} applies to {', '.join(kinds)}, "
                                                  f"not to a {req.kind.value}")
            return req
        limits = governing.get("resources") or {}
        given = req.model_fields_set
        return req.model_copy(update={
            "image": req.image or governing.get("image"),
            **{k: getattr(req, k) or limits.get(k) for k in authority.RESOURCES},
            "network": req.network if "network" in given else bool(governing.get("network"))})

    def here(self, row: dm.DeviceRow) -> bool:
        """Whether this daemon's Docker engine holds the device (always, on one SQLite file)."""
        return row.daemon_id is None or row.daemon_id == self.daemon_id

    def _require_here(self, device: dm.Device) -> None:
        if device.status is models.DeviceStatus.remote:
            raise errors.Conflict(
                f"{device.id} is held by another daemon sharing this database; only that daemon can change it",
                evidence={"sandbox_id": device.id}, suggested_command="agentdock daemon status")

    async def restart(self, caller: Caller, device_id: str) -> None:
        """Start a device that stopped (its main process was ended under it); its files are kept."""
        self._require_here(await self.get(caller, device_id))
        await self.backend.start(device_id)

    async def get(self, caller: Caller, device_id: str) -> dm.Device:
        caller.require("devices")
        ids.DEVICE.check(device_id, "sandbox_id")  # the surfaces check it too; this is the last line
        row = await self.store.devices.device(device_id)
        if row is None or not caller.sees(row.created_by):
            raise errors.NotFound("sandbox", device_id)
        if not self.here(row):
            return row.record(models.DeviceStatus.remote)
        state = await self.backend.inspect(device_id)
        status = models.DeviceStatus.missing if state is None else (
            models.DeviceStatus.running if state.running else models.DeviceStatus.stopped)
        return row.record(status)

    async def list(self, caller: Caller) -> dm.DeviceList:
        caller.require("devices")
        live = {s.device_id: s for s in await self.backend.list_owned()}
        out = []
        for row in await self.store.devices.list(created_by=None if caller.is_root else caller.session_id):
            s = live.get(row.id)
            status = models.DeviceStatus.remote if not self.here(row) else models.DeviceStatus.missing if s is None else (
                models.DeviceStatus.running if s.running else models.DeviceStatus.stopped)
            out.append(row.record(status))
        return dm.DeviceList(data=out)

    async def delete(self, caller: Caller, device_id: str) -> dm.Device:
        caller.require("devices", "sandbox_delete")
        device = await self.get(caller, device_id)
        self._require_here(device)
        if device.ephemeral and device.run_id is None:
            raise errors.InvalidTransition(
                f"{device_id} is a pooled sandbox kept ready for runs without a target; the daemon removes it "
                "(AGENTDOCK_POOL_SIZE=0 turns the pool off)")
        if device.ephemeral:
            raise errors.InvalidTransition(
                f"{device_id} is the ephemeral sandbox of run {device.run_id}; it is removed when the run ends",
                suggested_command=f"agentdock runs cancel {device.run_id}",
            )
        active = await self.store.runs.active_runs_on(device_id)
        if active:
            raise errors.Conflict(
                f"{device_id} has {len(active)} active run(s); cancel them before deleting it",
                suggested_command=f"agentdock runs cancel {active[0]}",
                evidence={"active_runs": active},
            )
        await self.approvals.require(caller, approval_models.delete_device(device_id))
        async with self.store.write(self.clock.now()) as tx:
            await tx.devices.delete_device(device_id)
        await self.backend.remove(device_id)
        return device.model_copy(update={"status": models.DeviceStatus.missing})

    async def repair(self, device_id: str) -> str | None:
        """Repair a device that stopped answering (once at a time per device: its runs fail together).
        A device that cannot be repaired is reported in the log, never fatal: the daemon goes on."""
        lock = self._repairing.setdefault(device_id, anyio.Lock())
        if lock.locked():
            return None  # being repaired
        async with lock:
            try:
                outcome = await self.backend.repair(device_id)
            except errors.EngineError as exc:
                log.error("device %s does not answer and could not be repaired: %s", device_id, exc.message)
                return None
            finally:
                self._repairing.pop(device_id, None)
        if outcome != "answering":
            log.warning("device %s did not answer: %s", device_id, outcome)
        return outcome

    async def reconcile(self) -> list[str]:
        """Remove labelled containers whose device row is gone or deleted (a crash mid-create or mid-delete).
        Ephemeral containers are the run service's to settle."""
        removed = []
        rows = {r.id for r in await self.store.devices.list(include_ephemeral=True)}
        for state in await self.backend.list_owned():
            if not state.ephemeral and state.device_id not in rows:
                await self.backend.remove(state.device_id)
                removed.append(state.device_id)
        return removed
