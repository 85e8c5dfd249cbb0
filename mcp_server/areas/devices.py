"""Devices (sandboxes and computers): `/api/v1/sandboxes`, the `sandbox_*` tools, a resource and
`agentdock sandbox ...`."""

from __future__ import annotations

from functools import partial

from engine import ids, models
from engine.devices import models as dm
from mcp_server import mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.ops import CHANGE, DESTROY, Op

NAME = "devices"
"""The toolset (`--toolsets devices`) and the permission area."""
op = partial(Op, NAME)


class SandboxRef(models.Input):
    sandbox_id: ids.DeviceId
    """The sandbox or computer id (sbx_... or cmp_...)."""


class NoInput(models.Input):
    pass


CREATE = op(
    "sandbox_create", "Create a sandbox (small, disposable) or a computer (larger, persistent /workspace volume): a "
    "locked-down Docker container with no network unless asked.", dm.DeviceCreate, dm.Device,
    lambda e, c, i: e.devices.create(c, i), "POST", "/api/v1/sandboxes", CHANGE, cli="sandbox create", status=201)
LIST = op("sandbox_list", "List sandboxes and computers with their live status.", NoInput, dm.DeviceList,
          lambda e, c, i: e.devices.list(c), "GET", "/api/v1/sandboxes", cli="sandbox list",
          columns=("id", "kind", "status", "image", "name", "created_at"))
GET = op("sandbox_get", "Get one sandbox or computer.", SandboxRef, dm.Device,
         lambda e, c, i: e.devices.get(c, i.sandbox_id), "GET", "/api/v1/sandboxes/{sandbox_id}", cli="sandbox get",
         args=("sandbox_id",))
DELETE = op("sandbox_delete", "Delete a sandbox or computer and its container (refused while runs are active on "
            "it).", SandboxRef, dm.Device, lambda e, c, i: e.devices.delete(c, i.sandbox_id),
            "DELETE", "/api/v1/sandboxes/{sandbox_id}", DESTROY, cli="sandbox delete", args=("sandbox_id",))
OPS = (CREATE, LIST, GET, DELETE)
COMMANDS = {"sandbox": "sandboxes and computers: create, list, get, delete, prompt"}


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def sandbox(sandbox_id: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.call(GET, sandbox_id=sandbox_id)).model_dump_json()

    return [mcp_tools.Resource("agentdock://sandboxes/{sandbox_id}", "sandbox", "A sandbox or computer.", sandbox)]
