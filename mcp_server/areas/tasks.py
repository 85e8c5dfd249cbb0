"""The leased task queue: create, list and get tasks; claim the next one, heartbeat, complete, fail or
release it. Served on both sockets (on `agent.sock` the caller is the session of the bearer token);
the agent routes are seed 002's `/api/agent/tasks/...`."""

from __future__ import annotations

import sys
from functools import partial

from engine.tasks import models as tm
from mcp_server import commands
from mcp_server.ops import CHANGE, Op

NAME = "tasks"
"""The toolset (`--toolsets tasks`) and the permission area."""
op = partial(Op, NAME)
HOLDING = "/api/agent/tasks/{task_run_id}"

CREATE = op(
    "task_create", "Queue a task (title, identifier, priority: higher first, payload, max_attempts) for a worker "
    "session to claim.", tm.TaskCreate, tm.Task, lambda e, c, i: e.tasks.create(c, i),
    "POST", "/api/v1/tasks", CHANGE, cli="tasks create", args=("title",), status=201)
GET = op("task_get", "A task with its status, attempts and task runs (leases).", tm.TaskRef, tm.Task,
         lambda e, c, i: e.tasks.get(c, i.task_id), "GET", "/api/v1/tasks/{task_id}", cli="tasks get",
         args=("task_id",))
LIST = op("task_list", "Tasks you can see, newest first: summaries without payload and result unless "
          "include_payload (task_get has them).", tm.TaskListQuery, tm.TaskList,
          lambda e, c, i: e.tasks.list(c, i), "GET", "/api/v1/tasks", cli="tasks list",
          columns=("id", "title", "priority", "status", "attempts", "failures", "workspace_id", "current_run_id"))
def present_claim(result: tm.ClaimResult) -> None:
    """A claim for a person: what was claimed and the two things the next commands need."""
    claim = result.claim
    if claim is None:
        print("nothing to claim", file=sys.stderr)
        return
    commands.show({"task": f"{claim.task.id} {claim.task.title}", "attempt": claim.run.attempt,
                   "task_run_id": claim.run.id, "claim_token": claim.claim_token,
                   "lease_until": claim.lease.lease_until.isoformat(), "payload": claim.task.payload}, False)


def present_lease(result: tm.LeaseResult) -> None:
    commands.show({"task": result.task.id, "task_status": result.task.status.value,
                   "task_run_id": result.lease.run_id, "run_status": result.lease.status.value,
                   "lease_until": result.lease.lease_until.isoformat()}, False)


CLAIM_NEXT = op(
    "task_claim_next", "Claim the highest-priority, oldest claimable task: a lease (lease_until) and a claim token, "
    "shown once, that heartbeat/complete/fail/release need. wait_seconds waits for one (bounded); claim is null "
    "when none came.", tm.ClaimNext, tm.ClaimResult, lambda e, c, i: e.tasks.claim_next(c, i),
    "POST", "/api/agent/tasks/claim-next", CHANGE, cli="tasks claim", envelope=None, wait="wait_seconds",
    present=present_claim)
HEARTBEAT = op("task_heartbeat", "Extend your lease on a task run (your claim token).", tm.Heartbeat,
               tm.LeaseResult, lambda e, c, i: e.tasks.heartbeat(c, i), "POST", HOLDING + "/heartbeat", CHANGE,
               cli="tasks heartbeat", args=("task_run_id",), envelope=None, present=present_lease)
COMPLETE = op("task_complete", "Complete the task you hold (your claim token), with a result.", tm.Complete,
              tm.LeaseResult, lambda e, c, i: e.tasks.complete(c, i), "POST", HOLDING + "/complete", CHANGE,
              cli="tasks complete", args=("task_run_id",), envelope=None, present=present_lease)
FAIL = op("task_fail", "Report that the task you hold failed: it is retried after a backoff until max_attempts, "
          "then ends failed.", tm.Fail, tm.LeaseResult, lambda e, c, i: e.tasks.fail(c, i),
          "POST", HOLDING + "/fail", CHANGE, cli="tasks fail", args=("task_run_id",), envelope=None, present=present_lease)
RELEASE = op("task_release", "Give the task you hold back to the queue at once (not counted as a failed "
             "attempt).", tm.Holding, tm.LeaseResult, lambda e, c, i: e.tasks.release(c, i),
             "POST", HOLDING + "/release", CHANGE, cli="tasks release", args=("task_run_id",), envelope=None, present=present_lease)

OPS = (CREATE, GET, LIST, CLAIM_NEXT, HEARTBEAT, COMPLETE, FAIL, RELEASE)
COMMANDS = {"tasks": "the leased task queue: create, list, get, claim, heartbeat, complete, fail, release"}
