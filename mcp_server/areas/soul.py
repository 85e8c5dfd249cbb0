"""Souls: their HTTP routes (seed 002's `/api/agent/soul`), MCP tools, resource and CLI commands.

The seed's agent API answers with the soul itself, not under `data`. A validate that finds the document
invalid answers 422 with the soul and its diagnostics (the seed's validate has a soul-shaped error
response); a valid or missing soul is 200.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from engine import errors, models
from engine.souls import models as souls
from engine.souls import parser as soul_parser
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.ops import Op

NAME = "soul"
"""The toolset (`--toolsets soul`) and the permission area."""
op = partial(Op, NAME)
PATH = "/api/agent/soul"

GET = op("soul_get", "Get an agent's soul (default: your own): its identity document's frontmatter (role, tone, "
         "principles, constraints, collaboration, memory_policy, tags, version) and Markdown body, with digest, "
         "limits, validation_status and diagnostics. No soul is `present: false`, not an error.", souls.SoulGet,
         souls.Soul, lambda e, c, i: e.souls.get(c, i.agent_name), "GET", PATH, envelope=None)
VALIDATE = op("soul_validate", "Check a soul document (`content`, not stored) or an agent's stored soul: every "
              "problem (bad YAML, unknown keys, wrong types, oversize) is a diagnostic with line, column, field "
              "and severity.", souls.SoulValidate, souls.Soul, lambda e, c, i: e.souls.validate(c, i),
              "POST", PATH + "/validate", envelope=None, invalid=lambda s: s.validation_status is souls.Status.invalid)
IMPORT = op("soul_import", "Write a Claude Code agent file as a soul.", souls.SoulImport, souls.SoulImported,
            lambda e, c, i: e.souls.import_agent(c, i), "POST", PATH + "/import", envelope=None, status=201,
            invalid=lambda r: not r.written, tool=False)
OPS = (GET, VALIDATE, IMPORT)
COMMANDS = {"soul": "agents' souls (identity documents)"}


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def soul(agent_name: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.call(GET, agent_name=agent_name)).model_dump_json()

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
        bad = next(d for d in soul_parser.parse(data).diagnostics if d.code == "not_utf8")
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
    for field in soul_parser.LIST_FIELDS:
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
    show_soul(await api.call(GET, souls.SoulGet(agent_name=args.name)), args.json)
    return 0


async def cmd_validate(api: AgentDockAPI, args: argparse.Namespace) -> int:
    content = read_file(args.file) if args.file else None
    req = models.parse(souls.SoulValidate, commands.given(content=content, agent_name=args.name))
    soul = await api.call(VALIDATE, req)
    show_soul(soul, args.json, args.file)
    return 0 if soul.valid else 1


async def cmd_import(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(souls.SoulImport, commands.given(content=read_file(args.file), name=args.name,
                                                        force=args.force or None))
    imported = await api.call(IMPORT, req)
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
    cli.add("soul", "get", cmd_get, help="show an agent's soul").add_argument(
        "name", nargs="?", help="agent name (default: AGENTDOCK_SOUL_AGENT_NAME, agentdock)")
    v = cli.add("soul", "validate", cmd_validate, help="check a soul file, or an agent's stored soul")
    v.add_argument("file", nargs="?", metavar="FILE", help="a soul document to check (not stored)")
    v.add_argument("--name", help="the agent whose stored soul to check (or to report FILE as)")
    i = cli.add("soul", "import", cmd_import, help="write a Claude Code agent file as a soul")
    i.add_argument("file", metavar="FILE", help="a Claude Code agent file (frontmatter and a system prompt)")
    i.add_argument("--name", help="the soul's agent name (default: the file's name)")
    i.add_argument("--force", action="store_true", help="replace an existing soul")
