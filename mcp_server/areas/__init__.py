"""The areas agentdock's surfaces serve. Each is one module declaring its operations once (`OPS`, see
`mcp_server.ops`), from which its HTTP routes, MCP tools and CLI commands are made. What a row cannot
say stays explicit in the area, through optional hooks of the same names: `endpoints(engine)`,
`tools(api, settings)`, `resources(api)`, `add_commands(cli)`. Adding an area is one module and one
line in `AREAS`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mcp.server.mcpserver.tools import Tool

from engine import lineage
from engine.app import Engine
from engine.settings import Settings
from mcp_server import commands, mcp_tools, ops
from mcp_server.api import AgentDockAPI
from mcp_server.areas import agent, approvals, channels, devices, groups, profiles, runs, secrets, soul, tasks
from mcp_server.http import Endpoint


class Area(Protocol):
    """What an area module holds (a module satisfies this structurally)."""

    NAME: str
    """Its toolset: `--toolsets` switches its MCP tools and resources on and off."""
    OPS: Sequence[ops.Op[Any, Any]]
    """Its operations, in the order its tools are listed."""
    COMMANDS: Mapping[str, str]
    """The CLI command groups it declares, with their help."""


AREAS: tuple[Area, ...] = (devices, runs, groups, agent, soul, channels, tasks, profiles, secrets, approvals)
"""In order: an area may add commands to a group an earlier one declared (`sandbox prompt`)."""


def all_ops() -> list[ops.Op[Any, Any]]:
    return [op for area in AREAS for op in getattr(area, "OPS", ())]


def endpoints(engine: Engine) -> list[Endpoint]:
    out: list[Endpoint] = []
    for area in AREAS:
        out += ops.endpoints(getattr(area, "OPS", ()), engine)
        if hasattr(area, "endpoints"):
            out += area.endpoints(engine)
    return out


def tools(area: Area, api: AgentDockAPI, settings: Settings) -> list[Tool]:
    """The area's tools, made from its rows and written explicitly, in the order of the permission list
    (`lineage.TOOLS_BY_TOOLSET`), which a test holds equal to them."""
    explicit = area.tools(api, settings) if hasattr(area, "tools") else []
    made = ops.tools(getattr(area, "OPS", ()), api, settings.mcp_max_wait_seconds) + explicit
    order = lineage.TOOLS_BY_TOOLSET.get(area.NAME, ())
    return sorted(made, key=lambda t: order.index(t.name) if t.name in order else len(order))


def resources(area: Area, api: AgentDockAPI) -> list[mcp_tools.Resource]:
    return area.resources(api) if hasattr(area, "resources") else []


def add_commands(cli: commands.Commands) -> None:
    for area in AREAS:
        for group, help_ in getattr(area, "COMMANDS", {}).items():
            cli.group(group, help_)
        for op in getattr(area, "OPS", ()):
            if op.cli:
                ops.add_command(cli, op)
        if hasattr(area, "add_commands"):
            area.add_commands(cli)


def by_toolset(toolsets: set[str] | None = None) -> list[Area]:
    return [a for a in AREAS if toolsets is None or a.NAME in toolsets]
