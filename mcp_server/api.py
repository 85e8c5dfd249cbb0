"""The one interface the MCP tools and the CLI speak (`AgentDockAPI`), and its in-process implementation.

It is one method, `call(op, ...)`, for every operation an area declares (`mcp_server.ops`), and the
artifact bytes beside it. Two implementations: `client.DaemonClient` (HTTP over `control.sock`, what `agentdock serve` and the
CLI use) and `InProcessAPI` here (an `Engine` and a `Caller` in this process: the tests, and later a
daemon serving MCP over streamable HTTP itself). Both take and return the engine's models and raise
engine errors, so a tool cannot tell which one it talks to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from engine.app import Engine
from engine.callers import Caller

if TYPE_CHECKING:
    from mcp_server import ops


class AgentDockAPI(Protocol):
    """What the surfaces may ask of agentdock, as one caller. Every id is checked by shape."""

    async def call(self, op: ops.Op[ops.I, ops.O], inp: ops.I | None = None, /, **fields: Any) -> ops.O:
        """Carry out a declared operation: `inp`, or its input made from `fields` (checked)."""
        ...

    async def artifact_content(self, run_id: str, path: str) -> bytes:
        """An exported file's bytes (not a JSON answer, so not an operation of the table)."""
        ...


class InProcessAPI:
    """`AgentDockAPI` over an engine running in this process, acting as `caller`."""

    def __init__(self, engine: Engine, caller: Caller) -> None:
        self.engine = engine
        self.caller = caller

    async def call(self, op: ops.Op[ops.I, ops.O], inp: ops.I | None = None, /, **fields: Any) -> ops.O:
        return await op.serve(self.engine, self.caller, op.parse(inp, **fields))

    async def artifact_content(self, run_id: str, path: str) -> bytes:
        return await self.engine.runs.artifact_bytes(self.caller, run_id, path)
