"""The one interface the MCP tools and the CLI speak (`AgentDockAPI`), and its in-process implementation.

Two implementations: `client.DaemonClient` (HTTP over `control.sock`, what `agentdock serve` and the
CLI use) and `InProcessAPI` here (an `Engine` and a `Caller` in this process: the tests, and later a
daemon serving MCP over streamable HTTP itself). Both take and return the engine's models and raise
engine errors, so a tool cannot tell which one it talks to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from engine import approval_models as am
from engine import context, models, sessions, souls
from engine import group_models as gm
from engine.app import Engine
from engine.callers import Caller

if TYPE_CHECKING:
    from mcp_server import ops


class AgentDockAPI(Protocol):
    """What the surfaces may ask of agentdock, as one caller. Every id is checked by shape."""

    async def call(self, op: ops.Op[ops.I, ops.O], inp: ops.I | None = None, /, **fields: Any) -> ops.O:
        """Carry out a declared operation: `inp`, or its input made from `fields` (checked)."""
        ...

    # runs
    async def create_run(self, req: models.RunCreate) -> models.Run: ...

    async def get_run(self, run_id: str) -> models.Run: ...

    async def wait_run(self, run_id: str, timeout: float) -> models.Run:
        """The run once it has ended, or as it is when `timeout` seconds pass (waited for on the server)."""
        ...

    async def list_runs(self, q: models.RunListQuery) -> models.RunList: ...

    async def cancel_run(self, run_id: str) -> models.Run: ...

    async def run_events(self, run_id: str, q: models.EventsQuery | None = None) -> models.RunEventList:
        """Events after `q.after`; with `q.wait`, long-polls until one arrives or the run ends."""
        ...

    async def artifacts(self, run_id: str) -> models.ArtifactList: ...

    async def artifact_content(self, run_id: str, path: str) -> bytes: ...

    # sessions
    async def me(self) -> sessions.Me: ...

    async def spawn(self, req: sessions.SpawnRequest) -> sessions.Spawned: ...

    async def context(self) -> context.Context: ...

    async def coordinator_config(self, workspace: str | None = None) -> context.CoordinatorConfig: ...

    async def list_sessions(self) -> sessions.SessionList: ...

    async def get_session(self, session_id: str) -> sessions.Session: ...

    async def stop_session(self, session_id: str) -> sessions.Session: ...

    # groups
    async def create_group(self, req: gm.GroupCreate) -> gm.Group: ...

    async def get_group(self, group_id: str) -> gm.Group: ...

    async def wait_group(self, group_id: str, timeout: float) -> gm.Group:
        """The group once it has ended, or as it is when `timeout` seconds pass."""
        ...

    async def list_groups(self, q: gm.GroupListQuery) -> gm.GroupList: ...

    async def dispatch_group(self, group_id: str, req: gm.DispatchRequest, wait: float = 0) -> gm.DispatchResult:
        """Queue the manifest's entries; unless `req.async_`, wait up to `wait` s for them to end."""
        ...

    async def wait_dispatch(self, group_id: str, dispatch_id: str, timeout: float) -> gm.DispatchResult:
        """An earlier dispatch once all its entries have ended, or as it is when `timeout` passes."""
        ...

    async def group_runs(self, group_id: str, q: gm.GroupRunsQuery) -> gm.GroupRunList: ...

    async def group_events(self, group_id: str, q: gm.GroupEventsQuery | None = None) -> gm.GroupEventList:
        """Events after `q.after_sequence`; with `q.wait`, long-polls until one arrives or the group ends."""
        ...

    async def cancel_group(self, group_id: str) -> gm.Group: ...




class InProcessAPI:
    """`AgentDockAPI` over an engine running in this process, acting as `caller`."""

    def __init__(self, engine: Engine, caller: Caller) -> None:
        self.engine = engine
        self.caller = caller

    async def call(self, op: ops.Op[ops.I, ops.O], inp: ops.I | None = None, /, **fields: Any) -> ops.O:
        return await op.serve(self.engine, self.caller, op.parse(inp, **fields))

    async def create_run(self, req: models.RunCreate) -> models.Run:
        return await self.engine.runs.create(self.caller, req)

    async def get_run(self, run_id: str) -> models.Run:
        return await self.engine.runs.get(self.caller, run_id)

    async def wait_run(self, run_id: str, timeout: float) -> models.Run:
        return await self.engine.runs.wait(self.caller, run_id, timeout)

    async def list_runs(self, q: models.RunListQuery) -> models.RunList:
        return await self.engine.runs.list(self.caller, q)

    async def cancel_run(self, run_id: str) -> models.Run:
        return await self.engine.runs.cancel(self.caller, run_id)

    async def run_events(self, run_id: str, q: models.EventsQuery | None = None) -> models.RunEventList:
        return await self.engine.runs.events(self.caller, run_id, q or models.EventsQuery())

    async def artifacts(self, run_id: str) -> models.ArtifactList:
        return await self.engine.runs.artifacts(self.caller, run_id)

    async def artifact_content(self, run_id: str, path: str) -> bytes:
        return await self.engine.runs.artifact_bytes(self.caller, run_id, path)

    async def me(self) -> sessions.Me:
        return await self.engine.sessions.me(self.caller)

    async def spawn(self, req: sessions.SpawnRequest) -> sessions.Spawned:
        return await self.engine.sessions.spawn(self.caller, req)

    async def context(self) -> context.Context:
        return await self.engine.context.context(self.caller)

    async def coordinator_config(self, workspace: str | None = None) -> context.CoordinatorConfig:
        return await self.engine.context.coordinator_config(self.caller, workspace)

    async def list_sessions(self) -> sessions.SessionList:
        return await self.engine.sessions.list(self.caller)

    async def get_session(self, session_id: str) -> sessions.Session:
        return await self.engine.sessions.get(self.caller, session_id)

    async def stop_session(self, session_id: str) -> sessions.Session:
        return await self.engine.sessions.stop(self.caller, session_id)

    async def create_group(self, req: gm.GroupCreate) -> gm.Group:
        return await self.engine.groups.create(self.caller, req)

    async def get_group(self, group_id: str) -> gm.Group:
        return await self.engine.groups.get(self.caller, group_id)

    async def wait_group(self, group_id: str, timeout: float) -> gm.Group:
        return await self.engine.groups.wait(self.caller, group_id, timeout)

    async def list_groups(self, q: gm.GroupListQuery) -> gm.GroupList:
        return await self.engine.groups.list(self.caller, q)

    async def dispatch_group(self, group_id: str, req: gm.DispatchRequest, wait: float = 0) -> gm.DispatchResult:
        return await self.engine.groups.dispatch(self.caller, group_id, req, wait)

    async def wait_dispatch(self, group_id: str, dispatch_id: str, timeout: float) -> gm.DispatchResult:
        return await self.engine.groups.dispatch_status(self.caller, group_id, dispatch_id, timeout)

    async def group_runs(self, group_id: str, q: gm.GroupRunsQuery) -> gm.GroupRunList:
        return await self.engine.groups.group_runs(self.caller, group_id, q)

    async def group_events(self, group_id: str, q: gm.GroupEventsQuery | None = None) -> gm.GroupEventList:
        return await self.engine.groups.events(self.caller, group_id, q or gm.GroupEventsQuery())

    async def cancel_group(self, group_id: str) -> gm.Group:
        return await self.engine.groups.cancel(self.caller, group_id)
