"""Quotas per tree of sessions and per workspace (issue 16).

A tree is a child of the local user and every session spawned below it, named by that child's id: a
parent that spawns a fresh child gives it no fresh quota, and a child cannot escape its tree. What a
tree writes also counts against the workspace the record belongs to (a channel's, a task's), so
several trees in one workspace share its larger quota. Counted: messages and the bytes of their
bodies and metadata; tasks and the bytes of their titles, payloads, results and errors; and, checked
before a device is made, live sandboxes and computers. The local user has no quota and is not counted.

Usage is added in the transaction that writes the record: past a quota it raises `LimitExceeded`
and the rollback takes the count back with the record, so a refused write changes nothing."""

from __future__ import annotations

from typing import Any

from engine import errors
from engine.callers import Caller
from engine.quotas.repository import Tree, Usage
from engine.settings import Settings
from engine.store import Store, Tx

DEFAULT_WORKSPACE = "default"
WHAT = {"messages": "messages", "message_bytes": "bytes of messages", "tasks": "tasks",
        "task_bytes": "bytes of tasks"}
SETTING = {  # (per tree, per workspace): the settings that bound each resource
    "messages": ("channel_quota_messages", "workspace_channel_quota_messages"),
    "message_bytes": ("channel_quota_bytes", "workspace_channel_quota_bytes"),
    "tasks": ("task_quota_tasks", "workspace_task_quota_tasks"),
    "task_bytes": ("task_quota_bytes", "workspace_task_quota_bytes"),
}


def env_name(setting: str) -> str:
    return "AGENTDOCK_" + setting.upper()


class Quotas:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._trees: dict[str, Tree] = {}
        """A session's tree and workspace, which never change, read once."""

    async def tree(self, session_id: str, tx: Tx | None = None) -> Tree:
        """The tree `session_id` belongs to (and its workspace)."""
        found = self._trees.get(session_id)
        if found is None:
            found = await (tx.quotas.session_tree(session_id) if tx is not None else self.store.quotas.session_tree(session_id))
            if found is None:  # a caller built in-process without a session row: a tree of its own
                return Tree(session_id, DEFAULT_WORKSPACE)
            self._trees[session_id] = found
        return found

    async def charge(self, tx: Tx, caller: Caller, workspace_id: str, added: Usage, *, field: str) -> None:
        """Count what the caller writes now against its tree's and the workspace's quotas; past either,
        `LimitExceeded` naming `field` (the transaction then writes nothing, this count included)."""
        if caller.is_root:
            return
        tree = await self.tree(caller.session_id, tx)
        for scope, scope_id in (("tree", tree.tree), ("workspace", workspace_id)):
            total = await tx.quotas.add_usage(f"{scope}:{scope_id}", added)
            for resource, amount in added._asdict().items():
                setting = SETTING[resource][scope == "workspace"]
                quota = getattr(self.settings, setting)
                used = getattr(total, resource)
                if amount and used > quota:
                    raise _over(scope, scope_id, resource, used - amount, quota, setting, field)

    async def check_devices(self, caller: Caller, *, extra: int = 1, tx: Tx | None = None) -> None:
        """Refuse a new device when the caller's tree or its workspace already has its quota of live
        devices (counted in `tx` when given, so two creates cannot both take the last place)."""
        if caller.is_root:
            return
        tree = await self.tree(caller.session_id, tx)
        source: Any = tx if tx is not None else self.store
        in_tree = await source.profiles.live_devices_of_tree(tree.tree)
        in_workspace = await source.quotas.live_devices_of_workspace(tree.workspace_id)
        for scope, scope_id, live, setting in (
                ("tree", tree.tree, in_tree, "tree_max_live_sandboxes"),
                ("workspace", tree.workspace_id, in_workspace, "workspace_max_live_sandboxes")):
            quota = getattr(self.settings, setting)
            if live + extra > quota:
                who = _who(scope, scope_id)
                raise errors.LimitExceeded(
                    f"live sandboxes: {who} have {live} live sandboxes and computers (ephemeral ones of unfinished "
                    f"runs included); {quota} at most ({env_name(setting)}). Delete one or wait for a run's "
                    "ephemeral sandbox to go", suggested_command="agentdock sandbox list",
                    evidence={"field": "sandboxes", "scope": scope, "scope_id": scope_id, "live": live,
                              "limit": quota, "setting": env_name(setting)})


def _who(scope: str, scope_id: str) -> str:
    if scope == "tree":
        return f"the sessions of tree {scope_id} (that session and every session spawned below it)"
    return f"the sessions of workspace {scope_id}"


def _over(scope: str, scope_id: str, resource: str, used: int, quota: int, setting: str,
          field: str) -> errors.LimitExceeded:
    area = "channel" if resource.startswith("message") else "task"
    return errors.LimitExceeded(
        f"{area} quota: {_who(scope, scope_id)} have written {used} {WHAT[resource]}; a {scope} may write "
        f"{quota} in all ({env_name(setting)}, which the local user may raise). Nothing was written",
        evidence={"field": field, "scope": scope, "scope_id": scope_id, "resource": resource, "used": used,
                  "limit": quota, "setting": env_name(setting)})
