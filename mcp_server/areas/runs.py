"""Agent runs: their HTTP routes, MCP tools, resource and CLI commands.

Waiting for a run's end happens on the server: `engine.runs.wait` (reached as
`GET /api/v1/agent-runs/{id}?wait=S` or `AgentDockAPI.wait_run`) for the CLI, and the events long-poll
in `pages()`, which also returns once the run has ended, for `agent_run` (its events feed its progress
notifications) and `runs events --follow`.
"""

from __future__ import annotations

import argparse
import base64
import math
import sys
from collections.abc import AsyncIterator, Awaitable
from functools import partial

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import AliasChoices, Field
from starlette.requests import Request
from starlette.responses import Response

from engine import ids, models
from engine.runs import models as rm
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools, ops, sse
from mcp_server.api import AgentDockAPI
from mcp_server.http import (MAX_PATH_CHARS, MAX_WAIT_SECONDS, Endpoint, WaitQuery, body, data, params,
                             with_idempotency_key)
from mcp_server.ops import CHANGE, DESTROY, READ, Op

NAME = "runs"
"""The toolset (`--toolsets runs`) and the permission area."""
op = partial(Op, NAME)
POLL_SECONDS = 10
"""How long one long-poll for a run's next events waits before it is asked again."""
ONE = "/api/v1/agent-runs/{run_id}"


class RunRef(models.Input):
    run_id: ids.RunId
    """The run id (run_...)."""


class RunWait(RunRef):
    wait_seconds: float = Field(default=0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
                                validation_alias=AliasChoices("wait_seconds", "wait"))
    """Wait up to this long for the run to end before answering (0: at once); call again to go on waiting."""


class AgentRunInput(rm.RunCreate):
    async_: bool = Field(default=False, alias="async")
    """Return the queued record at once instead of waiting for the run to end."""

    def request(self) -> rm.RunCreate:
        return rm.RunCreate.model_validate(self.model_dump(exclude={"async_"}, exclude_unset=True))


class EventsInput(rm.EventsQuery):
    run_id: ids.RunId
    """The run id (run_...)."""


class HttpEventsInput(EventsInput):
    stream: bool = False
    """Server-sent events: replay from the cursor, then live; closed once the run has ended."""


class ArtifactsInput(models.Input):
    run_id: ids.RunId
    """The run id (run_...)."""
    path: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    """An exported path to read; omit to list the run's artifacts."""


class ArtifactPath(RunRef):
    path: str = Field(min_length=1, max_length=MAX_PATH_CHARS)
    """The exported path to read."""


class ArtifactContent(models.Record):
    path: str
    size: int
    encoding: str
    """`utf-8` for text, `base64` otherwise."""
    content: str


class ArtifactsResult(models.Record):
    data: list[rm.Artifact]
    content: ArtifactContent | None = None


def _get(engine: Engine, caller: Caller, inp: RunWait) -> Awaitable[rm.Run]:
    if inp.wait_seconds:
        return engine.runs.wait(caller, inp.run_id, inp.wait_seconds)
    return engine.runs.get(caller, inp.run_id)


CREATE = op("agent_run_create", "Queue an agent run (the HTTP and CLI create; the agent_run tool waits for it).",
            rm.RunCreate, rm.Run, lambda e, c, i: e.runs.create(c, i), "POST", "/api/v1/agent-runs", CHANGE,
            status=201, tool=False, routed=False)
def present(run: rm.Run) -> None:
    """A run for a person: its output first, then what it was and how it ended."""
    if run.output:
        sys.stdout.write(commands.safe(run.output if run.output.endswith("\n") else run.output + "\n"))
    if run.stderr:
        sys.stderr.write(commands.safe(run.stderr if run.stderr.endswith("\n") else run.stderr + "\n"))
    commands.show({"id": run.id, "status": run.status.value, "provider": run.provider.value,
                   "target": f"{run.target_id} ({run.target_kind.value})" if run.target_id else "ephemeral",
                   "exit_code": run.exit_code, "failure_kind": run.failure_kind, "error": run.error,
                   "created_at": run.created_at.isoformat(),
                   "finished_at": run.finished_at.isoformat() if run.finished_at else None}, False)


GET = op("agent_run_get", "Get a run's record: status, output, stderr, exit code, failure_kind; wait_seconds waits "
         "for its end (bounded).", RunWait, rm.Run, _get, "GET", ONE, cli="runs get", args=("run_id",),
         wait="wait_seconds", present=present)
LIST = op("agent_run_list", "List runs, newest first, filtered by target_id and status, paged by cursor.",
          rm.RunListQuery, rm.RunList, lambda e, c, i: e.runs.list(c, i), "GET", "/api/v1/agent-runs",
          cli="runs list", columns=("id", "status", "provider", "target_id", "exit_code", "failure_kind", "created_at"))
CANCEL = op("agent_run_cancel", "Cancel a run: TERM its process group, KILL after a grace; returns the settled "
            "record.", RunRef, rm.Run, lambda e, c, i: e.runs.cancel(c, i.run_id), "POST", ONE + "/cancel", DESTROY,
            cli="runs cancel", args=("run_id",))
EVENTS = op("agent_run_events", "A run's events after a sequence number (per-run sequence 1..n without gaps); "
            "wait_seconds long-polls for new ones.", EventsInput, rm.RunEventList,
            lambda e, c, i: e.runs.events(c, i.run_id, i), "GET", ONE + "/events", wait="wait_seconds",
            routed=False)
ARTIFACTS = op("agent_run_artifact_list", "The files a run exported.", RunRef, rm.ArtifactList,
               lambda e, c, i: e.runs.artifacts(c, i.run_id), "GET", ONE + "/artifacts", tool=False)
OPS = (CREATE, GET, LIST, CANCEL, EVENTS, ARTIFACTS)
COMMANDS = {"runs": "agent runs: list, get, cancel, events [--follow], artifacts"}


async def pages(api: AgentDockAPI, run_id: str, after: int = 0, limit: int = 500,
                deadline: float = math.inf) -> AsyncIterator[rm.RunEventList]:
    """A run's events after `after`, page by page as they come (long-poll), until it has ended and
    every event has been read, or `deadline` (anyio's clock) has passed. Each long-poll ends by
    itself, by the deadline at the latest."""
    q = models.parse(EventsInput, {"run_id": run_id, "after_sequence": after, "limit": limit})
    while True:
        page = await api.call(EVENTS, q)
        if page.data:
            yield page
        elif page.run_status.terminal:
            return
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            return
        q = EventsInput(run_id=run_id, after_sequence=page.next_after_sequence, limit=limit,
                        wait_seconds=min(POLL_SECONDS, remaining))


async def wait_reporting(api: AgentDockAPI, run_id: str, timeout: float, ctx: Context) -> rm.Run:
    """The run once it has ended (or as it is when `timeout` passes), sending a progress notification
    for each page of its events meanwhile. The events' long-poll is the wait: it returns once the run
    has ended, so no second request waits beside it to be cancelled. (Cancelling a read pending on
    the daemon's Unix socket just as its answer arrives makes anyio's reader callback set a result on
    the cancelled future, and asyncio logs that InvalidStateError with a traceback on serve's stderr.)"""
    async for page in pages(api, run_id, deadline=anyio.current_time() + timeout):
        last = page.data[-1]
        await ctx.report_progress(page.next_after_sequence, None, last.message or last.type)
    return await api.call(GET, run_id=run_id)


async def until_ended(api: AgentDockAPI, run_id: str) -> rm.Run:
    """The run once it has ended, however long that takes (each wait bounded, asked again)."""
    run = await api.call(GET, run_id=run_id, wait_seconds=MAX_WAIT_SECONDS)
    while not run.status.terminal:
        run = await api.call(GET, run_id=run_id, wait_seconds=MAX_WAIT_SECONDS)
    return run


def endpoints(engine: Engine) -> list[Endpoint]:
    async def artifact_content(request: Request, caller: Caller) -> Response:
        p = params(request, ArtifactPath)
        raw = await engine.runs.artifact_bytes(caller, p.run_id, p.path)
        return Response(raw, media_type="application/octet-stream")

    async def create(request: Request, caller: Caller) -> Response:
        """The run queued; with `?wait=S`, answered once it has ended or S seconds have passed."""
        wait = params(request, WaitQuery).wait
        run = await engine.runs.create(caller, models.parse(rm.RunCreate,
                                                            with_idempotency_key(request, await body(request))))
        return data(await engine.runs.wait(caller, run.id, wait) if wait else run, 201)

    async def events(request: Request, caller: Caller) -> Response:
        """A page of the run's events; with `?stream=true`, server-sent events until the run has ended."""
        p = params(request, HttpEventsInput)
        q = EventsInput.model_validate(p.model_dump(exclude={"stream"}))
        if not p.stream:
            return data(await engine.runs.events(caller, p.run_id, q))
        first = await engine.runs.events(caller, p.run_id, q.model_copy(update={
            "after_sequence": sse.resume_from(request, p.after_sequence), "wait_seconds": 0}))

        async def more(after: int, wait: float) -> rm.RunEventList:
            return await engine.runs.events(caller, p.run_id, q.model_copy(update={"after_sequence": after,
                                                                                  "wait_seconds": wait}))

        return sse.response(first, more, lambda page: page.run_status.terminal, engine.settings.sse_heartbeat_seconds)

    return [Endpoint("/api/v1/agent-runs", create, ["POST"]),
            Endpoint(ONE.replace("}", ":id}") + "/events", events, ["GET"]),
            Endpoint("/api/v1/agent-runs/{run_id:id}/artifacts/content", artifact_content, ["GET"])]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    max_wait = settings.mcp_max_wait_seconds  # clients give up on a tool call after about a minute

    async def agent_run(inp: AgentRunInput, ctx: Context) -> rm.Run:
        run = await api.call(CREATE, inp.request())
        if inp.async_:
            return run
        return await wait_reporting(api, run.id, max_wait, ctx)  # still running if the wait ran out

    async def agent_run_artifacts(inp: ArtifactsInput, ctx: Context) -> ArtifactsResult:
        listing = await api.call(ARTIFACTS, run_id=inp.run_id)
        content = None
        if inp.path is not None:
            raw = await api.artifact_content(inp.run_id, inp.path)
            try:
                content = ArtifactContent(path=inp.path, size=len(raw), encoding="utf-8", content=raw.decode())
            except UnicodeDecodeError:
                content = ArtifactContent(path=inp.path, size=len(raw), encoding="base64",
                                          content=base64.b64encode(raw).decode())
        return ArtifactsResult(data=listing.data, content=content)

    return [
        mcp_tools.make_tool(
            "agent_run", "Run a prompt through a runtime (claude-code, codex, custom command, ...) inside a sandbox or "
            "computer, or a fresh ephemeral sandbox when no target is given. Waits for the end (at most 45 s, then "
            "returns the record still running: follow it with agent_run_events or agent_run_get) reporting "
            "progress; with async=true returns the queued record at once. The run is durable: it keeps going if "
            "this client exits.", AgentRunInput, rm.Run, agent_run, mcp_tools.annotations(open_world_hint=True)),
        mcp_tools.make_tool("agent_run_artifacts", "List the files a run exported (metadata.artifact_paths), or read "
                            "one with path.", ArtifactsInput, ArtifactsResult, agent_run_artifacts, READ),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def run(run_id: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.call(GET, run_id=run_id)).model_dump_json()

    return [mcp_tools.Resource("agentdock://runs/{run_id}", "run", "An agent run's record.", run)]


# ---------------------------------------------------------------- CLI


RUN_FLAGS = [f for f in rm.RunCreate.model_fields if f not in ("prompt", "target_kind", "sandbox_id", "computer_id",
                                                                      "agent_profile_id")]
"""The fields `agentdock run` takes as flags (the target is a flag too: none means a fresh sandbox)."""


async def cmd_run(api: AgentDockAPI, args: argparse.Namespace) -> int:
    """Queue the run; unless --async, print its output as it comes (human mode) and then how it ended."""
    fields = ops.given(rm.RunCreate, args, RUN_FLAGS)
    if getattr(args, "sandbox_id", None):
        fields["target_id"] = args.sandbox_id
    fields["prompt"] = " ".join(args.prompt)
    run = await api.call(CREATE, models.parse(rm.RunCreate, fields))
    if args.async_:
        if args.json:
            commands.show(run, True)
        else:
            print(run.id)
        return 0
    if args.json:
        run = await until_ended(api, run.id)
        commands.show(run, True)
    else:
        async for page in pages(api, run.id):
            for ev in page.data:
                print_event(ev, verbose=False)
        run = await api.call(GET, run_id=run.id)
        show_ending(run)
    return 1 if run.status in (models.RunStatus.failed, models.RunStatus.canceled) else 0


def print_event(ev: rm.RunEvent, *, verbose: bool = True) -> None:
    """A run's event as plain text: its output on stdout, its stderr on stderr, the rest (when `verbose`)
    as one line on stderr."""
    text = ev.payload.get("text") if isinstance(ev.payload, dict) else None
    if ev.type == "output" and isinstance(text, str):
        sys.stdout.write(commands.safe(text))
        sys.stdout.flush()
    elif ev.type == "stderr" and isinstance(text, str):
        sys.stderr.write(commands.safe(text))
        sys.stderr.flush()
    elif verbose:
        print(commands.safe(f"· {ev.sequence} {ev.type} {ev.message}".rstrip()), file=sys.stderr, flush=True)


def show_ending(run: rm.Run) -> None:
    """How a run ended, after its output: one line on stderr (and its error, if any)."""
    how = run.status.value + (f", exit {run.exit_code}" if run.exit_code is not None else "")
    if run.failure_kind:
        how += f", {run.failure_kind}"
    print(commands.safe(f"-- {run.id} {how}"), file=sys.stderr)
    if run.error:
        print(commands.safe(f"   {run.error}"), file=sys.stderr)


async def cmd_events(api: AgentDockAPI, args: argparse.Namespace) -> int:
    if not args.follow:
        q = models.parse(EventsInput, {"run_id": args.run_id, "after_sequence": args.after, "limit": args.limit})
        commands.show(await api.call(EVENTS, q), args.json, ["sequence", "type", "message", "created_at"])
        return 0
    async for page in pages(api, args.run_id, args.after, args.limit):
        for ev in page.data:
            if args.json:
                print(ev.model_dump_json(), flush=True)
            else:
                print_event(ev)
    return 0


async def cmd_artifacts(api: AgentDockAPI, args: argparse.Namespace) -> int:
    if args.path:
        sys.stdout.buffer.write(await api.artifact_content(args.run_id, args.path))
    else:
        commands.show(await api.call(ARTIFACTS, run_id=args.run_id), args.json, ["path", "size", "sha256"])
    return 0


def add_commands(cli: commands.Commands) -> None:
    run = cli.add(None, "run", cmd_run, help="run a prompt (in a fresh sandbox unless --target-id): agentdock run "
                  "[flags] -- PROMPT")
    prompt = cli.add("sandbox", "prompt", cmd_run, help="run a prompt in a sandbox: agentdock sandbox prompt ID -- "
                     "PROMPT")
    prompt.add_argument("sandbox_id", metavar="SANDBOX_ID", help="the sandbox or computer (sbx_/cmp_...)")
    for parser in (run, prompt):
        for field in RUN_FLAGS:
            if parser is prompt and field == "target_id":
                continue
            ops.add_argument(parser, field, rm.RunCreate.model_fields[field])
        parser.add_argument("--async", dest="async_", action="store_true", help="return the queued run at once")
        parser.add_argument("prompt", nargs="*", help="the prompt (after --)")

    ev = cli.add("runs", "events", cmd_events, help=EVENTS.summary)
    ev.add_argument("run_id", metavar="RUN_ID", help="the run id (run_...)")
    ev.add_argument("--after-sequence", dest="after", type=int, default=0, help="only events after this sequence")
    ev.add_argument("--limit", type=int, default=500, help="at most this many events per page")
    ev.add_argument("--follow", action="store_true", help="print events as they come until the run has ended")
    ar = cli.add("runs", "artifacts", cmd_artifacts, help="list the files a run exported, or print one (--path)")
    ar.add_argument("run_id", metavar="RUN_ID", help="the run id (run_...)")
    ar.add_argument("--path", help="the exported file to print (its bytes, to stdout)")
