"""Agent runtime profiles (seed 003): `/api/v1/agent-runtime-profiles`, the `profile_*` tools and
`agentdock profiles ...`. Served on both sockets; on `agent.sock` a session sees the tenant's profiles
and its workspace's, and manages only its workspace's."""

from __future__ import annotations

from functools import partial

from engine.profiles import models as pm
from mcp_server import mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.ops import CHANGE, DESTROY, IDEMPOTENT, Op

NAME = "profiles"
"""The toolset (`--toolsets profiles`) and the permission area."""
op = partial(Op, NAME)
PATH = "/api/v1/agent-runtime-profiles"
ONE = PATH + "/{profile_id}"

CREATE = op(
    "profile_create", "Create an agent runtime profile: runtime, model, image, resources, network, non-secret env, "
    "secret names, tool bundles, policy (approval, max_child_sandboxes); is_default makes it the default of its "
    "scope (the tenant, or workspace_id).", pm.ProfileCreate, pm.Profile, lambda e, c, i: e.profiles.create(c, i),
    "POST", PATH, CHANGE, cli="profiles create", args=("name",), status=201)
GET = op("profile_get", "One agent runtime profile.", pm.ProfileRef, pm.Profile,
         lambda e, c, i: e.profiles.get(c, i.profile_id), "GET", ONE, cli="profiles get", args=("profile_id",))
LIST = op("profile_list", "Agent runtime profiles you can see, optionally of one workspace.", pm.ProfileListQuery,
          pm.ProfileList, lambda e, c, i: e.profiles.list(c, i), "GET", PATH, cli="profiles list",
          columns=("id", "name", "runtime", "workspace_id", "is_default", "tools", "updated_at"))
UPDATE = op("profile_update", "Change a profile's fields (those given; the rest stay). Runs already created keep "
            "the snapshot they resolved.", pm.ProfileUpdate, pm.Profile, lambda e, c, i: e.profiles.update(c, i),
            "PUT", ONE, IDEMPOTENT, cli="profiles update", args=("profile_id",))
DELETE = op("profile_delete", "Delete a profile (refused while an unfinished run, a live session or a queued group "
            "entry uses it).", pm.ProfileRef, pm.Profile, lambda e, c, i: e.profiles.delete(c, i.profile_id),
            "DELETE", ONE, DESTROY, cli="profiles delete", args=("profile_id",))
OPS = (CREATE, GET, LIST, UPDATE, DELETE)
COMMANDS = {"profiles": "agent runtime profiles: list, get, create, update, delete"}


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    async def profile(profile_id: str) -> str:
        with mcp_tools.resource_errors():
            return (await api.call(GET, profile_id=profile_id)).model_dump_json()

    return [mcp_tools.Resource("agentdock://profiles/{profile_id}", "profile", "An agent runtime profile.", profile)]
