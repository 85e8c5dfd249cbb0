"""Agent runs: their HTTP routes, MCP tools, resource and CLI commands.

Waiting for a run's end happens on the server: `engine.runs.wait` (reached as
`GET /api/v1/agent-runs/{id}?wait=S` or `AgentDockAPI.wait_run`) for the CLI, and the events long-poll
in `pages()`, which also returns once the run has ended, for `agent_run` (its events feed its progress
notifications) and `runs events --follow`.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
from collections.abc import AsyncIterator

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from engine import errors, ids, models
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import (MAX_PATH_CHARS, MAX_WAIT_SECONDS, Endpoint, WaitQuery, body, data, params,
                             with_idempotency_key)

NAME = "runs"
"""The toolset (`--toolsets runs`) and the permission area."""
COLUMNS = ["id", "status", "provider", "target_id", "exit_code", "failure_kind", "created_at"]
POLL_SECONDS = 10
"""How long one long-poll for a run's next events waits before it is asked again."""


class RunRef(models.Input):
    run_id: ids.RunId
    """The run id (run_...)."""


class RunWait(RunRef, WaitQuery):
    pass


class AgentRunInput(models.RunCreate):
    async_: bool = Field(default=False, alias="async")
    """Return the queued record at once instead of waiting for the run to end."""

    def request(self) -> models.RunCreate:
        return models.RunCreate.model_validate(self.model_dump(exclude={"async_"}, exclude_unset=True))


class EventsInput(models.EventsQuery):
    run_id: ids.RunId
    """The run id."""


class ArtifactsInput(models.Input):
    run_id: ids.RunId
    """The run id."""
    path: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    """An exported path to read; omit to list the run's artifacts."""


class ArtifactPath(RunRef):
    path: str = Field(min_length=1, max_length=MAX_PATH_CHARS)


class ArtifactContent(models.Record):
    path: str
    size: int
    encoding: str
    """`utf-8` for text, `base64` otherwise."""
    content: str


class ArtifactsResult(models.Record):
    data: list[models.Artifact]
    content: ArtifactContent | None = None


async def pages(api: AgentDockAPI, run_id: str, after: int = 0, limit: int = 500,
                deadline: float = math.inf) -> AsyncIterator[models.RunEventList]:
    """A run's events after `after`, page by page as they come (long-poll), until it has ended and
    every event has been read, or `deadline` (anyio's clock) has passed. Each long-poll ends by
    itself, by the deadline at the latest."""
    q = models.EventsQuery(after=after, limit=limit)
    while True:
        page = await api.run_events(run_id, q)
        if page.data:
            yield page
        elif page.run_status.terminal:
            return
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            return
        q = models.EventsQuery(after=page.next_after, limit=limit, wait=min(POLL_SECONDS, remaining))


async def wait_reporting(api: AgentDockAPI, run_id: str, timeout: float, ctx: Context) -> models.Run:
    """The run once it has ended (or as it is when `timeout` passes), sending a progress notification
    for each page of its events meanwhile. The events' long-poll is the wait: it returns once the run
    has ended, so no second request waits beside it to be cancelled. (Cancelling a read pending on
    the daemon's Unix socket just as its answer arrives makes anyio's reader callback set a result on
    the cancelled future, and asyncio logs that InvalidStateError with a traceback on serve's stderr.)"""
    async for page in pages(api, run_id, deadline=anyio.current_time() + timeout):
        last = page.data[-1]
        await ctx.report_progress(page.next_after, None, last.message or last.type)
    return await api.get_run(run_id)


async def until_ended(api: AgentDockAPI, run_id: str) -> models.Run:
    """The run once it has ended, however long that takes (each wait bounded, asked again)."""
    run = await api.wait_run(run_id, MAX_WAIT_SECONDS)
    while not run.status.terminal:
        run = await api.wait_run(run_id, MAX_WAIT_SECONDS)
    return run


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    runs = engine.runs

    async def create(request: Request, caller: Caller) -> Response:
        wait = params(request, WaitQuery).wait
        fields = with_idempotency_key(request, await body(request))
        run = await runs.create(caller, models.parse(models.RunCreate, fields))
        if wait:
            run = await runs.wait(caller, run.id, wait)
        return data(run, 201)

    async def list_(request: Request, caller: Caller) -> Response:
        return data(await runs.list(caller, params(request, models.RunListQuery)))

    async def get(request: Request, caller: Caller) -> Response:
        p = params(request, RunWait)
        return data(await (runs.wait(caller, p.run_id, p.wait) if p.wait else runs.get(caller, p.run_id)))

    async def cancel(request: Request, caller: Caller) -> Response:
        return data(await runs.cancel(caller, params(request, RunRef).run_id))

    async def events(request: Request, caller: Caller) -> Response:
        p = params(request, EventsInput)
        return data(await runs.events(caller, p.run_id, p))

    async def artifacts(request: Request, caller: Caller) -> Response:
        return data(await runs.artifacts(caller, params(request, RunRef).run_id))

    async def artifact_content(request: Request, caller: Caller) -> Response:
        p = params(request, ArtifactPath)
        return Response(await runs.artifact_bytes(caller, p.run_id, p.path), media_type="application/octet-stream")

    return [
        Endpoint("/api/v1/agent-runs", create, ["POST"]),
        Endpoint("/api/v1/agent-runs", list_, ["GET"]),
        Endpoint("/api/v1/agent-runs/{run_id:id}", get, ["GET"]),
        Endpoint("/api/v1/agent-runs/{run_id:id}/cancel", cancel, ["POST"]),
        Endpoint("/api/v1/agent-runs/{run_id:id}/events", events, ["GET"]),
        Endpoint("/api/v1/agent-runs/{run_id:id}/artifacts", artifacts, ["GET"]),
        Endpoint("/api/v1/agent-runs/{run_id:id}/artifacts/content", artifact_content, ["GET"]),
    ]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    max_wait = settings.mcp_max_wait_seconds  # clients give up on a tool call after about a minute

    async def agent_run(inp: AgentRunInput, ctx: Context) -> models.Run:
        run = await api.create_run(inp.request())
        if inp.async_:
            return run
        return await wait_reporting(api, run.id, max_wait, ctx)  # still running if the wait ran out

    async def agent_run_get(inp: RunRef, ctx: Context) -> models.Run:
        return await api.get_run(inp.run_id)

    async def agent_run_list(inp: models.RunListQuery, ctx: Context) -> models.RunList:
        return await api.list_runs(inp)

    async def agent_run_cancel(inp: RunRef, ctx: Context) -> models.Run:
        return await api.cancel_run(inp.run_id)

    async def agent_run_events(inp: EventsInput, ctx: Context) -> models.RunEventList:
        q = models.EventsQuery(after=inp.after, limit=inp.limit, wait=min(inp.wait, max_wait))
        return await api.run_events(inp.run_id, q)

    async def agent_run_artifacts(inp: ArtifactsInput, ctx: Context) -> ArtifactsResult:
        listing = await api.artifacts(inp.run_id)
        content = None
        if inp.path is not None:
            raw = await api.artifact_content(inp.run_id, inp.path)
            try:
                content = ArtifactContent(path=inp.path, size=len(raw), encoding="utf-8", content=raw.decode())
            except UnicodeDecodeError:
                content = ArtifactContent(path=inp.path, size=len(raw), encoding="base64",
                                          content=base64.b64encode(raw).decode())
        return ArtifactsResult(data=listing.data, content=content)

    read, change = mcp_tools.READ, mcp_tools.annotations
    return [
        mcp_tools.make_tool(
            "agent_run", "Run a prompt through a runtime (claude-code, codex, custom command, ...) inside a sandbox or "
            "computer, or a fresh ephemeral sandbox when no target is given. Waits for the end (at most 45 s, then "
            "returns the record still running: follow it with agent_run_events or agent_run_get) reporting "
            "progress; with async=true returns the queued record at once. The run is durable: it keeps going if "
            "this client exits.", AgentRunInput, models.Run, agent_run, change(open_world_hint=True)),
        mcp_tools.make_tool("agent_run_get", "Get a run's record: status, output, stderr, exit code, failure_kind.",
                            RunRef, models.Run, agent_run_get, read),
        mcp_tools.make_tool("agent_run_list", "List runs, newest first, filtered by target_id and status, paged by "
                            "cursor.", models.RunListQuery, models.RunList, agent_run_list, read),
        mcp_tools.make_tool("agent_run_cancel", "Cancel a run: TERM its process group, KILL after a grace; returns "
                            "the settled record.", RunRef, models.Run, agent_run_cancel,
                            change(destructive_hint=True, idempotent_hint=True)),
        mcp_tools.make_tool("agent_run_events", "A run's events after a sequence number (per-run sequence 1..n "
                            "without gaps); with wait, long-polls for new ones.", EventsInput, models.RunEventList,
                            agent_run_events, read),
        mcp_tools.make_tool("agent_run_artifacts", "List the files a run exported (metadata.artifact_paths), or read "
                            "one with path.", ArtifactsInput, ArtifactsResult, agent_run_artifacts, read),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def run(run_id: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.get_run(run_id)).model_dump_json()

    return [mcp_tools.Resource("agentdock://runs/{run_id}", "run", "An agent run's record.", run)]


# ---------------------------------------------------------------- CLI


async def cmd_prompt(api: AgentDockAPI, args: argparse.Namespace) -> int:
    fields = commands.given(
        target_id=args.id, provider=args.provider, cwd=args.cwd, timeout=args.timeout, model=args.model,
        command=args.runtime_command, prompt=" ".join(args.prompt), env=commands.env_pairs(args.env),
        secrets=args.secret, idempotency_key=args.idempotency_key, agent_runtime_profile_id=args.profile,
        skip_agent_runtime_profile=args.no_profile or None)
    if args.metadata:
        try:
            fields["metadata"] = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise errors.InvalidInput("metadata", f"not valid JSON: {exc.msg}") from None
    run = await api.create_run(models.parse(models.RunCreate, fields))
    if not args.async_:
        run = await until_ended(api, run.id)
    commands.show(run, args.json)
    return 1 if run.status in (models.RunStatus.failed, models.RunStatus.canceled) else 0


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    q = models.parse(models.RunListQuery, commands.given(target_id=args.target_id, status=args.status,
                                                         limit=args.limit, cursor=args.cursor))
    commands.show(await api.list_runs(q), args.json, COLUMNS)
    return 0


async def cmd_get(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.get_run(args.id), args.json)
    return 0


async def cmd_cancel(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.cancel_run(args.id), args.json)
    return 0


async def cmd_events(api: AgentDockAPI, args: argparse.Namespace) -> int:
    if not args.follow:
        q = models.parse(models.EventsQuery, {"after": args.after, "limit": args.limit})
        commands.show(await api.run_events(args.id, q), args.json, ["sequence", "type", "message", "created_at"])
        return 0
    async for page in pages(api, args.id, args.after, args.limit):
        for ev in page.data:
            print(ev.model_dump_json() if args.json else commands.safe(
                f"{ev.sequence:>5}  {ev.type:<18} {ev.message or json.dumps(ev.payload)[:120]}"), flush=True)
    return 0


async def cmd_artifacts(api: AgentDockAPI, args: argparse.Namespace) -> int:
    if args.path:
        sys.stdout.buffer.write(await api.artifact_content(args.id, args.path))
    else:
        commands.show(await api.artifacts(args.id), args.json, ["path", "size", "sha256"])
    return 0


def add_commands(cli: commands.Commands) -> None:
    pr = cli.add("sandbox", "prompt", cmd_prompt, help="run a prompt in a sandbox")
    pr.add_argument("id")
    pr.add_argument("--provider")
    pr.add_argument("--cwd")
    pr.add_argument("--timeout", type=int)
    pr.add_argument("--model")
    pr.add_argument("--runtime-command")
    pr.add_argument("--env", action="append", metavar="NAME=VALUE")
    pr.add_argument("--secret", action="append", metavar="NAME", help="a stored secret the run needs (repeatable)")
    pr.add_argument("--metadata", help="JSON object")
    pr.add_argument("--idempotency-key")
    pr.add_argument("--profile", help="run under this agent runtime profile (arp_...) instead of the defaults")
    pr.add_argument("--no-profile", dest="no_profile", action="store_true", help="apply no profile at all")
    pr.add_argument("--async", dest="async_", action="store_true", help="return at once")
    pr.add_argument("prompt", nargs="*", help="the prompt (after --)")

    cli.group("runs", "agent runs")
    ls = cli.add("runs", "list", cmd_list)
    ls.add_argument("--target-id")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--cursor")
    cli.add("runs", "get", cmd_get).add_argument("id")
    cli.add("runs", "cancel", cmd_cancel).add_argument("id")
    ev = cli.add("runs", "events", cmd_events)
    ev.add_argument("id")
    ev.add_argument("--after", type=int, default=0)
    ev.add_argument("--limit", type=int, default=500)
    ev.add_argument("--follow", action="store_true")
    ar = cli.add("runs", "artifacts", cmd_artifacts)
    ar.add_argument("id")
    ar.add_argument("--path")
