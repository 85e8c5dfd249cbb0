"""Who is asking. Every service method takes the caller first and checks, in the service, what it
may do; the surfaces only say who the caller is (`control.sock` and `agentdock serve`: the root
session, the local user)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from engine import errors
from engine.authority import UNBOUNDED, Limits

TOOLSETS = ("devices", "runs", "groups", "agent", "soul", "channels", "tasks", "profiles", "secrets", "approvals")
"""The areas a permission policy names."""
DEFAULT_WORKSPACE = "default"
"""The local user's workspace: where its creates belong unless they name another."""


class Caller(BaseModel):
    """A session and what it may touch."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    toolsets: frozenset[str] | None = None
    """The toolsets and single tool names this caller may use; None for the root session, which may
    use all."""
    visible: frozenset[str] = frozenset()
    """Sessions whose records this caller sees besides its own: those spawned below it."""
    denied: frozenset[str] = frozenset()
    """Tool names its effective limits' `tools` bundles leave out (`engine.profiles.models.BUNDLE_TOOLS`)."""
    denied_toolsets: frozenset[str] = frozenset()
    """Toolsets none of whose tools those bundles open."""
    workspace_id: str = DEFAULT_WORKSPACE
    """The workspace the session works in (the local user: none in particular, it may name any)."""
    limits: Limits = UNBOUNDED
    """Its effective limits (`engine.authority`): its profile's within its parent's, recorded at spawn."""

    @property
    def is_root(self) -> bool:
        return self.toolsets is None

    def require(self, toolset: str, tool: str | None = None) -> None:
        """Refuse, naming the area, unless this caller may use `toolset` (or that one `tool` of it)."""
        if (tool is not None and tool in self.denied) or (tool is None and toolset in self.denied_toolsets):
            raise errors.PermissionDenied(
                f"session {self.session_id} may not use {tool or toolset}: its agent runtime profile's tool bundles "
                "leave it out", evidence={"toolset": toolset, "tool": tool, "session_id": self.session_id})
        if self.toolsets is None or toolset in self.toolsets or (tool is not None and tool in self.toolsets):
            return
        raise errors.PermissionDenied(
            f"session {self.session_id} may not use {tool or toolset}; its permissions name "
            f"{', '.join(sorted(self.toolsets)) or 'nothing'}",
            evidence={"toolset": toolset, "tool": tool, "session_id": self.session_id})

    def use_workspace(self, asked: str | None, field: str = "workspace_id") -> str:
        """The workspace a create by this caller belongs to: the one it names if it may use it, else its
        own. The one check every create makes (runs, groups, dispatch items, spawns, tasks, profiles,
        devices): the local user may name any workspace, a session only its own."""
        if asked is None:
            return DEFAULT_WORKSPACE if self.is_root else self.workspace_id
        if self.is_root or asked == self.workspace_id:
            return asked
        raise errors.PermissionDenied(
            f"{field}: session {self.session_id} works in workspace {self.workspace_id!r} and may create only there, "
            f"not in {errors.clip(asked)!r}; leave {field} out (it defaults to yours) or ask the local user",
            evidence={"field": field, "workspace_id": self.workspace_id, "asked": errors.clip(asked)})

    def sees(self, created_by: str) -> bool:
        """Whether a record created by `created_by` is visible to this caller: its own, or of a
        session spawned below it."""
        return self.is_root or created_by == self.session_id or created_by in self.visible


ROOT = Caller(session_id="ses_root")
"""The local user: `control.sock` and `agentdock serve` act as it."""
