"""Approvals a person gives (issue 16, part 3): the records, the inputs, the risky actions' canonical
keys, and the store's row they are read from.

An approval is `pending` until a person decides it (`approved` or `denied`), or its time runs out
(`expired`, which counts as denied); an approved one is `used` by the one call it approves. Its
`action` is that call's canonical key: the same session repeating the same call finds it, any other
call or session does not."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from pydantic import AliasChoices, Field, field_validator

from engine import errors, ids, models
from engine.devices import models as dm
from engine.records import Row

MAX_WAIT_SECONDS = 45.0
"""Longest one request waits for a decision (MCP clients time tool calls out at about a minute)."""
MAX_PENDING_PER_SESSION = 16
"""Pending approvals one session may have at once: a session cannot flood the person deciding."""
MAX_REVIEW = 10
"""Most pending approvals one `approval_review` asks the person about."""
MAX_REASON_CHARS = 500


class ApprovalStatus(StrEnum):
    pending = "pending"
    """Waiting for a person."""
    approved = "approved"
    """A person approved it; the same call by the same session goes ahead once, before `expires_at`."""
    denied = "denied"
    expired = "expired"
    """No one decided in time (counts as denied), or an approved one was not used in time."""
    used = "used"
    """Approved, and the call it approved went ahead."""


OPEN = (ApprovalStatus.pending, ApprovalStatus.approved)
"""The statuses whose time can run out."""


class Action(NamedTuple):
    """A risky call as an approval names it."""

    key: str
    """Canonical: the kind of call and what it touches (`device.delete:sbx_...`)."""
    summary: str
    """What the person deciding reads; written by agentdock from checked values, never the agent's prose."""
    detail: dict[str, Any]


def delete_device(device_id: str) -> Action:
    return Action(f"device.delete:{device_id}", f"delete {device_id} and its container", {"sandbox_id": device_id})


def cancel_group(group_id: str) -> Action:
    return Action(f"group.cancel:{group_id}", f"cancel group {group_id} and kill its running children",
                  {"group_id": group_id})


def create_networked_device(req: dm.DeviceCreate) -> Action:
    """Bound to the whole request (by its digest): an approval of one such create approves no other."""
    asked = req.model_dump(mode="json", exclude_unset=True)
    digest = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:32]
    image = f", image {errors.clip(req.image)!r}" if req.image else ""
    name = f", named {errors.clip(req.name)!r}" if req.name else ""
    return Action(f"device.create_networked:{req.kind.value}:{digest}",
                  f"create a {req.kind.value} with network access{image}{name}",
                  {"kind": req.kind.value, "network": True, "image": req.image, "name": req.name,
                   "request_sha256": digest})


# ---------------------------------------------------------------- inputs


class ApprovalRef(models.Input):
    approval_id: ids.ApprovalId
    """The approval id (apr_...) from an `approval_required` diagnostic or a list."""


class ApprovalWait(ApprovalRef):
    wait_seconds: float = Field(default=0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
                                validation_alias=AliasChoices("wait_seconds", "wait"))
    """Wait up to this long while it is still pending (a decision or its expiry ends the wait)."""


class ApprovalListQuery(models.Input):
    status: ApprovalStatus | None = None
    """Only approvals in this status (default: all), newest first."""
    limit: int = Field(default=50, ge=1, le=500)
    """At most this many."""


class Decision(models.Input):
    reason: str | None = Field(default=None, min_length=1, max_length=MAX_REASON_CHARS)
    """Why, for the record (shown to the session that asked)."""


class DecisionInput(ApprovalRef, Decision):
    pass


class ApprovalEventsQuery(models.Input):
    after_sequence: int = Field(default=0, ge=0, le=models.MAX_SEQUENCE)
    """Only events after this sequence number."""
    limit: int = Field(default=100, ge=1, le=1000)
    """At most this many."""


class Review(models.Input):
    approval_id: ids.ApprovalId | None = None
    """Ask about this one approval; omitted: about every pending one (up to 10)."""


# ---------------------------------------------------------------- records


class Approval(models.Record):
    id: str
    status: ApprovalStatus
    session_id: str
    """The session that asked (it alone may use the approval)."""
    workspace_id: str
    profile_id: str | None
    """The runtime profile whose policy asked for approval."""
    action: str
    """The call's canonical key."""
    summary: str
    detail: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    """Pending: until when it waits for a person. Approved: until when it may be used. Denied: until when
    the same call is refused without asking again."""
    decided_by: str | None = None
    """Who decided: `ses_root` is the local user; otherwise the session holding the `approvals`
    permission that did."""
    decided_at: datetime | None = None
    reason: str | None = None
    used_at: datetime | None = None
    updated_at: datetime


class ApprovalList(models.Record):
    data: list[Approval]


class ApprovalEvent(models.Record):
    id: str
    sequence: int
    type: str
    """`approval_requested`, `approval_approved`, `approval_denied`, `approval_expired`, `approval_used`."""
    message: str
    payload: dict[str, Any]
    """approval_id, session_id, action; decided_by and reason for a decision."""
    created_at: datetime


class ApprovalEventList(models.Record):
    data: list[ApprovalEvent]
    next_after_sequence: int


class Reviewed(models.Record):
    approval_id: str
    session_id: str
    summary: str
    answer: str
    """What the person answered: `approve`, `deny`, or `skipped` (dismissed, or not asked)."""
    status: ApprovalStatus
    """The approval's status after the review."""


class ReviewResult(models.Record):
    data: list[Reviewed]


class ApprovalRow(Row):
    id: str
    session_id: str
    workspace_id: str
    profile_id: str | None
    action: str
    summary: str
    detail: dict[str, Any]
    status: ApprovalStatus
    """As stored: one whose time ran out may still say pending or approved until the reaper passes."""
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    used_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @field_validator("detail", mode="before")
    @classmethod
    def _detail(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def effective(self, now: datetime) -> ApprovalStatus:
        """Its status as of `now`: a pending or approved one past `expires_at` is expired (as every
        compare-and-set on it also says)."""
        return ApprovalStatus.expired if self.status in OPEN and self.expires_at <= now else self.status

    def record(self, now: datetime) -> Approval:
        return Approval(
            id=self.id, status=self.effective(now), session_id=self.session_id, workspace_id=self.workspace_id,
            profile_id=self.profile_id, action=self.action, summary=self.summary, detail=self.detail,
            created_at=self.created_at, expires_at=self.expires_at, decided_by=self.decided_by,
            decided_at=self.decided_at, reason=self.reason, used_at=self.used_at, updated_at=self.updated_at)
