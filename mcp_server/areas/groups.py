"""Agent run groups: their HTTP routes (JSON and SSE), MCP tools, resource and CLI commands.

Waiting happens on the server (`engine.groups`): a dispatch's end (`/dispatches/{id}?wait=S`), a
group's end (`/{id}?wait=S`), the next event (`/events?wait=S`, or SSE with `?stream=true`). An MCP
call never waits longer than `mcp_max_wait_seconds`; a synchronous `group_dispatch` (which follows the
group's events to its items' ends, reporting progress) not done by then answers with what it has, its
`dispatch_id` and the group's event cursor.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import AliasChoices, Field
from starlette.requests import Request
from starlette.responses import Response

from engine import errors, ids, models
from engine.groups import models as gm
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, live, mcp_tools, sse
from mcp_server.api import AgentDockAPI
from mcp_server.http import MAX_WAIT_SECONDS, Endpoint, body, data, params, with_idempotency_key
from mcp_server.ops import CHANGE, DESTROY, Op

NAME = "groups"
"""The toolset (`--toolsets groups`) and the permission area."""
op = partial(Op, NAME)
MAX_DISPATCH_BODY = 32 * 1024 * 1024
"""A manifest of 1,000 items of about 32 KiB each (prompts, env, metadata): a body past this is refused before
it is read, so one request cannot make the daemon parse hundreds of megabytes of JSON."""
PROGRESS_SECONDS = 10
"""Between progress notifications while an MCP call waits with nothing new to report."""


class GroupRef(models.Input):
    group_id: ids.GroupId
    """The group id (grp_...)."""


class GroupWait(GroupRef):
    wait_seconds: float = Field(default=0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
                                validation_alias=AliasChoices("wait_seconds", "wait"))
    """Wait up to this long for the group to end before answering (0: at once)."""


class DispatchQuery(GroupRef):
    wait: float | None = Field(default=None, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    """Seconds a synchronous dispatch waits for its children (default 3,600); `async` dispatches do not wait."""


class DispatchInput(gm.DispatchRequest):
    group_id: ids.GroupId
    """The group to dispatch into."""

    def request(self) -> gm.DispatchRequest:
        return gm.DispatchRequest.model_validate(self.model_dump(by_alias=True, exclude={"group_id"},
                                                                 exclude_unset=True))


class DispatchRef(GroupRef):
    dispatch_id: ids.DispatchId
    """The dispatch id (gdsp_...) a dispatch answered with."""
    wait_seconds: float = Field(default=0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False,
                                validation_alias=AliasChoices("wait_seconds", "wait"))
    """Wait up to this long for all its entries to end before answering (0: at once)."""


class EventsInput(gm.GroupEventsQuery):
    group_id: ids.GroupId
    """The group id (grp_...)."""


class HttpEventsQuery(EventsInput):
    stream: bool = False
    """Server-sent events: replay from the cursor, then live; closed once the group has ended."""


class RunsInput(gm.GroupRunsQuery):
    group_id: ids.GroupId
    """The group id (grp_...)."""


def _get(engine: Engine, caller: Caller, inp: GroupWait) -> Awaitable[gm.Group]:
    if inp.wait_seconds:
        return engine.groups.wait(caller, inp.group_id, inp.wait_seconds)
    return engine.groups.get(caller, inp.group_id)


BASE = "/api/v1/agent-run-groups"
ONE = BASE + "/{group_id}"
CREATE = op("group_create", "Create an agent run group: many related runs under one concurrency_limit, one event "
            "stream for all of them. Set expected_runs to keep it open across several dispatches.", gm.GroupCreate,
            gm.Group, lambda e, c, i: e.groups.create(c, i), "POST", BASE, CHANGE, cli="agent-run-groups create",
            status=201)
DISPATCH = op("group_dispatch_queue", "Queue a manifest into a group (the HTTP and CLI dispatch; the group_dispatch "
              "tool waits for it).", DispatchInput, gm.DispatchResult,
              lambda e, c, i: e.groups.dispatch(c, i.group_id, i.request()), "POST", ONE + "/dispatch", CHANGE,
              status=201, tool=False, routed=False)
DISPATCH_GET = op("group_dispatch_get", "An earlier dispatch, once all its entries have ended or when wait_seconds "
                  "pass.", DispatchRef, gm.DispatchResult,
                  lambda e, c, i: e.groups.dispatch_status(c, i.group_id, i.dispatch_id, i.wait_seconds), "GET",
                  ONE + "/dispatches/{dispatch_id}", tool=False, wait="wait_seconds")
GET = op("group_get", "Get a group: status, counts, entry_counts, is_active, status_message; wait_seconds waits for "
         "its end (bounded).", GroupWait, gm.Group, _get, "GET", ONE, wait="wait_seconds")
LIST = op("group_list", "List groups, newest first, filtered by status, workspace_id or project_id, paged by cursor.",
          gm.GroupListQuery, gm.GroupList, lambda e, c, i: e.groups.list(c, i), "GET", BASE,
          cli="agent-run-groups list", columns=("id", "status", "name", "concurrency_limit", "status_message",
                                                "created_at"))
RUNS = op("group_runs", "A group's entries in order with their latest runs; include_input and include_output add "
          "each run's prompt and output.", RunsInput, gm.GroupRunList,
          lambda e, c, i: e.groups.group_runs(c, i.group_id, i), "GET", ONE + "/runs")
EVENTS = op("group_event_page", "A page of the group's events (the group_events tool reports progress meanwhile).",
            EventsInput, gm.GroupEventList, lambda e, c, i: e.groups.events(c, i.group_id, i), "GET",
            ONE + "/events", tool=False, routed=False, wait="wait_seconds")
CANCEL = op("group_cancel", "Cancel a group: queued entries end canceled without starting, running children are "
            "canceled (processes killed); returns the group.", GroupRef, gm.Group,
            lambda e, c, i: e.groups.cancel(c, i.group_id), "POST", ONE + "/cancel", DESTROY,
            cli="agent-run-groups cancel", args=("group_id",))
OPS = (CREATE, DISPATCH, DISPATCH_GET, GET, LIST, RUNS, EVENTS, CANCEL)
COMMANDS = {"agent-run-groups": "agent run groups: many runs under one concurrency limit"}


# ---------------------------------------------------------------- HTTP (dispatch with its wait, SSE events)


def endpoints(engine: Engine) -> list[Endpoint]:
    groups = engine.groups
    heartbeat = engine.settings.sse_heartbeat_seconds

    async def dispatch(request: Request, caller: Caller) -> Response:
        p = params(request, DispatchQuery)
        fields = with_idempotency_key(request, await body(request))
        req = models.parse(gm.DispatchRequest, fields)
        wait = MAX_WAIT_SECONDS if p.wait is None else p.wait
        return data(await groups.dispatch(caller, p.group_id, req, wait=wait), 201)

    async def events(request: Request, caller: Caller) -> Response:
        p = params(request, HttpEventsQuery)
        if not p.stream:
            return data(await groups.events(caller, p.group_id, p))
        after = sse.resume_from(request, p.after_sequence)
        first = await groups.events(caller, p.group_id, gm.GroupEventsQuery(after_sequence=after, limit=p.limit))

        async def more(after: int, wait: float) -> gm.GroupEventList:
            q = gm.GroupEventsQuery(after_sequence=after, limit=p.limit, wait_seconds=wait)
            return await groups.events(caller, p.group_id, q)

        return sse.response(first, more, lambda page: not page.is_active, heartbeat)

    return [
        Endpoint(BASE + "/{group_id:id}/dispatch", dispatch, ["POST"], MAX_DISPATCH_BODY),
        Endpoint(BASE + "/{group_id:id}/events", events, ["GET"]),
    ]


# ---------------------------------------------------------------- MCP


async def _reporting(api: AgentDockAPI, group_id: str, queued: gm.DispatchResult, timeout: float,
                     ctx: Context) -> None:
    """Progress notifications for a dispatch (its items ended, of all), read from the group's events, until
    every item has ended, the group has, or `timeout` has passed. Each long-poll ends by itself, by the
    timeout at the latest: nothing waits beside it to be cancelled (see `runs.wait_reporting` for the
    traceback a cancelled read on the daemon's socket can print)."""
    deadline = anyio.current_time() + timeout
    pending = {e.id for e in queued.entries if not e.status.terminal}
    cursor = queued.next_after_sequence  # taken before the entries were read: each pending end comes after it
    while pending and (remaining := deadline - anyio.current_time()) > 0:
        page = await api.call(EVENTS, group_id=group_id, after_sequence=cursor,
                              wait_seconds=min(remaining, PROGRESS_SECONDS))
        cursor = page.next_after_sequence
        pending -= {e.payload.get("entry_id") for e in page.data if e.type == "entry_finished"}
        last = page.data[-1].message if page.data else "waiting for the group's children"
        await ctx.report_progress(len(queued.entries) - len(pending), len(queued.entries), last)
        if not page.is_active and not page.data:
            return


async def _ticking(ctx: Context, message: str, progress: float) -> None:
    """Progress notifications while a call waits with nothing new (clients may reset their timeout)."""
    while True:
        await anyio.sleep(PROGRESS_SECONDS)
        await ctx.report_progress(progress, None, message)


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    max_wait = settings.mcp_max_wait_seconds

    async def group_dispatch(inp: DispatchInput, ctx: Context) -> gm.DispatchResult:
        queued = await api.call(DISPATCH, inp.model_copy(update={"async_": True}))
        if inp.async_:
            return queued
        await _reporting(api, inp.group_id, queued, max_wait, ctx)  # returns once every item has ended
        return await api.call(DISPATCH_GET, group_id=inp.group_id, dispatch_id=queued.dispatch_id)

    async def group_events(inp: EventsInput, ctx: Context) -> gm.GroupEventList:
        q = inp.model_copy(update={"wait_seconds": min(inp.wait_seconds, max_wait)})
        if not q.wait_seconds:
            return await api.call(EVENTS, q)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_ticking, ctx, f"waiting for events after {q.after_sequence}", q.after_sequence)
            page = await api.call(EVENTS, q)
            tg.cancel_scope.cancel()
        if page.data:
            await ctx.report_progress(page.next_after_sequence, None, page.data[-1].message or page.data[-1].type)
        return page

    change = mcp_tools.annotations
    return [
        mcp_tools.make_tool(
            "group_dispatch", "Dispatch a manifest (runs: 1 to 1,000 agent runs, each with optional "
            "orchestration_role and parent_agent_run_id, in a device or a fresh ephemeral sandbox) into a group. "
            f"Waits for the children (at most {int(max_wait)} s, reporting progress; then returns what has ended, "
            "done=false, and a cursor for group_events; repeat with the same idempotency_key to wait again); "
            "async=true returns the queued entries at once. An item that cannot run (unknown target) fails as its "
            "own entry.", DispatchInput, gm.DispatchResult, group_dispatch, change(open_world_hint=True)),
        mcp_tools.make_tool(
            "group_events", "One stream for the whole group: every child's events and the group's own (entry "
            "queued/started/finished, group finished), one gapless sequence. Pass the last sequence you saw as "
            f"after_sequence; wait_seconds (at most {int(max_wait)} s here) long-polls for the next.", EventsInput,
            gm.GroupEventList, group_events, mcp_tools.READ),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def group(group_id: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.call(GET, group_id=group_id)).model_dump_json()

    return [mcp_tools.Resource("agentdock://groups/{group_id}", "group", "An agent run group.", group)]


# ---------------------------------------------------------------- CLI


def _json_arg(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput(field, f"not valid JSON: {exc.msg}") from None


class Following:
    """One group read over the API, for the live display (`mcp_server.live.Source`)."""

    def __init__(self, api: AgentDockAPI, group_id: str) -> None:
        self.api, self.group_id = api, group_id

    async def events(self, after: int, wait: float) -> gm.GroupEventList:
        return await self.api.call(EVENTS, group_id=self.group_id, after_sequence=after, wait_seconds=wait)

    async def group(self) -> gm.Group:
        return await self.api.call(GET, group_id=self.group_id)

    async def dispatch(self, dispatch_id: str) -> gm.DispatchResult:
        return await self.api.call(DISPATCH_GET, group_id=self.group_id, dispatch_id=dispatch_id)


async def cmd_dispatch(api: AgentDockAPI, args: argparse.Namespace) -> int:
    items = [_json_arg(r, "runs") for r in args.run or []]
    if args.manifest:
        text = sys.stdin.read() if args.manifest == "-" else Path(args.manifest).read_text()
        manifest = _json_arg(text, "manifest")
        items += manifest.get("runs", manifest) if isinstance(manifest, dict) else manifest
    req = models.parse(gm.DispatchRequest, commands.given(runs=items, idempotency_key=args.idempotency_key)
                       | {"async": True})
    result = await api.call(DISPATCH, DispatchInput.model_validate({**req.model_dump(by_alias=True, exclude_unset=True),
                                                                    "group_id": args.group_id}))
    if not args.async_ and not args.json:
        result = await live.dispatch(Following(api, args.group_id), result)
    while not args.async_ and not result.done:
        result = await api.call(DISPATCH_GET, group_id=args.group_id, dispatch_id=result.dispatch_id,
                                wait_seconds=MAX_WAIT_SECONDS)
    if args.json:
        commands.show(result, True)
    else:
        commands.show(result.group, False)
        for r in result.results:
            what = r.run.status.value if r.run else (r.diagnostic.message if r.diagnostic else "")
            print(commands.safe(f"  [{r.index}] {'ok' if r.ok else 'FAILED'}  {r.run.id if r.run else '-'}  {what}"))
        if args.async_:
            print(f"queued {len(result.entries)} entries (dispatch {result.dispatch_id})")
    return 0 if args.async_ or all(r.ok for r in result.results) else 1


async def cmd_show(api: AgentDockAPI, args: argparse.Namespace) -> int:
    if args.watch:
        group = await live.watch(Following(api, args.group_id), as_json=args.json)
    else:
        group = await api.call(GET, group_id=args.group_id)
        if not args.runs:
            commands.show(group, args.json)
    if args.runs:
        runs = await _all_runs(api, args.group_id)
        if args.json:
            commands.show({"group": group.model_dump(mode="json"), "runs": runs}, True)
        else:
            if not args.watch:
                commands.show(group, False)
            commands.show({"data": runs}, False, ["index", "status", "attempts", "orchestration_role", "run_id",
                                                  "run_status", "failure_kind"])
    return 0


async def _all_runs(api: AgentDockAPI, group_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await api.call(RUNS, group_id=group_id, limit=1000, cursor=cursor)
        out += [r.model_dump(mode="json") for r in page.data]
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def cmd_events(api: AgentDockAPI, args: argparse.Namespace) -> int:
    q = models.parse(EventsInput, {"group_id": args.group_id, "after_sequence": args.after, "limit": args.limit})
    if args.stream:
        await live.stream(Following(api, args.group_id), args.after, as_json=args.json)
        return 0
    commands.show(await api.call(EVENTS, q), args.json,
                  ["sequence", "type", "agent_run_id", "message", "created_at"])
    return 0


def add_commands(cli: commands.Commands) -> None:
    dp = cli.add("agent-run-groups", "dispatch", cmd_dispatch, help="dispatch child runs into a group")
    dp.add_argument("group_id", metavar="GROUP_ID", help="the group (grp_...)")
    dp.add_argument("--run", action="append", metavar="JSON", help="one manifest item (repeatable)")
    dp.add_argument("--manifest", metavar="FILE", help='a JSON file ({"runs": [...]} or [...]); - for stdin')
    dp.add_argument("--idempotency-key", help="the same key and manifest is the same dispatch (wait on it again)")
    dp.add_argument("--async", dest="async_", action="store_true", help="return the queued entries at once")
    sh = cli.add("agent-run-groups", "show", cmd_show, help="a group; --runs its entries, --watch live")
    sh.add_argument("group_id", metavar="GROUP_ID", help="the group (grp_...)")
    sh.add_argument("--runs", action="store_true", help="also list its entries and runs")
    sh.add_argument("--watch", action="store_true", help="follow it live until it ends")
    ev = cli.add("agent-run-groups", "events", cmd_events, help="the group's event stream")
    ev.add_argument("group_id", metavar="GROUP_ID", help="the group (grp_...)")
    ev.add_argument("--after-sequence", dest="after", type=int, default=0, help="the last sequence already seen")
    ev.add_argument("--limit", type=int, default=500, help="events per page")
    ev.add_argument("--stream", action="store_true", help="follow live until the group ends")
