"""Agent runtime profiles (issue 10, seed 003): create, get, list, update, delete, and resolution.

A profile lives in a scope: the tenant (no workspace) or one workspace. Its name is unique there, and
at most one profile of a scope is its default: a new default takes over in the same transaction. A
profile still in use (an unfinished run, a live session, a queued group entry naming it) cannot be
deleted. Env values that look like credentials are refused: secrets go in the secret store and are
named in the profile's `secrets`.

Resolution, for a run or a spawn (the seed's order): `skip_agent_runtime_profile` -> none; else
`agent_runtime_profile_id` / `agent_profile_id` -> that one; else the default of the workspace ->
else the tenant's default -> else none. What it resolved to is kept as a snapshot with the run or
session, so a later update never rewrites history.

Who sees what: the local user sees and manages every profile; a session those of the tenant and of
its own workspace, and manages only its workspace's (`Caller.use_workspace`, the check every create
makes)."""

from __future__ import annotations

from typing import Any, NamedTuple

from engine import errors, ids, masking
from engine.profiles import models as pm
from engine.callers import Caller
from engine.clock import SystemClock
from engine.masking import Masking
from engine.ports import Clock
from engine.secrets import SecretStore
from engine.store import Store, Tx, new_id



class Resolved(NamedTuple):
    profile: pm.ProfileRow
    source: str
    """`explicit`, `workspace_default` or `tenant_default`."""

    def snapshot(self) -> dict[str, Any]:
        return self.profile.snapshot(self.source)


def asks_approval(caller: Caller) -> bool:
    """Whether a risky action of `caller` waits for a person's approval (`engine.approvals`): its effective
    limits say `approval: confirm-risky` (its own profile's, or any ancestor's: it is sticky down the
    tree). Never the local user. The one place a session's approval policy is read."""
    return not caller.is_root and caller.limits.approval is pm.Approval.confirm_risky


class ProfileService:
    def __init__(self, store: Store, secrets: SecretStore, clock: Clock | None = None,
                 masks: Masking | None = None) -> None:
        self.store = store
        self.secrets = secrets
        self.clock = clock or SystemClock()
        self.masks = masks or Masking(store, secrets)

    # ------------------------------------------------------------ requests

    async def create(self, caller: Caller, req: pm.ProfileCreate) -> pm.Profile:
        caller.require("profiles", "profile_create")
        workspace = await self._writable_scope(caller, req.workspace_id)
        self._check_contents(caller, req)
        req = await self._masked(caller, req)
        now = self.clock.now()
        profile_id = new_id("arp")
        async with self.store.write(now) as tx:
            await self._unique_name(tx, workspace, req.name, profile_id)
            await tx.profiles.insert_profile({
                "id": profile_id, "workspace_id": workspace, "name": req.name, "runtime": req.runtime.value,
                "description": req.description,
                "applies_to": (req.applies_to or pm.AppliesTo()).model_dump(mode="json"),
                "tools": None if req.tools is None else [t.value for t in req.tools],
                "connectors": req.connectors or [], "env": req.env or {}, "secrets": req.secrets or [],
                "model": req.model, "image": req.image,
                "resources": (req.resources or pm.Resources()).model_dump(mode="json", exclude_none=True),
                "network": bool(req.network), "policy": (req.policy or pm.Policy()).model_dump(mode="json"),
                "metadata": req.metadata or {}, "is_default": bool(req.is_default), "created_by": caller.session_id,
                "created_at": now, "updated_at": now})
            row = await tx.profiles.profile(profile_id)
        assert row is not None
        return row.record()

    async def _masked(self, caller: Caller, req: pm.ProfileFields) -> pm.ProfileFields:
        """The profile's free text (description, metadata, env values) masked for the secrets the caller
        holds; its name, model, image or a connector holding one is refused."""
        mask = await self.masks.masker(caller)
        if mask:
            masking.refuse(mask, {f"connectors.{i}": c for i, c in enumerate(req.connectors or [])})
        return masking.masked(mask, req, text=("description",), json=("metadata",), envs=("env",),
                              ids=("name", "model", "image"))

    async def get(self, caller: Caller, profile_id: str) -> pm.Profile:
        caller.require("profiles", "profile_get")
        return (await self._visible(caller, profile_id)).record()

    async def list(self, caller: Caller, q: pm.ProfileListQuery) -> pm.ProfileList:
        caller.require("profiles", "profile_list")
        own = None if caller.is_root else caller.workspace_id
        rows = await self.store.profiles.list(workspace_id=q.workspace_id, own_workspace=own)
        return pm.ProfileList(data=[r.record() for r in rows])

    async def update(self, caller: Caller, req: pm.ProfileUpdate) -> pm.Profile:
        caller.require("profiles", "profile_update")
        current = await self._visible(caller, req.profile_id)
        await self._writable_scope(caller, current.workspace_id)
        given = req.model_fields_set - {"profile_id"}
        if "workspace_id" in given and req.workspace_id != current.workspace_id:
            raise errors.InvalidInput(
                "workspace_id", f"a profile's scope cannot change (this one's is "
                f"{current.workspace_id or 'the tenant'}); create a new profile in the other scope instead",
                suggested_command="agentdock profiles create")
        self._check_contents(caller, req)
        req = await self._masked(caller, req)
        fields: dict[str, Any] = {}
        for name in given - {"workspace_id"}:
            value = getattr(req, name)
            if name in ("name", "runtime") and value is None:
                raise errors.InvalidInput(name, "is required; it cannot be cleared")
            if name == "runtime":
                value = value.value
            elif name == "tools":
                value = None if value is None else [t.value for t in value]
            elif name in ("applies_to", "resources", "policy"):
                default = {"applies_to": pm.AppliesTo, "resources": pm.Resources, "policy": pm.Policy}[name]()
                value = (value or default).model_dump(mode="json", exclude_none=name == "resources")
            elif name in ("connectors", "secrets"):
                value = value or []
            elif name in ("env", "metadata"):
                value = value or {}
            elif name in ("network", "is_default"):
                value = bool(value)
            fields[name] = value
        now = self.clock.now()
        async with self.store.write(now) as tx:
            if "name" in fields:
                await self._unique_name(tx, current.workspace_id, fields["name"], current.id)
            if fields:
                await tx.profiles.update_profile(current.id, current.workspace_id, **fields)
            row = await tx.profiles.profile(current.id)
        assert row is not None
        return row.record()

    async def delete(self, caller: Caller, profile_id: str) -> pm.Profile:
        """Delete a profile nothing uses any more; runs that used it keep their snapshot."""
        caller.require("profiles", "profile_delete")
        current = await self._visible(caller, profile_id)
        await self._writable_scope(caller, current.workspace_id)
        async with self.store.write(self.clock.now()) as tx:
            users = await tx.profiles.profile_users(current.id)
            if users:
                named = "; ".join(f"{kind}: {', '.join(found)}" for kind, found in users.items())
                first = users.get("runs", [None])[0]
                raise errors.Conflict(
                    f"profile {current.id} ({current.name!r}) is in use ({named}); wait for those runs to end, "
                    "cancel them, or stop those sessions, then delete it",
                    suggested_command=f"agentdock runs cancel {first}" if first else "agentdock sessions list",
                    evidence={"field": "profile_id", "in_use_by": users})
            await tx.profiles.delete_profile(current.id)
        return current.record()

    # ------------------------------------------------------------ resolution

    async def resolve(self, caller: Caller, *, skip: bool, explicit: str | None, workspace: str | None,
                      field: str = "agent_runtime_profile_id", allowed: list[str] | None = None,
                      ) -> Resolved | None:
        """The profile a run or a spawn in `workspace` gets (None: none), in the seed's order. An explicit
        id that does not exist, or is of another workspace, is an `InvalidInput` naming `field`; one the
        `allowed` sandbox_profiles (default: the caller session's) do not list is refused."""
        if skip:
            return None
        if explicit is not None:
            row = await self.store.profiles.profile(explicit)
            if row is not None and not caller.is_root and row.workspace_id not in (None, workspace):
                row = None  # a session learns nothing of another workspace's profiles, not even that one exists
            if row is None:
                raise errors.InvalidInput(field, f"no agent runtime profile {explicit!r}",
                                          suggested_command="agentdock profiles list",
                                          evidence={"profile_id": explicit})
            if row.workspace_id is not None and row.workspace_id != workspace:
                raise errors.InvalidInput(
                    field, f"profile {explicit} belongs to workspace {row.workspace_id!r}, not to "
                    f"{workspace!r}, the workspace this is for",
                    suggested_command=f"agentdock profiles list --workspace {workspace}",
                    evidence={"profile_id": explicit, "profile_workspace": row.workspace_id,
                              "workspace_id": workspace})
            await self._allowed(caller, row, field, allowed)
            return Resolved(row, "explicit")
        if workspace is not None:
            row = await self.store.profiles.default_profile(workspace)
            if row is not None:
                return Resolved(row, "workspace_default")
        row = await self.store.profiles.default_profile(None)
        return Resolved(row, "tenant_default") if row is not None else None

    async def _allowed(self, caller: Caller, row: pm.ProfileRow, field: str, allowed: list[str] | None) -> None:
        """A session names only the profiles its permissions' `sandbox_profiles` list (by id or name, or `*`)."""
        if allowed is None:
            if caller.is_root:
                return
            session = await self.store.sessions.session(caller.session_id)
            allowed = (session.permissions.get("sandbox_profiles") if session else None) or []
        if "*" in allowed or row.id in allowed or row.name in allowed:
            return
        raise errors.PermissionDenied(
            f"{field}: profile {row.id} ({row.name!r}) is not among this session's sandbox_profiles "
            f"({', '.join(allowed) or 'none'})", evidence={"field": field, "profile_id": row.id})

    # ------------------------------------------------------------ helpers

    def _check_contents(self, caller: Caller, req: pm.ProfileCreate | pm.ProfileUpdate) -> None:
        if req.env:
            pm.check_env(req.env)
        if req.secrets:
            caller.require("secrets")  # a profile given a secret hands it to every run under it
            self.secrets.require(req.secrets)
            clash = sorted(set(req.secrets) & set(req.env or {}))
            if clash:
                raise errors.InvalidInput(f"env.{clash[0]}", "is also named in secrets; a secret reaches the run "
                                                             "as the variable of its name, so give it once")

    async def _unique_name(self, tx: Tx, workspace: str | None, name: str, profile_id: str) -> None:
        other = await tx.profiles.profile_named(workspace, name, profile_id)
        if other is not None:
            scope = f"workspace {workspace!r}" if workspace else "the tenant"
            raise errors.Conflict(f"name: {scope} already has a profile named {name!r} ({other})",
                                  suggested_command=f"agentdock profiles get {other}",
                                  evidence={"field": "name", "existing_id": other})

    async def _visible(self, caller: Caller, profile_id: str) -> pm.ProfileRow:
        ids.PROFILE.check(profile_id, "profile_id")
        row = await self.store.profiles.profile(profile_id)
        if row is not None and not caller.is_root and row.workspace_id not in (None, caller.workspace_id):
            row = None
        if row is None:
            raise errors.NotFound("profile", profile_id, evidence={"field": "profile_id"})
        return row

    async def _writable_scope(self, caller: Caller, workspace: str | None) -> str | None:
        """The scope a caller may write in: any for the local user; a session only its own workspace."""
        if workspace is None and not caller.is_root:
            raise errors.PermissionDenied(
                f"workspace_id: tenant-level profiles are the local user's; a session manages only its own "
                f"workspace's ({caller.workspace_id}): name it", evidence={"field": "workspace_id",
                                                                            "workspace_id": caller.workspace_id})
        return None if workspace is None else caller.use_workspace(workspace)
