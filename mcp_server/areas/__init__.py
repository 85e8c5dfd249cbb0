"""The areas agentdock's surfaces serve, each one module holding its HTTP routes, MCP tools, resources
and CLI commands. Adding an area (groups, sessions, channels, tasks, profiles) is one module that
satisfies `Area` and one line in `AREAS`."""

from __future__ import annotations

from typing import Protocol

from mcp.server.mcpserver.tools import Tool

from engine.app import Engine
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.areas import agent, approvals, channels, devices, groups, profiles, runs, secrets, soul, tasks
from mcp_server.http import Endpoint


class Area(Protocol):
    """What an area module holds (a module satisfies this structurally)."""

    NAME: str
    """Its toolset: `--toolsets` switches its MCP tools and resources on and off."""

    def endpoints(self, engine: Engine) -> list[Endpoint]: ...

    def tools(self, api: AgentDockAPI, settings: Settings) -> list[Tool]: ...

    def resources(self, api: AgentDockAPI) -> list[mcp_tools.Resource]: ...

    def add_commands(self, cli: commands.Commands) -> None: ...


AREAS: tuple[Area, ...] = (devices, runs, groups, agent, soul, channels, tasks, profiles, secrets, approvals)
"""In order: an area may add commands to a group an earlier one declared (`sandbox prompt`)."""


def endpoints(engine: Engine) -> list[Endpoint]:
    return [e for area in AREAS for e in area.endpoints(engine)]


def by_toolset(toolsets: set[str] | None = None) -> list[Area]:
    return [a for a in AREAS if toolsets is None or a.NAME in toolsets]
