"""Agent run groups' requests and records, with the seeds' field names (seed: Agent Run Groups).

A group holds durable entries, one per dispatched manifest item; an entry is `queued` until the
scheduler claims it under the group's `concurrency_limit` (creating its child run), `running` while
that run goes, and ends with it. Inputs forbid unknown fields.
"""

from __future__ import annotations

import json

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, Field, field_validator, model_validator

from engine import errors, ids, models
from engine.runs import models as rm
from engine.models import IDEMPOTENCY_KEY, MAX_SEQUENCE, Input, JsonObject, Record, _check_metadata, _check_text
from engine.records import Row

MAX_MANIFEST_ITEMS = 1000
"""Items in one dispatch call."""
MAX_EXPECTED_RUNS = 1_000_000
MAX_EVENT_WAIT_SECONDS = 50
"""Longest one read of a group's events waits for a new one (long-poll)."""
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}")
"""A workspace or project id: your own, opaque to agentdock."""
ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")
"""An orchestration role: `coder`, `browser-qa`, `tester`."""
DEFAULT_CONCURRENCY = 4


class GroupStatus(StrEnum):
    queued = "queued"
    """Created; nothing dispatched yet."""
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (GroupStatus.succeeded, GroupStatus.failed, GroupStatus.canceled)


class EntryStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (EntryStatus.succeeded, EntryStatus.failed, EntryStatus.canceled)


ENTRY_TRANSITIONS: dict[EntryStatus, frozenset[EntryStatus]] = {
    EntryStatus.queued: frozenset({EntryStatus.running, EntryStatus.failed, EntryStatus.canceled}),
    EntryStatus.running: frozenset({EntryStatus.succeeded, EntryStatus.failed, EntryStatus.canceled,
                                    EntryStatus.queued}),
    EntryStatus.succeeded: frozenset(), EntryStatus.failed: frozenset(), EntryStatus.canceled: frozenset(),
}
"""The entry state machine: claimed (running) or failed on its own (unknown target) or canceled while
queued; a running entry ends with its run, or goes back to `queued` for a new attempt when its run
was lost (its sandbox or process vanished). Terminal entries never change."""


# ---------------------------------------------------------------- requests


class GroupCreate(Input):
    """Create a group that holds many related agent runs under one concurrency limit."""

    name: str | None = Field(default=None, max_length=100)
    """A label for people."""
    workspace_id: str | None = Field(default=None, max_length=200)
    """Your workspace id (opaque to agentdock)."""
    project_id: str | None = Field(default=None, max_length=200)
    """Your project id (opaque to agentdock)."""
    concurrency_limit: int | None = Field(default=None, ge=1, le=10_000)
    """Most children running at once (default 4; at most the daemon's cap, AGENTDOCK_MAX_ACTIVE_RUNS)."""
    expected_runs: int | None = Field(default=None, ge=0, le=MAX_EXPECTED_RUNS)
    """The group stays active until at least this many runs were dispatched (and all ended)."""
    metadata: JsonObject = None
    """Your own ids and labels (at most 64 KiB of JSON)."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    """The same key with the same body returns the same group."""

    @model_validator(mode="before")
    @classmethod
    def _numbers_given_as_numbers(cls, data: Any) -> Any:
        """A number field is a number or absent: JSON has no NaN, and a client serializing one sends null."""
        if isinstance(data, dict):
            for field in ("concurrency_limit", "expected_runs"):
                if field in data and data[field] is None:
                    raise ValueError(f"{field}: must be a whole number; leave it out for the default")
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return _check_text(v, "name")

    @field_validator("workspace_id", "project_id")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return _check_text(v, "id (letters, digits and ._:@/-)", LABEL)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: Any) -> dict[str, Any]:
        return _check_metadata(v)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return _check_text(v, "idempotency key (printable ASCII, no spaces)", IDEMPOTENCY_KEY)


class ManifestItem(rm.RunCreate):
    """One child run: the agent-run fields, targeting a device or none (a fresh ephemeral sandbox)."""

    orchestration_role: str | None = Field(default=None, max_length=100)
    """What this child does in the group: `coder`, `tester`, `browser-qa`."""
    parent_agent_run_id: ids.RunId | None = None
    """The run that asked for this one (an existing run)."""

    @field_validator("orchestration_role")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        return _check_text(v, "orchestration role (letters, digits and ._:/-)", ROLE)

    @field_validator("idempotency_key")
    @classmethod
    def _no_item_key(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("items take no key of their own; the dispatch's idempotency_key (Idempotency-Key) "
                             "covers the whole manifest")
        return v

    def run_request(self) -> rm.RunCreate:
        return rm.RunCreate.model_validate(
            self.model_dump(exclude={"orchestration_role", "parent_agent_run_id"}, exclude_none=True,
                            exclude_unset=True))


class DispatchRequest(Input):
    """A manifest of child runs for a group."""

    runs: list[ManifestItem] = Field(min_length=1, max_length=MAX_MANIFEST_ITEMS)
    """1 to 1,000 items, each an agent run plus `orchestration_role` and `parent_agent_run_id`."""
    async_: bool = Field(default=False, alias="async")
    """Return the queued entries at once instead of waiting for the children to end."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    """The same key with the same manifest is the same dispatch (a retry is a no-op)."""

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return _check_text(v, "idempotency key (printable ASCII, no spaces)", IDEMPOTENCY_KEY)


class GroupListQuery(Input):
    status: GroupStatus | None = None
    """Only groups in this status."""
    workspace_id: str | None = Field(default=None, max_length=200)
    """Only groups of this workspace."""
    project_id: str | None = Field(default=None, max_length=200)
    """Only groups of this project."""
    limit: int = Field(default=20, ge=1, le=200)
    """At most this many, newest first."""
    cursor: ids.GroupId | None = None
    """The `next_cursor` of the previous page."""

    @field_validator("workspace_id", "project_id")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return _check_text(v, "id (letters, digits and ._:@/-)", LABEL)


class GroupEventsQuery(Input):
    after_sequence: int = Field(default=0, ge=0, le=MAX_SEQUENCE)
    """Only events with a group sequence greater than this (a cursor: the last sequence you saw)."""
    limit: int = Field(default=500, ge=1, le=1000)
    """At most this many events."""
    wait_seconds: float = Field(default=0, ge=0, le=MAX_EVENT_WAIT_SECONDS, allow_inf_nan=False,
                                validation_alias=AliasChoices("wait_seconds", "wait"))
    """Seconds to wait for a new event when there is none and the group is active (long-poll)."""


class GroupRunsQuery(Input):
    include_input: bool = False
    """Add each run's input (prompt, command, provider, target, metadata)."""
    include_output: bool = False
    """Add each run's output and stderr (up to the answer's byte budget, 1 MiB; past it `output_omitted`)."""
    status: EntryStatus | None = None
    """Only entries in this status."""
    limit: int = Field(default=100, ge=1, le=1000)
    """At most this many entries."""
    cursor: int | None = Field(default=None, ge=0, le=MAX_SEQUENCE)
    """The `next_cursor` of the previous page (an entry index)."""


# ---------------------------------------------------------------- records


class Counts(Record):
    """The group's child runs by status (every attempt counts)."""

    total: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0


class EntryCounts(Record):
    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0


class Group(Record):
    id: str
    name: str | None
    workspace_id: str | None
    project_id: str | None
    concurrency_limit: int
    expected_runs: int | None
    metadata: dict[str, Any]
    status: GroupStatus
    counts: Counts
    entry_counts: EntryCounts
    is_active: bool
    """True while an entry is queued or running, or fewer than `expected_runs` were dispatched."""
    status_message: str
    cancel_requested: bool
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class GroupList(Record):
    data: list[Group]
    next_cursor: str | None


class Entry(Record):
    id: str
    agent_run_group_id: str
    index: int
    """Place in the group (0, 1, ... over every dispatch)."""
    status: EntryStatus
    attempts: int
    """Child runs created for it (a lost run is retried as a new attempt)."""
    run_id: str | None
    """Its latest child run."""
    orchestration_role: str | None
    diagnostic: errors.Diagnostic | None
    """Why it failed without a run (an unknown target, say)."""
    created_at: datetime
    updated_at: datetime


class DispatchResultItem(Record):
    index: int
    """The item's place in this dispatch's manifest."""
    entry_id: str
    ok: bool
    """The child ended succeeded."""
    run: rm.Run | None
    diagnostic: errors.Diagnostic | None
    """Why it did not succeed: the item's own failure (unknown target) or its run's."""


class DispatchResult(Record):
    group: Group
    results: list[DispatchResultItem]
    """Synchronous dispatch: one per item that has ended (all of them once `done`)."""
    entries: list[Entry]
    dispatch_id: str
    done: bool
    """Every item of this dispatch has ended."""
    next_after_sequence: int
    """The group's event cursor when this answer was made: follow `group_events` from it. A sync dispatch
    not done in time is waited on again by repeating it with the same idempotency_key."""


class GroupEvent(Record):
    id: str
    agent_run_group_id: str
    agent_run_id: str | None
    """The child run it is about (null for an event of the group itself)."""
    sequence: int
    """1..n over the whole group, without gaps."""
    type: str
    message: str
    payload: dict[str, Any]
    created_at: datetime


class GroupEventList(Record):
    data: list[GroupEvent]
    group_status: GroupStatus
    is_active: bool
    """Stop following once this is false and `data` is empty."""
    next_after_sequence: int
    """Pass as `after_sequence` to get the events that follow."""


class RunInput(Record):
    provider: models.Provider
    prompt: str
    command: str | None
    model: str | None
    target_id: str
    cwd: str
    metadata: dict[str, Any]


class RunOutput(Record):
    output: str
    stderr: str
    exit_code: int | None
    output_omitted: bool = False
    """Past the answer's byte budget (1 MiB of outputs): `output` and `stderr` left out; agent_run_get has them."""


class GroupRun(Record):
    entry_id: str
    index: int
    status: EntryStatus
    attempts: int
    orchestration_role: str | None
    run_id: str | None
    run_status: models.RunStatus | None
    failure_kind: str | None
    started_at: datetime | None
    finished_at: datetime | None
    diagnostic: errors.Diagnostic | None
    input: RunInput | None = None
    output: RunOutput | None = None


class GroupRunList(Record):
    data: list[GroupRun]
    next_cursor: int | None


class GroupRow(Row):
    id: str
    name: str | None
    workspace_id: str | None
    project_id: str | None
    concurrency_limit: int
    expected_runs: int | None
    metadata: dict[str, Any]
    status: str
    cancel_requested: datetime | None
    idempotency_key: str | None
    request_hash: str | None
    finished_at: datetime | None
    created_at: datetime
    updated_at: datetime
    created_by: str


class EntryRow(Row):
    id: str
    group_id: str
    dispatch_id: str
    position: int
    item_index: int
    status: str
    attempts: int
    run_id: str | None
    request: dict[str, Any]
    diagnostic: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    @field_validator("request", "diagnostic", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class DispatchRow(Row):
    id: str
    group_id: str
    first_index: int
    count: int
    is_async: bool
    idempotency_key: str | None
    request_hash: str
    created_at: datetime
    created_by: str
