"""The leased task queue: create, list and get tasks; claim the next one, heartbeat, complete, fail or
release it. Served on both sockets (on `agent.sock` the caller is the session of the bearer token);
the agent routes are seed 002's `/api/agent/tasks/...`, with `{run_id}` the task run id."""

from __future__ import annotations

import argparse
import json

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import errors, ids, models
from engine import task_models as tm
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint, body, data, params

NAME = "tasks"
"""The toolset (`--toolsets tasks`) and the permission area."""
COLUMNS = ["id", "title", "priority", "status", "attempts", "failures", "workspace_id", "current_run_id"]


class RunRef(models.Input):
    run_id: ids.TaskRunId
    """The task run id (trun_...)."""


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    service = engine.tasks

    async def create(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return data(await service.create(caller, models.parse(tm.TaskCreate, await body(request))), 201)

    async def list_(request: Request, caller: Caller) -> Response:
        return data(await service.list(caller, params(request, tm.TaskListQuery)))

    async def get(request: Request, caller: Caller) -> Response:
        return data(await service.get(caller, params(request, tm.TaskRef).task_id))

    async def claim_next(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        result = await service.claim_next(caller, models.parse(tm.ClaimNext, await body(request)))
        return JSONResponse(result.model_dump(mode="json"))

    def holding(model: type[models.Input], call):  # type: ignore[no-untyped-def]
        async def handler(request: Request, caller: Caller) -> Response:
            run_id = params(request, RunRef).run_id
            req = models.parse(model, {**await body(request), "run_id": run_id})
            return JSONResponse((await call(caller, req)).model_dump(mode="json"))
        return handler

    return [
        Endpoint("/api/v1/tasks", create, ["POST"]),
        Endpoint("/api/v1/tasks", list_, ["GET"]),
        Endpoint("/api/v1/tasks/{task_id:id}", get, ["GET"]),
        Endpoint("/api/agent/tasks/claim-next", claim_next, ["POST"]),
        Endpoint("/api/agent/tasks/{run_id:id}/heartbeat", holding(tm.Heartbeat, service.heartbeat), ["POST"]),
        Endpoint("/api/agent/tasks/{run_id:id}/complete", holding(tm.Complete, service.complete), ["POST"]),
        Endpoint("/api/agent/tasks/{run_id:id}/fail", holding(tm.Fail, service.fail), ["POST"]),
        Endpoint("/api/agent/tasks/{run_id:id}/release", holding(tm.Holding, service.release), ["POST"]),
    ]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def task_create(inp: tm.TaskCreate, ctx: Context) -> tm.Task:
        return await api.create_task(inp)

    async def task_get(inp: tm.TaskRef, ctx: Context) -> tm.Task:
        return await api.get_task(inp.task_id)

    async def task_list(inp: tm.TaskListQuery, ctx: Context) -> tm.TaskList:
        return await api.list_tasks(inp)

    async def task_claim_next(inp: tm.ClaimNext, ctx: Context) -> tm.ClaimResult:
        return await api.claim_task(inp)

    async def task_heartbeat(inp: tm.Heartbeat, ctx: Context) -> tm.LeaseResult:
        return await api.heartbeat_task(inp)

    async def task_complete(inp: tm.Complete, ctx: Context) -> tm.LeaseResult:
        return await api.complete_task(inp)

    async def task_fail(inp: tm.Fail, ctx: Context) -> tm.LeaseResult:
        return await api.fail_task(inp)

    async def task_release(inp: tm.Holding, ctx: Context) -> tm.LeaseResult:
        return await api.release_task(inp)

    change = mcp_tools.annotations()
    return [
        mcp_tools.make_tool("task_create", "Queue a task (title, identifier, priority: higher first, payload, "
                            "max_attempts, workspace, scope) for a worker session to claim.",
                            tm.TaskCreate, tm.Task, task_create, change),
        mcp_tools.make_tool("task_get", "A task with its status, attempts and task runs (leases).",
                            tm.TaskRef, tm.Task, task_get, mcp_tools.READ),
        mcp_tools.make_tool("task_list", "Tasks you can see, newest first (optionally by status): summaries "
                            "without payload and result unless include_payload (task_get has them).",
                            tm.TaskListQuery, tm.TaskList, task_list, mcp_tools.READ),
        mcp_tools.make_tool(
            "task_claim_next", "Claim the highest-priority, oldest claimable task: returns a lease (lease_until) "
            "and a claim token, shown once, that heartbeat/complete/fail/release need. wait_seconds waits for "
            "one (bounded); claim is null when none came.", tm.ClaimNext, tm.ClaimResult, task_claim_next, change),
        mcp_tools.make_tool("task_heartbeat", "Extend your lease on a task run (your claim token).",
                            tm.Heartbeat, tm.LeaseResult, task_heartbeat, change),
        mcp_tools.make_tool("task_complete", "Complete the task you hold (your claim token), with a result.",
                            tm.Complete, tm.LeaseResult, task_complete, change),
        mcp_tools.make_tool("task_fail", "Report that the task you hold failed: it is retried after a backoff "
                            "until max_attempts, then ends failed.", tm.Fail, tm.LeaseResult, task_fail, change),
        mcp_tools.make_tool("task_release", "Give the task you hold back to the queue at once (not counted as a "
                            "failed attempt).", tm.Holding, tm.LeaseResult, task_release, change),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    return []


# ---------------------------------------------------------------- CLI


async def cmd_create(api: AgentDockAPI, args: argparse.Namespace) -> int:
    payload = _json_arg(args.payload, "payload")
    req = models.parse(tm.TaskCreate, commands.given(
        title=args.title, identifier=args.identifier, priority=args.priority, payload=payload,
        max_attempts=args.max_attempts, workspace=args.workspace, scope=args.scope))
    commands.show(await api.create_task(req), args.json)
    return 0


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    q = models.parse(tm.TaskListQuery, commands.given(status=args.status, limit=args.limit,
                                                      include_payload=args.payload))
    commands.show(await api.list_tasks(q), args.json, COLUMNS)
    return 0


async def cmd_get(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.get_task(args.id), args.json)
    return 0


async def cmd_claim(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(tm.ClaimNext, commands.given(lease_seconds=args.lease, wait_seconds=args.wait))
    commands.show(await api.claim_task(req), args.json)
    return 0


async def cmd_heartbeat(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(tm.Heartbeat, commands.given(run_id=args.run_id, claim_token=args.token,
                                                    lease_seconds=args.lease))
    commands.show(await api.heartbeat_task(req), args.json)
    return 0


async def cmd_complete(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(tm.Complete, commands.given(run_id=args.run_id, claim_token=args.token,
                                                   result=_json_arg(args.result, "result")))
    commands.show(await api.complete_task(req), args.json)
    return 0


async def cmd_fail(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(tm.Fail, commands.given(run_id=args.run_id, claim_token=args.token, error=args.error))
    commands.show(await api.fail_task(req), args.json)
    return 0


async def cmd_release(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(tm.Holding, commands.given(run_id=args.run_id, claim_token=args.token))
    commands.show(await api.release_task(req), args.json)
    return 0


def _json_arg(text: str | None, field: str) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput(field, f"not valid JSON ({exc.msg})") from None


def add_commands(cli: commands.Commands) -> None:
    cli.group("tasks", "the leased task queue: create, list, get, claim, heartbeat, complete, fail, release")
    c = cli.add("tasks", "create", cmd_create)
    c.add_argument("title")
    c.add_argument("--identifier")
    c.add_argument("--priority", type=int)
    c.add_argument("--payload", help="a JSON object")
    c.add_argument("--max-attempts", dest="max_attempts", type=int)
    c.add_argument("--workspace")
    c.add_argument("--scope")
    c = cli.add("tasks", "list", cmd_list)
    c.add_argument("--status")
    c.add_argument("--limit", type=int)
    c.add_argument("--payload", action="store_true", default=None,
                   help="carry payloads, results and whole errors (up to the answer's byte budget)")
    cli.add("tasks", "get", cmd_get).add_argument("id")
    c = cli.add("tasks", "claim", cmd_claim, help="claim the next task (prints its claim token once)")
    c.add_argument("--lease", type=float, help="lease seconds")
    c.add_argument("--wait", type=float, help="seconds to wait for a claimable task")
    for name, fn in (("heartbeat", cmd_heartbeat), ("complete", cmd_complete), ("fail", cmd_fail),
                     ("release", cmd_release)):
        c = cli.add("tasks", name, fn)
        c.add_argument("run_id")
        c.add_argument("--token", required=True, help="the claim token the claim printed")
        if name == "heartbeat":
            c.add_argument("--lease", type=float, help="lease seconds from now")
        if name == "complete":
            c.add_argument("--result", help="JSON")
        if name == "fail":
            c.add_argument("--error", required=True)
