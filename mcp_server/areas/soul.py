"""Souls: their HTTP routes (seed 002's `/api/agent/soul`), MCP tools, resource and CLI commands.

The seed's agent API answers with the soul itself, not under `data`. A validate that finds the document
invalid answers 422 with the soul and its diagnostics (the seed's validate has a soul-shaped error
response); a valid or missing soul is 200.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from starlette.requests import Request
from starlette.responses import Response

from engine import errors, models, souls
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint, SafeJSONResponse, body, params

NAME = "soul"
"""The toolset (`--toolsets soul`) and the permission area."""
PATH = "/api/agent/soul"


def _answer(value: souls.Soul | souls.SoulImported, ok: bool, status: int = 200) -> Response:
    return SafeJSONResponse(value.model_dump(mode="json"), status_code=status if ok else 422)


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    service = engine.souls

    async def get(request: Request, caller: Caller) -> Response:
        return _answer(await service.get(caller, params(request, souls.SoulGet).agent_name), True)

    async def validate(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        soul = await service.validate(caller, models.parse(souls.SoulValidate, await body(request)))
        return _answer(soul, soul.validation_status is not souls.Status.invalid)

    async def import_(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        imported = await service.import_agent(caller, models.parse(souls.SoulImport, await body(request)))
        return _answer(imported, imported.written, 201)

    return [
        Endpoint(PATH, get, ["GET"]),
        Endpoint(PATH + "/validate", validate, ["POST"]),
        Endpoint(PATH + "/import", import_, ["POST"]),
    ]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def soul_get(inp: souls.SoulGet, ctx: Context) -> souls.Soul:
        return await api.get_soul(inp.agent_name)

    async def soul_validate(inp: souls.SoulValidate, ctx: Context) -> souls.Soul:
        return await api.validate_soul(inp)

    return [
        mcp_tools.make_tool(
            "soul_get", "Get an agent's soul (default: your own): its identity document's frontmatter (role, tone, "
            "principles, constraints, collaboration, memory_policy, tags, version) and Markdown body, with digest, "
            "limits, validation_status and diagnostics. No soul is `present: false`, not an error.",
            souls.SoulGet, souls.Soul, soul_get, mcp_tools.READ),
        mcp_tools.make_tool(
            "soul_validate", "Check a soul document (`content`, not stored) or an agent's stored soul: every problem "
            "(bad YAML, unknown keys, wrong types, oversize) is a diagnostic with line, column, field and severity.",
            souls.SoulValidate, souls.Soul, soul_validate, mcp_tools.READ),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def soul(agent_name: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.get_soul(agent_name)).model_dump_json()

    return [mcp_tools.Resource("agentdock://souls/{agent_name}", "soul", "An agent's soul, validated.", soul)]


# ---------------------------------------------------------------- CLI


def read_file(name: str) -> str:
    """A local file's text for `soul validate FILE` / `soul import FILE`: UTF-8, at most
    `souls.MAX_SOURCE_BYTES`, or a diagnostic naming FILE (with the line and column of a bad byte)."""
    try:
        with Path(name).open("rb") as f:
            data = f.read(souls.MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise errors.InvalidInput("FILE", f"cannot read {name!r}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > souls.MAX_SOURCE_BYTES:
        raise errors.InvalidInput("FILE", f"{name!r} is larger than {souls.MAX_SOURCE_BYTES} bytes; a soul is at most "
                                  "64 KiB (AGENTDOCK_SOUL_MAX_BYTES)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        bad = next(d for d in souls.parse(data).diagnostics if d.code == "not_utf8")
        raise errors.InvalidInput("FILE", f"{name!r} line {bad.line}, column {bad.column}: not UTF-8; save it as "
                                  "UTF-8", evidence={"line": bad.line, "column": bad.column}) from None


def show_soul(soul: souls.Soul, as_json: bool, label: str | None = None) -> None:
    """A soul as text: what it is, then one `path:line:column: severity: message [code]` per diagnostic."""
    if as_json:
        commands.show(soul, True)
        return
    fm = soul.frontmatter
    state = soul.validation_status.value + (" (active)" if soul.active else "")
    summary = {"agent_name": soul.agent_name, "status": state, "source": soul.source_path or label or "-",
               "digest": soul.digest or "-", "role": fm.role or "-"}
    for field in souls.LIST_FIELDS:
        if getattr(fm, field):
            summary[field] = ", ".join(getattr(fm, field))
    if fm.version:
        summary["version"] = fm.version
    summary["body"] = f"{len(soul.body.encode())} bytes" + (" (truncated)" if soul.truncated else "")
    if soul.snapshot_id:
        summary["snapshot_id"] = soul.snapshot_id
    commands.show(summary, False)
    for d in soul.diagnostics:
        where = label or d.source_path or "<content>"
        if d.line is not None:
            where += f":{d.line}:{d.column}"
        print(commands.safe(f"{where}: {d.severity.value}: {d.message} [{d.code}]"))


async def cmd_get(api: AgentDockAPI, args: argparse.Namespace) -> int:
    show_soul(await api.get_soul(args.name), args.json)
    return 0


async def cmd_validate(api: AgentDockAPI, args: argparse.Namespace) -> int:
    content = read_file(args.file) if args.file else None
    req = models.parse(souls.SoulValidate, commands.given(content=content, agent_name=args.name))
    soul = await api.validate_soul(req)
    show_soul(soul, args.json, args.file)
    return 0 if soul.valid else 1


async def cmd_import(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(souls.SoulImport, commands.given(content=read_file(args.file), name=args.name,
                                                        force=args.force or None))
    imported = await api.import_soul(req)
    if args.json:
        commands.show(imported, True)
    else:
        verb = "replaced" if imported.replaced else "wrote" if imported.written else "did not write (invalid)"
        print(commands.safe(f"{verb} {imported.path}"))
        if imported.dropped_keys:
            print(commands.safe(f"not kept (a soul has no field for them): {', '.join(imported.dropped_keys)}"))
        show_soul(imported.soul, False)
    return 0 if imported.written else 1


def add_commands(cli: commands.Commands) -> None:
    cli.group("soul", "agents' souls (identity documents)")
    cli.add("soul", "get", cmd_get, help="show an agent's soul").add_argument(
        "name", nargs="?", help="agent name (default: AGENTDOCK_SOUL_AGENT_NAME, agentdock)")
    v = cli.add("soul", "validate", cmd_validate, help="check a soul file, or an agent's stored soul")
    v.add_argument("file", nargs="?", metavar="FILE", help="a soul document to check (not stored)")
    v.add_argument("--name", help="the agent whose stored soul to check (or to report FILE as)")
    i = cli.add("soul", "import", cmd_import, help="write a Claude Code agent file as a soul")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--name", help="the soul's agent name (default: the file's name)")
    i.add_argument("--force", action="store_true", help="replace an existing soul")
