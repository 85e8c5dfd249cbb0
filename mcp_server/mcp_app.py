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

__all__ = ["COORDINATOR", "PRESETS", "TOOLSETS", "AgentRunInput", "ArtifactsInput", "EventsInput", "RunRef",
           "SandboxRef", "build", "serve_stdio"]  # the tools' input models too, for callers that check what the tools take

TOOLSETS = [area.NAME for area in areas.AREAS]
COORDINATOR = ("agent_run", "agent_run_get", "group_create", "group_dispatch", "group_get", "group_events",
               "agent_me", "agent_spawn", "agent_stop", "channel_recv")
"""`--toolsets coordinator`: what an agent that hands work out needs, small enough for a tight context
(a run, a group of runs and its stream, child sessions, their messages); the rest is a toolset away."""
PRESETS: dict[str, tuple[str, ...]] = {"all": tuple(TOOLSETS), "coordinator": COORDINATOR}
"""Names `--toolsets` takes besides toolsets and single tools."""
INSTRUCTIONS = """\
agentdock runs agent CLIs (Claude Code, Codex, a custom command) in locked-down Docker sandboxes; every run \
is a durable record that outlives this client. Tools come in toolsets, named after them:
- runs: one prompt in a sandbox: agent_run (no target: a fresh ephemeral sandbox), then agent_run_get, \
agent_run_events, agent_run_artifacts, agent_run_cancel.
- groups: many runs at once under one concurrency limit and one event stream: group_create, group_dispatch \
(a manifest of runs), group_events, group_runs.
- agent: who you are (agent_me, agent_context); child sessions with narrower permissions (agent_spawn, \
optionally with a run; agent_stop).
- tasks: a work queue between sessions: task_create; a worker takes one with task_claim_next, heartbeats, \
then completes, fails or releases it.
- channels: messages between a session, its parent and its children (channel_list, \
channel_send, channel_recv, channel_reply).
- soul: an agent's identity document (soul_get, soul_validate).
- devices: sandboxes and computers (persistent /workspace) to create, reuse and delete.
- profiles: named runtime settings (runtime, model, image, limits, network, secrets) for runs and spawns.
- approvals: a session's risky call refused with approval_required waits for a person: approval_get \
(wait_seconds), then repeat the call; approval_review asks the user.
Every wait is bounded (by default 45 s at most): a call that returns before the work has ended gives a handle (run, \
group, channel) and a cursor (next_after_sequence); call again with it (after_sequence, wait_seconds) to go \
on waiting; nothing is lost in between. A failed call is isError with a JSON \
diagnostic (code, message, suggested_command). The user picks toolsets with `agentdock serve --toolsets \
runs,groups,...` (default: all of them; `coordinator`: a small set for handing work out)."""


def chosen_tools(toolsets: Iterable[str] | None) -> frozenset[str]:
    """The tool names that `toolsets` (toolsets, single tools and presets; default: every toolset) names."""
    wanted = set(toolsets or TOOLSETS)
    names: set[str] = set()
    for name in wanted:
        if name in PRESETS:
            names |= chosen_tools(PRESETS[name])
        elif name in lineage.TOOLS_BY_TOOLSET:
            names |= set(lineage.TOOLS_BY_TOOLSET[name])
        elif name in lineage.TOOLSET_OF:
            names.add(name)
        else:
            raise errors.InvalidInput("toolsets", f"unknown toolset or tool {name!r}; toolsets: {', '.join(TOOLSETS)}; "
                                      f"presets: {', '.join(PRESETS)}; or a tool's name")
    return frozenset(names)


def build(api: AgentDockAPI, settings: Settings, toolsets: Iterable[str] | None = None,
          grants: frozenset[str] | None = None) -> MCPServer:
    """The server with the tools `toolsets` names (default: every toolset's) and the resources of their
    areas, and of those tools only the ones a session holding `grants` may call (None: the root session,
    all of them). Tools are listed in toolset order, then in each area's order, the same every time."""
    names = chosen_tools(toolsets)
    chosen = [area for area in areas.AREAS if names & set(lineage.TOOLS_BY_TOOLSET.get(area.NAME, ()))]
    server = MCPServer(name="agentdock", version="0.1.0", log_level="WARNING", instructions=INSTRUCTIONS,
                       tools=[t for area in chosen for t in areas.tools(area, api, settings)
                              if t.name in names and lineage.tool_allowed(grants, t.name)])
    for area in chosen:
        for r in areas.resources(area, api):
            server.resource(r.uri_template, name=r.name, mime_type="application/json", description=r.description)(
                r.read)
    return server


async def serve_stdio(api: AgentDockAPI, settings: Settings, toolsets: Iterable[str] | None = None,
                      grants: frozenset[str] | None = None) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    await build(api, settings, toolsets, grants).run_stdio_async()
