"""Sessions and spawn: who the caller is (`agent_me`), spawning and stopping child sessions. Served
on both sockets; on `agent.sock` the caller is the session whose bearer token came with the request."""

from __future__ import annotations

import argparse
from functools import partial

from pydantic import Field

from engine import context, ids, models
from engine.sessions import models as sessions
from mcp_server import commands
from mcp_server.api import AgentDockAPI
from mcp_server.ops import CHANGE, DESTROY, Op

NAME = "agent"
"""The toolset (`--toolsets agent`) and the permission area."""
op = partial(Op, NAME)


class CoordinatorQuery(models.Input):
    workspace_id: str | None = Field(default=None, pattern=sessions.LABEL)
    """Workspace id (default: the caller's)."""


class SessionRef(models.Input):
    session_id: ids.SessionId
    """The session id (ses_...)."""


class NoInput(models.Input):
    pass


ME = op("agent_me", "Who you are: your session, lineage, permissions, limits and the tools you may call.", NoInput,
        sessions.Me, lambda e, c, i: e.sessions.me(c), "GET", "/api/agent/me", envelope="me")
CONTEXT = op("agent_context", "Your context bundle: self, session, workspace, soul, coordination channel, inbox "
             "summary, peer roster, capabilities, task bundle, limits, provenance.", NoInput, context.Context,
             lambda e, c, i: e.context.context(c), "GET", "/api/agent/context", envelope="context")
COORDINATOR = op("coordinator_config", "How spawning is configured for a workspace (budget, TTL) and where that "
                 "comes from.", CoordinatorQuery, context.CoordinatorConfig,
                 lambda e, c, i: e.context.coordinator_config(c, i.workspace_id), "GET",
                 "/api/agent/coordinator/config", envelope="coordinator")
SPAWN = op("agent_spawn", "Spawn a child session with permissions within yours, a TTL and a role; with a prompt it "
           "starts as an agent run in a sandbox that can call back over agent.sock. Returns its token once.",
           sessions.SpawnRequest, sessions.Spawned, lambda e, c, i: e.sessions.spawn(c, i), "POST", "/api/agent/spawn",
           CHANGE, envelope="spawn", status=201)
STOP = op("agent_stop", "Stop a session you spawned (or yourself), every session below it, and their runs.",
          SessionRef, sessions.Session, lambda e, c, i: e.sessions.stop(c, i.session_id), "POST",
          "/api/v1/sessions/{session_id}/stop", DESTROY, cli="sessions stop", args=("session_id",))
LIST = op("session_list", "Sessions you can see.", NoInput, sessions.SessionList, lambda e, c, i: e.sessions.list(c),
          "GET", "/api/v1/sessions", tool=False, cli="sessions list",
          columns=("id", "agent_name", "state", "stop_reason", "workspace_id", "run_id", "created_at"))
GET = op("session_get", "One session.", SessionRef, sessions.Session, lambda e, c, i: e.sessions.get(c, i.session_id),
         "GET", "/api/v1/sessions/{session_id}", tool=False, cli="sessions get", args=("session_id",))
OPS = (ME, CONTEXT, COORDINATOR, SPAWN, STOP, LIST, GET)
COMMANDS = {"sessions": "agent sessions: who is calling, their lineage and permissions"}


# ---------------------------------------------------------------- CLI


async def cmd_spawn(api: AgentDockAPI, args: argparse.Namespace) -> int:
    permissions = None
    if args.tools is not None:
        permissions = {"tools": [t for t in args.tools.split(",") if t]}
    req = models.parse(sessions.SpawnRequest, commands.given(
        agent_name=args.agent_name, spawn_role=args.role, ttl_seconds=args.ttl, permissions=permissions,
        prompt=args.run_prompt, command=args.command,
        provider=args.provider, target_id=args.target, agent_runtime_profile_id=args.profile,
        skip_agent_runtime_profile=args.no_profile or None))
    commands.show(await api.call(SPAWN, req), args.json)
    return 0


def add_commands(cli: commands.Commands) -> None:
    for group in ("sessions", None):  # `agentdock sessions spawn` and `agentdock spawn`
        _spawn_arguments(cli.add(group, "spawn", cmd_spawn, help="spawn a child session (optionally as a run)"))


def _spawn_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("agent_name", metavar="AGENT_NAME", help="the child's name (its soul is looked up by it)")
    c.add_argument("--role", help="its spawn role (worker, reviewer, ...)")
    c.add_argument("--ttl", type=int, help="seconds it may live (within your budget)")
    c.add_argument("--tools", help="comma-separated toolsets or tool names (default: yours)")
    c.add_argument("--prompt", dest="run_prompt", help="start the child as an agent run with this prompt")
    c.add_argument("--command", help="the run's command (custom provider), run with sh -c")
    c.add_argument("--provider", help="the run's runtime provider")
    c.add_argument("--target", help="run it in this sandbox or computer (sbx_/cmp_...; default: a fresh one)")
    c.add_argument("--profile", help="spawn it under this agent runtime profile (arp_...)")
    c.add_argument("--no-profile", dest="no_profile", action="store_true", help="under no profile, not even a default (your effective limits still hold)")
