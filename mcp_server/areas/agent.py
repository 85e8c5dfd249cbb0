"""Sessions and spawn: who the caller is (`agent_me`), spawning and stopping child sessions. Served
on both sockets; on `agent.sock` the caller is the session whose bearer token came with the request."""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import context, ids, models, sessions
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint, body, data, params

NAME = "agent"
"""The toolset (`--toolsets agent`) and the permission area."""
COLUMNS = ["id", "agent_name", "state", "stop_reason", "workspace_id", "run_id", "created_at"]


class CoordinatorQuery(models.Input):
    workspace: str | None = Field(default=None, pattern=sessions.LABEL)
    """Workspace id (default: the caller's)."""


class SessionRef(models.Input):
    session_id: ids.SessionId
    """The session id (ses_...)."""


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    service = engine.sessions

    async def me(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return JSONResponse({"me": (await service.me(caller)).model_dump(mode="json")})

    async def context_(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return JSONResponse({"context": (await engine.context.context(caller)).model_dump(mode="json")})

    async def coordinator(request: Request, caller: Caller) -> Response:
        q = params(request, CoordinatorQuery)
        cfg = await engine.context.coordinator_config(caller, q.workspace)
        return JSONResponse({"coordinator": cfg.model_dump(mode="json")})

    async def spawn(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        spawned = await service.spawn(caller, models.parse(sessions.SpawnRequest, await body(request)))
        return JSONResponse({"spawn": spawned.model_dump(mode="json")}, status_code=201)

    async def list_(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return data(await service.list(caller))

    async def get(request: Request, caller: Caller) -> Response:
        return data(await service.get(caller, params(request, SessionRef).session_id))

    async def stop(request: Request, caller: Caller) -> Response:
        return data(await service.stop(caller, params(request, SessionRef).session_id))

    return [
        Endpoint("/api/agent/me", me, ["GET"]),
        Endpoint("/api/agent/spawn", spawn, ["POST"]),
        Endpoint("/api/agent/context", context_, ["GET"]),
        Endpoint("/api/agent/coordinator/config", coordinator, ["GET"]),
        Endpoint("/api/v1/sessions", list_, ["GET"]),
        Endpoint("/api/v1/sessions/{session_id:id}", get, ["GET"]),
        Endpoint("/api/v1/sessions/{session_id:id}/stop", stop, ["POST"]),
    ]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def agent_me(inp: models.Input, ctx: Context) -> sessions.Me:
        return await api.me()

    async def agent_context(inp: models.Input, ctx: Context) -> context.Context:
        return await api.context()

    async def coordinator_config(inp: CoordinatorQuery, ctx: Context) -> context.CoordinatorConfig:
        return await api.coordinator_config(inp.workspace)

    async def agent_spawn(inp: sessions.SpawnRequest, ctx: Context) -> sessions.Spawned:
        return await api.spawn(inp)

    async def agent_stop(inp: SessionRef, ctx: Context) -> sessions.Session:
        return await api.stop_session(inp.session_id)

    return [
        mcp_tools.make_tool("agent_me", "Who you are: your session, lineage, permissions, limits and the tools "
                            "you may call.", models.Input, sessions.Me, agent_me, mcp_tools.READ),
        mcp_tools.make_tool("agent_context", "Your context bundle: self, session, workspace, soul, coordination "
                            "channel, inbox summary, peer roster, capabilities, task bundle, limits, provenance.",
                            models.Input, context.Context, agent_context, mcp_tools.READ),
        mcp_tools.make_tool("coordinator_config", "How spawning is configured for a workspace (budget, TTL) and "
                            "where that comes from.", CoordinatorQuery, context.CoordinatorConfig,
                            coordinator_config, mcp_tools.READ),
        mcp_tools.make_tool(
            "agent_spawn", "Spawn a child session with permissions within yours, a TTL and a role; with a prompt "
            "it starts as an agent run in a sandbox that can call back over agent.sock. Returns its token once.",
            sessions.SpawnRequest, sessions.Spawned, agent_spawn, mcp_tools.annotations()),
        mcp_tools.make_tool(
            "agent_stop", "Stop a session you spawned (or yourself), every session below it, and their runs.",
            SessionRef, sessions.Session, agent_stop, mcp_tools.annotations(destructive_hint=True,
                                                                            idempotent_hint=True)),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    return []


# ---------------------------------------------------------------- CLI


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.list_sessions(), args.json, COLUMNS)
    return 0


async def cmd_get(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.get_session(args.id), args.json)
    return 0


async def cmd_stop(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.stop_session(args.id), args.json)
    return 0


async def cmd_spawn(api: AgentDockAPI, args: argparse.Namespace) -> int:
    permissions = None
    if args.tools is not None:
        permissions = {"tools": [t for t in args.tools.split(",") if t]}
    req = models.parse(sessions.SpawnRequest, commands.given(
        agent_name=args.agent_name, spawn_role=args.role, ttl_seconds=args.ttl, permissions=permissions,
        prompt=args.run_prompt, command=args.command,
        provider=args.provider, target_id=args.target, agent_runtime_profile_id=args.profile,
        skip_agent_runtime_profile=args.no_profile or None))
    commands.show(await api.spawn(req), args.json)
    return 0


def add_commands(cli: commands.Commands) -> None:
    cli.group("sessions", "agent sessions: who is calling, their lineage and permissions")
    cli.add("sessions", "list", cmd_list)
    cli.add("sessions", "get", cmd_get).add_argument("id")
    cli.add("sessions", "stop", cmd_stop).add_argument("id")
    for group in ("sessions", None):  # `agentdock sessions spawn` and `agentdock spawn`
        _spawn_arguments(cli.add(group, "spawn", cmd_spawn, help="spawn a child session (optionally as a run)"))


def _spawn_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("agent_name")
    c.add_argument("--role")
    c.add_argument("--ttl", type=int, help="seconds")
    c.add_argument("--tools", help="comma-separated toolsets or tool names (default: yours)")
    c.add_argument("--prompt", dest="run_prompt", help="start the child as an agent run with this prompt")
    c.add_argument("--command")
    c.add_argument("--provider")
    c.add_argument("--target")
    c.add_argument("--profile", help="spawn it under this agent runtime profile (arp_...)")
    c.add_argument("--no-profile", dest="no_profile", action="store_true", help="under no profile, not even a default (your effective limits still hold)")
