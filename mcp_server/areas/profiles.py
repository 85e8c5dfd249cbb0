"""Agent runtime profiles (seed 003): their HTTP routes (`/api/v1/agent-runtime-profiles`), MCP tools
and CLI commands. Served on both sockets; on `agent.sock` a session sees the tenant's profiles and
its workspace's, and manages only its workspace's."""

from __future__ import annotations

import argparse
import json

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from starlette.requests import Request
from starlette.responses import Response

from engine import errors, models
from engine import profile_models as pm
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint, body, data, params

NAME = "profiles"
"""The toolset (`--toolsets profiles`) and the permission area."""
COLUMNS = ["id", "name", "runtime", "workspace_id", "is_default", "tools", "updated_at"]
PATH = "/api/v1/agent-runtime-profiles"


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    service = engine.profiles

    async def create(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return data(await service.create(caller, models.parse(pm.ProfileCreate, await body(request))), 201)

    async def list_(request: Request, caller: Caller) -> Response:
        return data(await service.list(caller, params(request, pm.ProfileListQuery)))

    async def get(request: Request, caller: Caller) -> Response:
        return data(await service.get(caller, params(request, pm.ProfileRef).profile_id))

    async def update(request: Request, caller: Caller) -> Response:
        profile_id = params(request, pm.ProfileRef).profile_id
        req = models.parse(pm.ProfileUpdate, {**await body(request), "profile_id": profile_id})
        return data(await service.update(caller, req))

    async def delete(request: Request, caller: Caller) -> Response:
        return data(await service.delete(caller, params(request, pm.ProfileRef).profile_id))

    return [
        Endpoint(PATH, create, ["POST"]),
        Endpoint(PATH, list_, ["GET"]),
        Endpoint(PATH + "/{profile_id:id}", get, ["GET"]),
        Endpoint(PATH + "/{profile_id:id}", update, ["PUT"]),
        Endpoint(PATH + "/{profile_id:id}", delete, ["DELETE"]),
    ]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def profile_create(inp: pm.ProfileCreate, ctx: Context) -> pm.Profile:
        return await api.create_profile(inp)

    async def profile_get(inp: pm.ProfileRef, ctx: Context) -> pm.Profile:
        return await api.get_profile(inp.profile_id)

    async def profile_list(inp: pm.ProfileListQuery, ctx: Context) -> pm.ProfileList:
        return await api.list_profiles(inp)

    async def profile_update(inp: pm.ProfileUpdate, ctx: Context) -> pm.Profile:
        return await api.update_profile(inp)

    async def profile_delete(inp: pm.ProfileRef, ctx: Context) -> pm.Profile:
        return await api.delete_profile(inp.profile_id)

    return [
        mcp_tools.make_tool(
            "profile_create", "Create an agent runtime profile: runtime, model, image, resources, network, non-secret "
            "env, secret names, tool bundles, policy (approval, max_child_sandboxes); is_default makes it the "
            "default of its scope (the tenant, or workspace_id).", pm.ProfileCreate, pm.Profile, profile_create,
            mcp_tools.annotations()),
        mcp_tools.make_tool("profile_get", "One agent runtime profile.", pm.ProfileRef, pm.Profile, profile_get,
                            mcp_tools.READ),
        mcp_tools.make_tool("profile_list", "Agent runtime profiles you can see, optionally of one workspace.",
                            pm.ProfileListQuery, pm.ProfileList, profile_list, mcp_tools.READ),
        mcp_tools.make_tool("profile_update", "Change a profile's fields (those given; the rest stay). Runs already "
                            "created keep the snapshot they resolved.", pm.ProfileUpdate, pm.Profile, profile_update,
                            mcp_tools.annotations(idempotent_hint=True)),
        mcp_tools.make_tool("profile_delete", "Delete a profile (refused while an unfinished run, a live session or a "
                            "queued group entry uses it).", pm.ProfileRef, pm.Profile, profile_delete,
                            mcp_tools.annotations(destructive_hint=True)),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def profile(profile_id: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.get_profile(profile_id)).model_dump_json()

    return [mcp_tools.Resource("agentdock://profiles/{profile_id}", "profile", "An agent runtime profile.", profile)]


# ---------------------------------------------------------------- CLI


def _fields(args: argparse.Namespace) -> dict[str, object]:
    return commands.given(
        name=args.name, runtime=args.runtime, workspace_id=args.workspace, description=args.description,
        model=args.model, image=args.image, env=commands.env_pairs(args.env), secrets=args.secret,
        tools=None if args.tools is None else [t for t in args.tools.split(",") if t],
        network=True if args.network else (False if args.no_network else None),
        is_default=True if args.default else (False if args.no_default else None),
        policy=_json_arg(args.policy, "policy"), resources=_json_arg(args.resources, "resources"),
        metadata=_json_arg(args.metadata, "metadata"), connectors=args.connector)


async def cmd_create(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.create_profile(models.parse(pm.ProfileCreate, _fields(args))), args.json)
    return 0


async def cmd_update(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(pm.ProfileUpdate, {**_fields(args), "profile_id": args.id})
    commands.show(await api.update_profile(req), args.json)
    return 0


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    q = models.parse(pm.ProfileListQuery, commands.given(workspace_id=args.workspace))
    commands.show(await api.list_profiles(q), args.json, COLUMNS)
    return 0


async def cmd_get(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.get_profile(args.id), args.json)
    return 0


async def cmd_rm(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.delete_profile(args.id), args.json)
    return 0


def _json_arg(text: str | None, field: str) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput(field, f"not valid JSON ({exc.msg})") from None


def _profile_flags(c: argparse.ArgumentParser, *, create: bool) -> None:
    if create:
        c.add_argument("name")
        c.add_argument("--runtime", required=True, choices=[r.value for r in pm.Runtime])
    else:
        c.add_argument("id")
        c.add_argument("--name")
        c.add_argument("--runtime", choices=[r.value for r in pm.Runtime])
    c.add_argument("--workspace", help="scope it to a workspace (omit: tenant-level)")
    c.add_argument("--description")
    c.add_argument("--model")
    c.add_argument("--image")
    c.add_argument("--env", action="append", metavar="NAME=VALUE", help="a non-secret default (repeatable)")
    c.add_argument("--secret", action="append", metavar="NAME", help="a stored secret's name (repeatable)")
    c.add_argument("--connector", action="append", metavar="ID")
    c.add_argument("--tools", help="comma-separated bundles: files,exec,browser,previews,artifacts,deploy")
    c.add_argument("--network", action="store_true", help="devices its runs create get a network")
    c.add_argument("--no-network", dest="no_network", action="store_true")
    c.add_argument("--default", action="store_true", help="make it its scope's default")
    c.add_argument("--no-default", dest="no_default", action="store_true")
    c.add_argument("--policy", help='JSON, e.g. {"approval": "confirm-risky", "max_child_sandboxes": 5}')
    c.add_argument("--resources", help='JSON, e.g. {"cpus": 1, "memory_mb": 512, "pids_limit": 256}')
    c.add_argument("--metadata", help="JSON object")


def add_commands(cli: commands.Commands) -> None:
    cli.group("profiles", "agent runtime profiles: list, get, create, update, rm")
    c = cli.add("profiles", "list", cmd_list)
    c.add_argument("--workspace")
    cli.add("profiles", "get", cmd_get).add_argument("id")
    _profile_flags(cli.add("profiles", "create", cmd_create), create=True)
    _profile_flags(cli.add("profiles", "update", cmd_update), create=False)
    cli.add("profiles", "rm", cmd_rm).add_argument("id")
