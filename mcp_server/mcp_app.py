"""The MCP server: the areas' tools and resources over one `AgentDockAPI`, on stdio for `agentdock serve`.

The tools call only the API, so the same server runs over the daemon (`client.DaemonClient`) or over an
engine in this process (`api.InProcessAPI`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from mcp.server.mcpserver import MCPServer

from engine import errors, lineage
from engine.settings import Settings
from mcp_server import areas
from mcp_server.api import AgentDockAPI
from mcp_server.areas.devices import SandboxRef
from mcp_server.areas.runs import AgentRunInput, ArtifactsInput, EventsInput, RunRef

__all__ = ["TOOLSETS", "AgentRunInput", "ArtifactsInput", "EventsInput", "RunRef", "SandboxRef", "build",
           "serve_stdio"]  # the tools' input models too, for callers that check what the tools take

TOOLSETS = [area.NAME for area in areas.AREAS]
INSTRUCTIONS = ("agentdock runs agents in Docker sandboxes and keeps every run as a durable record. Create a sandbox "
                "with sandbox_create (or let agent_run make an ephemeral one), run prompts with agent_run, and read "
                "results with agent_run_get / agent_run_events.")


def build(api: AgentDockAPI, settings: Settings, toolsets: Iterable[str] | None = None,
          grants: frozenset[str] | None = None) -> MCPServer:
    """The server with the tools and resources of `toolsets` (default: every area), and of those
    only the tools a session holding `grants` may call (None: the root session, all of them)."""
    wanted = set(toolsets or TOOLSETS)
    unknown = wanted - set(TOOLSETS)
    if unknown:
        raise errors.InvalidInput("toolsets", f"unknown toolset(s) {sorted(unknown)}; known: {sorted(TOOLSETS)}")
    chosen = areas.by_toolset(wanted)
    server = MCPServer(name="agentdock", version="0.1.0", log_level="WARNING", instructions=INSTRUCTIONS,
                       tools=[t for area in chosen for t in areas.tools(area, api, settings)
                              if lineage.tool_allowed(grants, t.name)])
    for area in chosen:
        for r in areas.resources(area, api):
            server.resource(r.uri_template, name=r.name, mime_type="application/json", description=r.description)(
                r.read)
    return server


async def serve_stdio(api: AgentDockAPI, settings: Settings, toolsets: Iterable[str] | None = None,
                      grants: frozenset[str] | None = None) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    await build(api, settings, toolsets, grants).run_stdio_async()
