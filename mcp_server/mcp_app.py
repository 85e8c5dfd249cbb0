"""The MCP surface: tools and resources over the daemon's API.

Each tool's input schema is its engine input model (unknown fields refused), its output schema
the record it returns; every failure comes back as `isError` with the seeds' diagnostic.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase, FuncMetadata
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from engine import errors, ids, models
from mcp_server.client import DaemonClient

log = logging.getLogger("agentdock.mcp")

MAX_PATH_CHARS = 4096
"""Longest artifact path a caller may name (PATH_MAX on Linux); the daemon has the same bound."""


class _RawArgs(ArgModelBase):
    """Hands the raw arguments to the tool, which validates them itself into a diagnostic."""

    model_config = ConfigDict(extra="allow")

    def model_dump_one_level(self) -> dict[str, Any]:
        return {"args": dict(self.model_extra or {})}


# ---------------------------------------------------------------- tool inputs and outputs


class SandboxRef(models.Input):
    sandbox_id: ids.DeviceId
    """The sandbox or computer id (sbx_... or cmp_...)."""


class RunRef(models.Input):
    run_id: ids.RunId
    """The run id (run_...)."""


class AgentRunInput(models.RunCreate):
    async_: bool = Field(default=False, alias="async")
    """Return the queued record at once instead of waiting for the run to end."""


class EventsInput(models.EventsQuery):
    run_id: ids.RunId
    """The run id."""


class ArtifactsInput(models.Input):
    run_id: ids.RunId
    """The run id."""
    path: str | None = Field(default=None, min_length=1, max_length=MAX_PATH_CHARS)
    """An exported path to read; omit to list the run's artifacts."""


class ArtifactContent(models.Record):
    path: str
    size: int
    encoding: str
    """`utf-8` for text, `base64` otherwise."""
    content: str


class ArtifactsResult(models.Record):
    data: list[models.Artifact]
    content: ArtifactContent | None = None


READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _annotations(**kw: bool) -> ToolAnnotations:
    base = {"read_only_hint": False, "destructive_hint": False, "idempotent_hint": False, "open_world_hint": False}
    return ToolAnnotations(**{**base, **kw})


def _result(value: BaseModel) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=value.model_dump_json())],
                          structured_content=value.model_dump(mode="json"))


def error_result(exc: BaseException) -> CallToolResult:
    """The one mapping from exceptions to an MCP tool error."""
    if isinstance(exc, errors.EngineError):
        diag = exc.diagnostic()
    else:
        diag = errors.internal(exc)
        log.error("unexpected error in a tool (diagnostic %s)", diag.id, exc_info=exc)
    body = {"diagnostic": diag.model_dump(mode="json"), "error": diag.message}
    return CallToolResult(is_error=True, content=[TextContent(type="text", text=json.dumps(body))],
                          structured_content=body)


Handler = Callable[[Any, Context], Awaitable[BaseModel]]


def make_tool(name: str, description: str, input_model: type[models.Input], output_model: type[BaseModel],
              handler: Handler, annotations: ToolAnnotations) -> Tool:
    async def fn(args: dict[str, Any], ctx: Context) -> CallToolResult:
        try:
            return _result(await handler(models.parse(input_model, args), ctx))
        except Exception as exc:
            return error_result(exc)

    return Tool(
        fn=fn, name=name, description=description,
        parameters=input_model.model_json_schema(by_alias=True),
        fn_metadata=FuncMetadata(arg_model=_RawArgs, output_schema=output_model.model_json_schema(),
                                 output_model=output_model),
        is_async=True, context_kwarg="ctx", annotations=annotations,
    )


# ---------------------------------------------------------------- the server

TOOLSETS = {
    "devices": ["sandbox_create", "sandbox_list", "sandbox_get", "sandbox_delete"],
    "runs": ["agent_run", "agent_run_get", "agent_run_list", "agent_run_cancel", "agent_run_events",
             "agent_run_artifacts"],
}


def tools(client: DaemonClient) -> list[Tool]:
    async def sandbox_create(inp: models.DeviceCreate, ctx: Context) -> models.Device:
        return await client.create_device(inp.model_dump(mode="json", exclude_none=True))

    async def sandbox_list(inp: models.Input, ctx: Context) -> models.DeviceList:
        return await client.list_devices()

    async def sandbox_get(inp: SandboxRef, ctx: Context) -> models.Device:
        return await client.get_device(inp.sandbox_id)

    async def sandbox_delete(inp: SandboxRef, ctx: Context) -> models.Device:
        return await client.delete_device(inp.sandbox_id)

    async def agent_run(inp: AgentRunInput, ctx: Context) -> models.Run:
        body = inp.model_dump(mode="json", exclude={"async_"}, exclude_none=True)
        run = await client.create_run(body)
        if inp.async_:
            return run
        after = 0
        with anyio.move_on_after(client.settings.mcp_max_wait_seconds):  # clients give up after about a minute
            while True:
                page = await client.run_events(run.id, after=after, wait=10)
                after = page.next_after
                if page.data:
                    last = page.data[-1]
                    await ctx.report_progress(after, None, last.message or last.type)
                if page.run_status.terminal and not page.data:
                    break
        return await client.get_run(run.id)  # still running if the wait ran out: follow it with its id

    async def agent_run_get(inp: RunRef, ctx: Context) -> models.Run:
        return await client.get_run(inp.run_id)

    async def agent_run_list(inp: models.RunListQuery, ctx: Context) -> models.RunList:
        return await client.list_runs(**inp.model_dump(mode="json", exclude_none=True))

    async def agent_run_cancel(inp: RunRef, ctx: Context) -> models.Run:
        return await client.cancel_run(inp.run_id)

    async def agent_run_events(inp: EventsInput, ctx: Context) -> models.RunEventList:
        return await client.run_events(inp.run_id, after=inp.after, limit=inp.limit, wait=inp.wait)

    async def agent_run_artifacts(inp: ArtifactsInput, ctx: Context) -> ArtifactsResult:
        listing = await client.artifacts(inp.run_id)
        content = None
        if inp.path is not None:
            raw = await client.artifact_content(inp.run_id, inp.path)
            try:
                content = ArtifactContent(path=inp.path, size=len(raw), encoding="utf-8", content=raw.decode())
            except UnicodeDecodeError:
                content = ArtifactContent(path=inp.path, size=len(raw), encoding="base64",
                                          content=base64.b64encode(raw).decode())
        return ArtifactsResult(data=listing.data, content=content)

    return [
        make_tool("sandbox_create", "Create a sandbox (small, disposable) or a computer (larger, persistent "
                  "/workspace volume): a locked-down Docker container with no network unless asked.",
                  models.DeviceCreate, models.Device, sandbox_create, _annotations()),
        make_tool("sandbox_list", "List sandboxes and computers with their live status.",
                  models.Input, models.DeviceList, sandbox_list, READ),
        make_tool("sandbox_get", "Get one sandbox or computer.", SandboxRef, models.Device, sandbox_get, READ),
        make_tool("sandbox_delete", "Delete a sandbox or computer and its container (refused while runs are "
                  "active on it).", SandboxRef, models.Device, sandbox_delete,
                  _annotations(destructive_hint=True, idempotent_hint=True)),
        make_tool("agent_run", "Run a prompt through a runtime (claude-code, codex, custom command, ...) inside a "
                  "sandbox or computer, or a fresh ephemeral sandbox when no target is given. Waits for the end "
                  "(at most 45 s, then returns the record still running: follow it with agent_run_events or "
                  "agent_run_get) reporting progress; with async=true returns the queued record at once. The run is "
                  "durable: it keeps going if this client exits.",
                  AgentRunInput, models.Run, agent_run, _annotations(open_world_hint=True)),
        make_tool("agent_run_get", "Get a run's record: status, output, stderr, exit code, failure_kind.",
                  RunRef, models.Run, agent_run_get, READ),
        make_tool("agent_run_list", "List runs, newest first, filtered by target_id and status, paged by cursor.",
                  models.RunListQuery, models.RunList, agent_run_list, READ),
        make_tool("agent_run_cancel", "Cancel a run: TERM its process group, KILL after a grace; returns the "
                  "settled record.", RunRef, models.Run, agent_run_cancel,
                  _annotations(destructive_hint=True, idempotent_hint=True)),
        make_tool("agent_run_events", "A run's events after a sequence number (per-run sequence 1..n without "
                  "gaps); with wait, long-polls for new ones.", EventsInput, models.RunEventList,
                  agent_run_events, READ),
        make_tool("agent_run_artifacts", "List the files a run exported (metadata.artifact_paths), or read one "
                  "with path.", ArtifactsInput, ArtifactsResult, agent_run_artifacts, READ),
    ]


@contextlib.contextmanager
def resource_errors() -> Iterator[None]:
    """Resource reads answer engine errors as the protocol's resource errors (not-found: -32602)."""
    try:
        yield
    except errors.EngineError as exc:
        diag = exc.diagnostic()
        if diag.code == "not_found":
            raise ResourceNotFoundError(diag.message) from None
        raise ResourceError(diag.message) from None


def build(client: DaemonClient, toolsets: Iterable[str] | None = None) -> MCPServer:
    wanted = set(toolsets or TOOLSETS)
    unknown = wanted - set(TOOLSETS)
    if unknown:
        raise errors.InvalidInput("toolsets", f"unknown toolset(s) {sorted(unknown)}; known: {sorted(TOOLSETS)}")
    names = {n for ts in wanted for n in TOOLSETS[ts]}
    server = MCPServer(
        name="agentdock", version="0.1.0", log_level="WARNING",
        instructions="agentdock runs agents in Docker sandboxes and keeps every run as a durable record. "
                     "Create a sandbox with sandbox_create (or let agent_run make an ephemeral one), run prompts "
                     "with agent_run, and read results with agent_run_get / agent_run_events.",
        tools=[t for t in tools(client) if t.name in names],
    )

    if "runs" in wanted:
        @server.resource("agentdock://runs/{run_id}", name="run", mime_type="application/json",
                         description="An agent run's record.")
        async def run_resource(run_id: str) -> str:
            with resource_errors():
                return (await client.get_run(run_id)).model_dump_json()

    if "devices" in wanted:
        @server.resource("agentdock://sandboxes/{sandbox_id}", name="sandbox", mime_type="application/json",
                         description="A sandbox or computer.")
        async def sandbox_resource(sandbox_id: str) -> str:
            with resource_errors():
                return (await client.get_device(sandbox_id)).model_dump_json()

    return server


async def serve_stdio(client: DaemonClient, toolsets: Iterable[str] | None = None) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    await build(client, toolsets).run_stdio_async()
