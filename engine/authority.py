"""Authority narrows down a tree of sessions and never widens (issue 16).

A session's *effective limits* are its own runtime profile's limits intersected with its parent's
effective limits, all the way up to the local user, who has none. They are computed once, at spawn,
and recorded on the session; what the session then does itself (the devices it creates, the runs it
starts and the devices they run in, the children it spawns) is held to them. Opting out of a profile
(`skip_agent_runtime_profile`, or a workspace without a default) takes nothing away from the parent's.

How each limit intersects (the issue leaves the details to us):
- `network`: AND. A profile without `network: true` gives none, and no descendant gets it back.
- `tools` (bundles): the intersection; `None` (a profile that names none, or no profile) is no
  restriction of its own.
- `image`: a profile that names an image pins its tree to it; a child may name the same one or none
  (it inherits it), and a child's profile naming another is refused at spawn.
- `resources` (`cpus`, `memory_mb`, `pids_limit`, `workspace_mb`, `tmp_mb`): the least of each, a
  ceiling for every device the session creates (a default size above it is lowered to it; asking for
  more is refused). Below the local user, a device's disk sizes are also held to the daemon's setting
  for its kind (`engine.devices`): only the user makes a device's disks larger than the operator set.
- `max_child_sandboxes`: the least; each session's tree is also counted against every ancestor's.
- `approval: confirm-risky`: sticky; once set nothing below can drop it.

Pure rules, no I/O of their own: `engine.sessions` records the limits, `engine.devices`, `engine.runs`
and `engine.groups` apply them, and `require_active` is the check a writing transaction makes."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from pydantic import Field

from engine import errors, models
from engine.profiles import models as pm

if TYPE_CHECKING:
    from engine.callers import Caller

RESOURCES = ("cpus", "memory_mb", "pids_limit", "workspace_mb", "tmp_mb")
DISKS = ("workspace_mb", "tmp_mb")
DEVICE_FIELDS = ("image", "network", *RESOURCES)


class Ceilings(models.Record):
    """The most each device a session creates may have (None: no ceiling of the tree's own)."""

    cpus: float | None = None
    memory_mb: int | None = None
    pids_limit: int | None = None
    workspace_mb: int | None = None
    tmp_mb: int | None = None


class Limits(models.Record):
    """A session's effective limits: its runtime profile's intersected with its parent's, down the tree."""

    network: bool = True
    """Whether the devices it creates or runs in may have a network."""
    tools: list[str] | None = None
    """The tool bundles it may use (files, exec, browser, previews, artifacts, deploy); None: no restriction."""
    image: str | None = None
    """The one image its devices may use; None: any."""
    resources: Ceilings = Field(default_factory=Ceilings)
    """Ceilings on cpus, memory_mb, pids_limit, workspace_mb and tmp_mb of the devices it creates."""
    max_child_sandboxes: int | None = None
    """Most live devices it and the sessions below it may have created; None: no limit of its own."""
    approval: pm.Approval = pm.Approval.none
    """`confirm-risky`: its risky actions need the user's confirmation."""

    @classmethod
    def of_profile(cls, snapshot: dict[str, Any] | None) -> Limits:
        """The limits a profile (as snapshotted for a session) sets on its own; no profile sets none."""
        if snapshot is None:
            return cls()
        policy = snapshot.get("policy") or {}
        resources = snapshot.get("resources") or {}
        return cls(network=bool(snapshot.get("network")), tools=snapshot.get("tools"), image=snapshot.get("image"),
                   resources=Ceilings(**{k: resources.get(k) for k in RESOURCES}),
                   max_child_sandboxes=policy.get("max_child_sandboxes"),
                   approval=pm.Approval(policy.get("approval") or pm.Approval.none))


UNBOUNDED = Limits()
"""The local user's: nothing is limited."""


def _least(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def narrow(parent: Limits, own: Limits) -> Limits:
    """A child's effective limits: its own profile's within its parent's effective ones. Refused (naming
    `image`) when both pin an image and they differ: a child cannot be moved to another image."""
    if parent.image is not None and own.image is not None and own.image != parent.image:
        raise errors.PermissionDenied(
            f"image: the child's runtime profile names image {own.image!r}, but its parent may only use "
            f"{parent.image!r}, and a child never gets what its parent lacks; name a profile with that image or "
            "none, or spawn with skip_agent_runtime_profile (the child then inherits the parent's limits)",
            evidence={"field": "image", "limit": parent.image, "asked": own.image})
    tools = own.tools if parent.tools is None else parent.tools if own.tools is None else [
        b for b in own.tools if b in parent.tools]
    return Limits(
        network=parent.network and own.network, tools=tools, image=parent.image or own.image,
        resources=Ceilings(**{k: _least(getattr(parent.resources, k), getattr(own.resources, k)) for k in RESOURCES}),
        max_child_sandboxes=_least(parent.max_child_sandboxes, own.max_child_sandboxes),
        approval=pm.Approval.confirm_risky if pm.Approval.confirm_risky in (parent.approval, own.approval)
        else pm.Approval.none)


def wider(child: Limits, parent: Limits) -> list[str]:
    """The limits in which `child` allows more than `parent` (none, for a child within its parent)."""
    out = []
    if child.network and not parent.network:
        out.append("network")
    if parent.tools is not None and (child.tools is None or not set(child.tools) <= set(parent.tools)):
        out.append("tools")
    if parent.image is not None and child.image != parent.image:
        out.append("image")
    for k in RESOURCES:
        cap = getattr(parent.resources, k)
        if cap is not None and (getattr(child.resources, k) is None or getattr(child.resources, k) > cap):
            out.append(f"resources.{k}")
    if parent.max_child_sandboxes is not None and (
            child.max_child_sandboxes is None or child.max_child_sandboxes > parent.max_child_sandboxes):
        out.append("max_child_sandboxes")
    if parent.approval is pm.Approval.confirm_risky and child.approval is not pm.Approval.confirm_risky:
        out.append("approval")
    return out


def fit_device(limits: Limits, values: dict[str, Any], *, asked: Collection[str], defaulted: Collection[str] = (),
               what: str = "the device") -> dict[str, Any]:
    """`values` (image, network and the resources of a device) within `limits`. What the caller
    `asked` for beyond them is refused, naming the field; a network or a size that came from a profile
    or a default is lowered to them; an image is replaced only when it is `defaulted` (the daemon's, or a
    profile's the caller did not name for a device): a run's profile image, or a profile the caller
    named, that the limits do not allow is refused, since the run would not be what the profile says."""
    out = dict(values)
    if out.get("network") and not limits.network:
        if "network" in asked:
            raise errors.PermissionDenied(
                f"network: a network for {what} is beyond this session's effective limits (its runtime profile's, "
                "within its parent's), which allow none; leave network out", evidence={"field": "network"})
        out["network"] = False
    if "image" in out and limits.image is not None and out["image"] != limits.image:
        if "image" in asked or "image" not in defaulted:
            raise errors.PermissionDenied(
                f"image: {what} would use {out['image']!r}; this session's effective limits allow only "
                f"{limits.image!r}; leave image out, and name a profile with that image or none "
                "(skip_agent_runtime_profile)",
                evidence={"field": "image", "limit": limits.image})
        out["image"] = limits.image
    for k in RESOURCES:
        cap = getattr(limits.resources, k)
        if cap is not None and out.get(k) is not None and out[k] > cap:
            if k in asked:
                raise errors.LimitExceeded(
                    f"{k}: {what} would have {out[k]:g}; this session's effective limits allow at most {cap:g}",
                    evidence={"field": k, "limit": cap})
            out[k] = cap
    return out


def check_target(limits: Limits, device_id: str, *, image: str, network: bool, field: str) -> None:
    """Refuse a run in an existing device that its session could not have created: one with a network
    its limits forbid, or another image than the one they pin. (A device's size is its creator's
    business: the resource ceilings bound the devices a session creates.)"""
    if network and not limits.network:
        raise errors.PermissionDenied(
            f"{field}: {device_id} has a network, and this session's effective limits (its runtime profile's, within "
            "its parent's) allow none; run in a device without one, or leave the target out for a fresh sandbox",
            evidence={"field": field, "limit": "network"})
    if limits.image is not None and image != limits.image:
        raise errors.PermissionDenied(
            f"{field}: {device_id} runs image {image!r}; this session's effective limits allow only {limits.image!r}; "
            "leave the target out for a fresh sandbox", evidence={"field": field, "limit": "image"})


async def require_active(tx: Any, caller: Caller) -> None:
    """Refuse, inside a writing transaction, a caller whose session has stopped or expired meanwhile
    (it was live when it authenticated): a stop and what its session does are serialized, so nothing
    is created under a session after the transaction that stopped it."""
    if caller.is_root or await tx.sessions.session_active(caller.session_id):
        return
    raise errors.Unauthenticated(f"session {caller.session_id} has stopped; what it asked is not done",
                                 evidence={"field": "Authorization", "session_id": caller.session_id})
