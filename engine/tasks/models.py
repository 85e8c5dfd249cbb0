"""The task queue's records and inputs (seed 002's `task`, task `run` and `lease`), and the store's
rows they are read from."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, JsonValue

from engine import ids, models
from engine.channels import models as channel_models
from engine.records import Row

LABEL = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_PAYLOAD_KEYS = 256
DEFAULT_LEASE_SECONDS = 60.0
MIN_LEASE_SECONDS = 1.0
MAX_LEASE_SECONDS = 3600.0
MAX_BACKOFF_SECONDS = 60.0


def backoff(failures: int) -> float:
    """How long a task waits after its `failures`-th failed attempt before it is claimable again."""
    return min(2.0 ** failures, MAX_BACKOFF_SECONDS)


class TaskStatus(StrEnum):
    queued = "queued"
    claimed = "claimed"
    completed = "completed"
    failed = "failed"


class TaskRunStatus(StrEnum):
    running = "running"
    completed = "completed"
    failed = "failed"
    released = "released"
    expired = "expired"


class FailureKind(StrEnum):
    lease_expired = "lease_expired"
    """The holder's lease ran out without a heartbeat."""
    error = "error"
    """The holder reported a failure (`task_fail`)."""


# ---------------------------------------------------------------- inputs


class TaskCreate(models.Input):
    title: str = Field(min_length=1, max_length=500)
    """What the task is, in a line."""
    identifier: str | None = Field(default=None, pattern=LABEL)
    """Your own name for the task, unique in its workspace (e.g. `ISSUE-42`)."""
    priority: int = Field(default=0, ge=0, le=1_000_000)
    """Higher is claimed first; among equals, the oldest first."""
    payload: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_PAYLOAD_KEYS)
    """What the worker needs to do the task."""
    max_attempts: int = Field(default=3, ge=1, le=100)
    """Failed or expired attempts before the task ends `failed`."""
    workspace_id: str | None = Field(default=None, pattern=LABEL)
    """Workspace id (default: yours; only the local user may name another)."""
    scope: str = Field(default="workspace", pattern=LABEL)
    """A label of yours grouping tasks within the workspace."""
    paused: bool = False
    """A paused task is never claimed."""


class TaskRef(models.Input):
    task_id: ids.TaskId
    """The task id (tsk_...)."""


class TaskListQuery(models.Input):
    status: TaskStatus | None = None
    """Only tasks in this status."""
    limit: int = Field(default=100, ge=1, le=500)
    """At most this many, newest first."""
    include_payload: bool = False
    """Carry each task's payload, result and whole error, up to the answer's byte budget (1 MiB by default;
    past it the rest are summaries, `bodies_omitted`). Left out: summaries only (`task_get` has the rest)."""


class ClaimNext(models.Input):
    lease_seconds: float = Field(default=DEFAULT_LEASE_SECONDS, ge=MIN_LEASE_SECONDS, le=MAX_LEASE_SECONDS, allow_inf_nan=False)
    """How long the lease lasts without a heartbeat."""
    wait_seconds: float = Field(default=0, ge=0, allow_inf_nan=False)
    """Wait up to this long for a task to become claimable (at most the server's bound, 45 s by default)."""


class Holding(models.Input):
    """What the current holder of a task run proves itself with."""

    task_run_id: ids.TaskRunId
    """The task run id (trun_...) the claim returned (its `run.id`)."""
    claim_token: str = Field(min_length=1, max_length=200)
    """The claim token the claim returned (shown once)."""


class Heartbeat(Holding):
    lease_seconds: float | None = Field(default=None, ge=MIN_LEASE_SECONDS, le=MAX_LEASE_SECONDS, allow_inf_nan=False)
    """Extend the lease this long from now (default: the claim's lease_seconds)."""


class Complete(Holding):
    result: JsonValue = None
    """What the task produced (any JSON, at most 256 KiB)."""


class Fail(Holding):
    error: str = Field(min_length=1, max_length=10_000)
    """What went wrong; the task is retried after a backoff until max_attempts, then ends failed."""


# ---------------------------------------------------------------- records


class Actor(models.Record):
    kind: str
    """`human` (the local user) or `agent` (a spawned session)."""
    ref: str
    """The session id."""


class TaskRun(models.Record):
    id: str
    task_id: str
    attempt: int
    status: TaskRunStatus
    session_id: str
    claimed_by: Actor
    claim_token_hash: str
    claimed_at: datetime
    heartbeat_at: datetime
    lease_until: datetime
    ended_at: datetime | None = None
    error: str | None = None
    failure_kind: str | None = None
    result: JsonValue = None
    previous_run_id: str | None = None
    coordination_channel_id: str
    """The task's channel (`task:<task id>`): its creator and whoever claims it talk there."""


class Task(models.Record):
    id: str
    title: str
    identifier: str | None
    priority: int
    payload: dict[str, Any] | None
    """What the worker needs (None in a list's summary: `bodies_omitted`)."""
    max_attempts: int
    attempts: int
    """Claims so far (every task run)."""
    failures: int
    """Attempts that failed or expired (counted against max_attempts)."""
    workspace_id: str
    scope: str
    status: TaskStatus
    paused: bool
    effective_paused: bool
    owner: Actor
    current_run_id: str | None
    available_at: datetime
    """Not claimable before this (a backoff after a failed attempt)."""
    failure_kind: str | None
    error: str | None
    """What the last failed attempt reported (its first 200 characters in a list's summary)."""
    result: JsonValue = None
    latest_event_seq: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    runs: list[TaskRun] | None = None
    """Its task runs, oldest first (task_get only)."""
    bodies_omitted: bool = False
    """A list's summary: `payload` and `result` are left out and `error` is cut (`task_get` has them, or
    `task_list` with `include_payload`, within its byte budget)."""


class TaskList(models.Record):
    data: list[Task]


class Lease(models.Record):
    claim_token_hash: str
    claimed_by: Actor
    heartbeat_at: datetime
    lease_until: datetime
    run_id: str
    session_id: str
    status: TaskRunStatus
    task_id: str


class Claim(models.Record):
    lease: Lease
    run: TaskRun
    task: Task
    claim_token: str
    """Proves you hold this run: heartbeat, complete, fail and release need it. Shown this once."""


class ClaimResult(models.Record):
    claim: Claim | None
    """None when nothing was claimable within the wait."""


class TaskEvent(models.Record):
    sequence: int
    event_type: str
    message: str
    run_id: str | None = None
    payload: dict[str, Any]
    created_at: datetime


class TaskBundle(models.Record):
    """Seed 002's context `task.bundle`: the task a session holds and how it got here."""

    task: Task
    current_run: TaskRun
    prior_attempts: list[TaskRun]
    recent_events: list[TaskEvent]
    latest_event_seq: int
    handoff_summary: str
    """What the attempts before this one ended with (empty on a first attempt)."""


class LeaseResult(models.Record):
    lease: Lease
    run: TaskRun
    task: Task


# ---------------------------------------------------------------- store rows


@functools.lru_cache(maxsize=4096)
def actor(session_id: str, root_id: str = "ses_root") -> Actor:
    """Who holds or owns a task (frozen, so one per session is shared)."""
    return Actor.model_construct(kind="human" if session_id == root_id else "agent", ref=session_id)


class TaskRunRow(Row):
    id: str
    task_id: str
    attempt: int
    status: TaskRunStatus
    session_id: str
    claim_token_hash: str
    lease_seconds: float
    claimed_at: datetime
    heartbeat_at: datetime
    lease_until: datetime
    ended_at: datetime | None
    error: str | None
    failure_kind: str | None
    result: str | None
    previous_run_id: str | None

    # Records are built from rows already validated: `model_construct` skips validating them twice
    # (a claim+complete pair builds six of them; validation was a fifth of its time).

    def record(self) -> TaskRun:
        return TaskRun.model_construct(
            id=self.id, task_id=self.task_id, attempt=self.attempt, status=self.status, session_id=self.session_id,
            claimed_by=actor(self.session_id), claim_token_hash=self.claim_token_hash, claimed_at=self.claimed_at,
            heartbeat_at=self.heartbeat_at, lease_until=self.lease_until, ended_at=self.ended_at, error=self.error,
            failure_kind=self.failure_kind, result=_json(self.result), previous_run_id=self.previous_run_id,
            coordination_channel_id=channel_models.channel_id(channel_models.task_name(self.task_id)))

    def lease(self) -> Lease:
        return Lease.model_construct(claim_token_hash=self.claim_token_hash, claimed_by=actor(self.session_id),
                     heartbeat_at=self.heartbeat_at, lease_until=self.lease_until, run_id=self.id,
                     session_id=self.session_id, status=self.status, task_id=self.task_id)


class TaskRow(Row):
    id: str
    title: str
    identifier: str | None
    priority: int
    payload: dict[str, Any] | None
    max_attempts: int
    workspace_id: str
    scope: str
    status: TaskStatus
    paused: bool
    attempts: int
    failures: int
    available_at: datetime
    current_run_id: str | None
    failure_kind: str | None
    error: str | None
    result: str | None
    latest_event_seq: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    body_bytes: int = 0
    """Bytes of its payload, result and error as stored."""
    bodies_omitted: bool = False
    """Read as a summary (`payload` and `result` not read, `error` cut)."""

    def record(self, runs: list[TaskRunRow] | None = None) -> Task:
        return Task.model_construct(
            id=self.id, title=self.title, identifier=self.identifier, priority=self.priority, payload=self.payload,
            max_attempts=self.max_attempts, attempts=self.attempts, failures=self.failures,
            workspace_id=self.workspace_id, scope=self.scope, status=self.status, paused=self.paused,
            effective_paused=self.paused, owner=actor(self.created_by), current_run_id=self.current_run_id,
            available_at=self.available_at, failure_kind=self.failure_kind, error=self.error,
            result=_json(self.result), latest_event_seq=self.latest_event_seq, created_at=self.created_at,
            updated_at=self.updated_at, finished_at=self.finished_at,
            runs=None if runs is None else [r.record() for r in runs], bodies_omitted=self.bodies_omitted)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)
