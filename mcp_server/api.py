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
    async def artifact_content(self, run_id: str, path: str) -> bytes: ...

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

    async def artifact_content(self, run_id: str, path: str) -> bytes:
        return await self.engine.runs.artifact_bytes(self.caller, run_id, path)

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
