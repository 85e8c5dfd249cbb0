"""Devices (sandboxes and computers): their HTTP routes, MCP tools, resource and CLI commands."""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from starlette.requests import Request
from starlette.responses import Response

from engine import ids, models
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint, body, data, params

NAME = "devices"
"""The toolset (`--toolsets devices`) and the permission area."""
COLUMNS = ["id", "kind", "status", "image", "name", "created_at"]


class SandboxRef(models.Input):
    sandbox_id: ids.DeviceId
    """The sandbox or computer id (sbx_... or cmp_...)."""


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    devices = engine.devices

    async def create(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return data(await devices.create(caller, models.parse(models.DeviceCreate, await body(request))), 201)

    async def list_(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return data(await devices.list(caller))

    async def get(request: Request, caller: Caller) -> Response:
        return data(await devices.get(caller, params(request, SandboxRef).sandbox_id))

    async def delete(request: Request, caller: Caller) -> Response:
        return data(await devices.delete(caller, params(request, SandboxRef).sandbox_id))

    return [
        Endpoint("/api/v1/sandboxes", create, ["POST"]),
        Endpoint("/api/v1/sandboxes", list_, ["GET"]),
        Endpoint("/api/v1/sandboxes/{sandbox_id:id}", get, ["GET"]),
        Endpoint("/api/v1/sandboxes/{sandbox_id:id}", delete, ["DELETE"]),
    ]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def sandbox_create(inp: models.DeviceCreate, ctx: Context) -> models.Device:
        return await api.create_device(inp)

    async def sandbox_list(inp: models.Input, ctx: Context) -> models.DeviceList:
        return await api.list_devices()

    async def sandbox_get(inp: SandboxRef, ctx: Context) -> models.Device:
        return await api.get_device(inp.sandbox_id)

    async def sandbox_delete(inp: SandboxRef, ctx: Context) -> models.Device:
        return await api.delete_device(inp.sandbox_id)

    return [
        mcp_tools.make_tool(
            "sandbox_create", "Create a sandbox (small, disposable) or a computer (larger, persistent /workspace "
            "volume): a locked-down Docker container with no network unless asked.",
            models.DeviceCreate, models.Device, sandbox_create, mcp_tools.annotations()),
        mcp_tools.make_tool("sandbox_list", "List sandboxes and computers with their live status.",
                            models.Input, models.DeviceList, sandbox_list, mcp_tools.READ),
        mcp_tools.make_tool("sandbox_get", "Get one sandbox or computer.", SandboxRef, models.Device, sandbox_get,
                            mcp_tools.READ),
        mcp_tools.make_tool(
            "sandbox_delete", "Delete a sandbox or computer and its container (refused while runs are active on it).",
            SandboxRef, models.Device, sandbox_delete,
            mcp_tools.annotations(destructive_hint=True, idempotent_hint=True)),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def sandbox(sandbox_id: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.get_device(sandbox_id)).model_dump_json()

    return [mcp_tools.Resource("agentdock://sandboxes/{sandbox_id}", "sandbox", "A sandbox or computer.", sandbox)]


# ---------------------------------------------------------------- CLI


async def cmd_create(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(models.DeviceCreate, commands.given(
        kind=args.kind, name=args.name, image=args.image, cpus=args.cpus, memory_mb=args.memory_mb,
        pids_limit=args.pids_limit, network=args.network or None, env=commands.env_pairs(args.env),
        agent_runtime_profile_id=args.profile))
    commands.show(await api.create_device(req), args.json)
    return 0


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.list_devices(), args.json, COLUMNS)
    return 0


async def cmd_get(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.get_device(args.id), args.json)
    return 0


async def cmd_rm(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.delete_device(args.id), args.json)
    return 0


def add_commands(cli: commands.Commands) -> None:
    cli.group("sandbox", "sandboxes and computers")
    c = cli.add("sandbox", "create", cmd_create)
    c.add_argument("--kind", choices=["sandbox", "computer"], default="sandbox")
    c.add_argument("--name")
    c.add_argument("--image")
    c.add_argument("--cpus", type=float)
    c.add_argument("--memory-mb", type=int)
    c.add_argument("--pids-limit", type=int)
    c.add_argument("--network", action="store_true")
    c.add_argument("--env", action="append", metavar="NAME=VALUE")
    c.add_argument("--profile", help="take image, limits and network not given here from this profile (arp_...)")
    cli.add("sandbox", "list", cmd_list)
    cli.add("sandbox", "get", cmd_get).add_argument("id")
    cli.add("sandbox", "rm", cmd_rm).add_argument("id")
