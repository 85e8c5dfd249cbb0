"""Channels (issue 9): durable, ordered conversations between sessions.

The engine makes the channels; nobody asks for one. A parent and the children it spawns share the
family channel `family:<parent>` (made at the first spawn, each child joining at its own); a task's
creator and every session that claims it share `task:<task>` (made at the first claim). A channel's
id is derived from its name, so a task run or a session knows its channel without a lookup.

`send` appends a message in the channel's order and commits it; the receivers waiting on the channel
wake on that commit (the topic notifier), not on a tick. `recv` hands a session what it has not yet
received there, moving its cursor in the same transaction, so a message reaches each session once
and a daemon restart neither loses nor repeats one. `reply` goes to the sender of the message it
answers, on that message's channel, with the correlation id taken from that message.

Who may use a channel: its members (the local user: every channel), and only channels their
permissions' `network_channels` name (by name or id, or `*`)."""

from __future__ import annotations

import json
from typing import Any

from engine import errors, masking, topics
from engine.channels import models as cm
from engine.callers import Caller
from engine.clock import SystemClock
from engine.masking import Masking
from engine.ports import Clock
from engine.quotas.repository import Usage
from engine.quotas.service import Quotas
from engine.secrets import SecretStore
from engine.settings import Settings
from engine.store import Store, Tx, new_id

LIST_LIMIT = 500
"""`channel_list` shows at most this many, most recently active first."""


def family_row(parent_session_id: str, workspace_id: str) -> dict[str, Any]:
    """The family channel of `parent_session_id` (made with its first child)."""
    name = cm.family_name(parent_session_id)
    return _row(name, cm.ChannelKind.family, f"family of {parent_session_id}",
                f"{parent_session_id} and the sessions it spawned: instructions, status and results",
                workspace_id, parent_session_id)


def task_row(task_id: str, title: str, workspace_id: str, created_by: str) -> dict[str, Any]:
    """The channel of a task (made at its first claim)."""
    return {**_row(cm.task_name(task_id), cm.ChannelKind.task, f"task {title[:80]}",
                   f"coordination on task {task_id}: its creator and every session that claims it",
                   workspace_id, created_by), "task_id": task_id}


def _row(name: str, kind: cm.ChannelKind, display: str, purpose: str, workspace_id: str,
         owner: str) -> dict[str, Any]:
    return {"id": cm.channel_id(name), "channel": name, "kind": kind.value, "display_name": display,
            "purpose": purpose, "allowed_message_kinds": json.dumps([k.value for k in cm.ALLOWED_KINDS[kind]]),
            "workspace_id": workspace_id, "owner_session_id": owner, "run_id": None, "task_id": None,
            "workflow_id": None}


def permitted(allowed: list[str] | None, channel: cm.ChannelRow) -> bool:
    """Whether a `network_channels` list (None: the local user's, everything) names the channel."""
    return allowed is None or "*" in allowed or channel.channel in allowed or channel.id in allowed


async def still_active(store: Store, caller: Caller) -> None:
    """After a wait: refuse to go on for a session stopped (or expired) meanwhile."""
    if caller.is_root:
        return
    row = await store.sessions.session(caller.session_id)
    if row is None or row.status != "active":
        raise errors.Unauthenticated(f"session {caller.session_id} ended while it waited",
                                     evidence={"session_id": caller.session_id})


class ChannelService:
    def __init__(self, store: Store, clock: Clock | None, settings: Settings, quotas: Quotas | None = None,
                 masks: Masking | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.settings = settings
        self.quotas = quotas or Quotas(store, settings)
        self.masks = masks or Masking(store, SecretStore(settings.secrets_dir))
        self._allowed: dict[str, list[str]] = {}
        """A session's `network_channels`, which never change, read once."""

    async def list(self, caller: Caller) -> cm.ChannelList:
        caller.require("channels", "channel_list")
        return cm.ChannelList(channels=await self.list_records(caller))

    async def list_records(self, caller: Caller) -> list[cm.Channel]:
        """The channels the caller may use (for `me`; no toolset needed to know them)."""
        return [r.record() for r in await self.visible(caller)]

    async def visible(self, caller: Caller) -> list[cm.ChannelRow]:
        """The channels the caller may use: those it belongs to that its permissions name."""
        allowed = await self._network_channels(caller)
        rows = await self.store.channels.list(None if caller.is_root else caller.session_id, LIST_LIMIT)
        return [r for r in rows if permitted(allowed, r)]

    async def send(self, caller: Caller, req: cm.Send) -> cm.MessageResult:
        caller.require("channels", "channel_send")
        self._same_channel(req.metadata, req.channel_id)
        if req.metadata.message_kind is cm.MessageKind.reply:
            raise errors.InvalidInput(
                "metadata.message_kind", "a reply is sent with channel_reply, which addresses it to the sender of "
                "the message it answers and takes that message's correlation id",
                suggested_command="agentdock channels reply MESSAGE_ID BODY")
        req = await self._masked(caller, req)
        allowed = await self._network_channels(caller)
        async with self.store.write(self.clock.now()) as tx:
            channel = await self._open(tx, caller, req.channel_id, allowed)
            self._kind_allowed(channel, req.metadata.message_kind)
            row = await self._stored(tx, caller, req)
            if row is None:
                await self._own_correlation(tx, caller, channel, req.metadata.correlation_id)
                row = await self._append(tx, caller, channel, self._message(
                    channel, caller, req, correlation_id=req.metadata.correlation_id))
        return cm.MessageResult(message=row.record())

    async def reply(self, caller: Caller, req: cm.Reply) -> cm.MessageResult:
        """Answer a message: to its sender, on its channel, correlated by that message (never by text)."""
        caller.require("channels", "channel_reply")
        req = await self._masked(caller, req)
        allowed = await self._network_channels(caller)
        async with self.store.write(self.clock.now()) as tx:
            original = await tx.channels.message(req.reply_to_message_id)
            if original is None or original.to_session_id not in (None, caller.session_id):
                raise errors.NotFound("message", req.reply_to_message_id, suggested_command="agentdock channels list",
                                      evidence={"field": "reply_to_message_id"})
            try:
                channel = await self._open(tx, caller, original.channel_id, allowed)
            except errors.NotFound:  # a channel the caller is not in: its messages do not exist for it
                raise errors.NotFound("message", req.reply_to_message_id, suggested_command="agentdock channels list",
                                      evidence={"field": "reply_to_message_id"}) from None
            if original.from_session_id == caller.session_id:
                raise errors.InvalidInput("reply_to_message_id", "that message is your own; a reply goes to the "
                                          "sender of the message it answers")
            correlation = original.correlation_id or original.id
            meta = req.metadata
            if meta.correlation_id is not None and meta.correlation_id != correlation:
                raise errors.InvalidInput("metadata.correlation_id", "a reply takes its correlation id from the "
                                          f"message it answers ({correlation}); leave it out")
            self._same_channel(meta, channel.id)
            self._kind_allowed(channel, meta.message_kind)
            row = await self._stored(tx, caller, req) or await self._append(tx, caller, channel, self._message(
                channel, caller, req, correlation_id=correlation, to=original.from_session_id, reply_to=original.id))
        return cm.MessageResult(message=row.record())

    async def recv(self, caller: Caller, req: cm.Recv) -> cm.Messages:
        """What the caller has not yet received on the channel; with `wait`, the first messages to
        arrive within the bound (woken by the commit that adds them)."""
        caller.require("channels", "channel_recv")
        bound = self.settings.mcp_max_wait_seconds
        if req.wait_seconds is not None and req.wait_seconds > bound:
            raise errors.InvalidInput("wait_seconds", f"at most {bound:g} seconds; call recv again to wait longer",
                                      evidence={"limit": bound})
        wait = req.wait_seconds if req.wait_seconds is not None else (bound if req.wait else 0.0)
        allowed = await self._network_channels(caller)
        looks = 0

        async def look() -> tuple[bool, cm.Messages]:
            nonlocal looks
            async with self.store.write(self.clock.now()) as tx:
                await self._open(tx, caller, req.channel_id, allowed)
                rows = await tx.channels.take_messages(req.channel_id, caller.session_id, req.limit, req.after_sequence,
                                              self.settings.list_page_max_bytes)
            looks += 1
            return bool(rows), cm.Messages(messages=[r.record() for r in rows], waited=looks > 1)

        return await topics.until(self.store.topics, self.clock, topics.channel(req.channel_id), wait, look,
                                  between=lambda: still_active(self.store, caller))

    async def inbox(self, caller: Caller, limit: int) -> tuple[list[cm.InboxItem], int]:
        """What is waiting for the caller on its channels (not received, nothing moved), oldest first,
        and how many there are."""
        allowed = await self._network_channels(caller)
        if allowed is None or "*" in allowed:
            rows, count = await self.store.channels.inbox(caller.session_id, limit)
            return [r.item() for r in rows], count
        mine = {c.id for c in await self.visible(caller)}
        rows = [r for r in (await self.store.channels.inbox(caller.session_id, 10 * LIST_LIMIT))[0] if r.channel_id in mine]
        return [r.item() for r in rows[:limit]], len(rows)

    async def channel(self, caller: Caller, channel_id: str) -> cm.Channel | None:
        """One channel the caller may use, or None (for the context's sections)."""
        row = await self.store.channels.channel(channel_id)
        if row is None or not permitted(await self._network_channels(caller), row):
            return None
        if not caller.is_root and not await self.store.channels.is_member(channel_id, caller.session_id):
            return None
        return row.record()

    # ------------------------------------------------------------ helpers

    @staticmethod
    async def _open(tx: Tx, caller: Caller, channel_id: str, allowed: list[str] | None) -> cm.ChannelRow:
        """The channel, if the caller may use it; else NotFound (not a member) or PermissionDenied.
        (Only the writer's own statements in here: a read on the reader's thread would hold the writer
        across a thread hop.)"""
        channel = await tx.channels.channel(channel_id)
        if channel is None or not (caller.is_root or await tx.channels.is_member(channel_id, caller.session_id)):
            raise errors.NotFound("channel", channel_id, evidence={"field": "channel_id"})
        if not permitted(allowed, channel):
            raise errors.PermissionDenied(
                f"channel: your permissions' network_channels do not name {channel.channel} ({channel.id})",
                evidence={"field": "channel_id", "channel": channel.channel, "session_id": caller.session_id})
        return channel

    @staticmethod
    def _kind_allowed(channel: cm.ChannelRow, kind: cm.MessageKind) -> None:
        kinds = channel.kinds
        if kind not in kinds:
            raise errors.InvalidInput("metadata.message_kind", f"{kind} is not allowed on {channel.channel}; it "
                                      f"takes {', '.join(kinds)}", evidence={"allowed_message_kinds": kinds})

    @staticmethod
    def _same_channel(meta: cm.Metadata, channel_id: str) -> None:
        if meta.coordination_channel_id is not None and meta.coordination_channel_id != channel_id:
            raise errors.InvalidInput("metadata.coordination_channel_id", "must be the channel the message is "
                                      f"sent on ({channel_id}), or left out")

    async def _append(self, tx: Tx, caller: Caller, channel: cm.ChannelRow, row: dict[str, Any]) -> cm.MessageRow:
        """The message, within the quotas of the sender's tree and of the channel's workspace (the local
        user has none); past one, nothing is written."""
        size = len(row["body"]) + len(json.dumps(row["metadata"]))
        await self.quotas.charge(tx, caller, channel.workspace_id, Usage(messages=1, message_bytes=size),
                                 field="body")
        return await tx.channels.append_message(row)

    async def _masked(self, caller: Caller, req: cm.SendOrReply) -> cm.SendOrReply:
        """The message as it may be stored: its body and `ext` masked for the secrets the caller holds;
        an id that holds one is refused."""
        mask = await self.masks.masker(caller)
        if not mask:
            return req
        meta = req.metadata
        masking.refuse(mask, {"metadata.correlation_id": meta.correlation_id, "metadata.workflow_id": meta.workflow_id,
                              "metadata.run_id": meta.run_id, "metadata.task_id": meta.task_id,
                              "idempotency_key": req.idempotency_key})
        return req.model_copy(update={"body": mask.value(req.body),
                                      "metadata": meta.model_copy(update={"ext": mask.value(meta.ext)})})

    @staticmethod
    async def _own_correlation(tx: Tx, caller: Caller, channel: cm.ChannelRow, correlation_id: str | None) -> None:
        """A send's correlation id is the sender's own: one another session's message on the channel carries
        (or is) belongs to that conversation, which only `channel_reply` joins."""
        if correlation_id is not None and await tx.channels.correlation_of_another(channel.id, correlation_id,
                                                                          caller.session_id):
            raise errors.InvalidInput(
                "metadata.correlation_id", f"{correlation_id} is another session's correlation on {channel.channel}; "
                "a send starts a correlation of its own (leave it out, or choose a new one), and an answer to "
                "that session's message goes with channel_reply", suggested_command="agentdock channels reply "
                "MESSAGE_ID BODY", evidence={"channel": channel.id})

    @staticmethod
    async def _stored(tx: Tx, caller: Caller, req: cm.Send | cm.Reply) -> cm.MessageRow | None:
        """The message an earlier send with this idempotency key stored (None: send it now)."""
        if req.idempotency_key is None:
            return None
        found = await tx.channels.message_by_key(caller.session_id, req.idempotency_key)
        if found is not None and found.request_hash != req.fingerprint():
            raise errors.Conflict(f"idempotency_key: already used for another message ({found.id}); use a new key "
                                  "for a new message", evidence={"field": "idempotency_key", "message_id": found.id})
        return found

    @staticmethod
    def _message(channel: cm.ChannelRow, caller: Caller, req: cm.Send | cm.Reply, *, correlation_id: str | None,
                 to: str | None = None, reply_to: str | None = None) -> dict[str, Any]:
        meta = req.metadata
        extra = meta.model_dump(include={"run_id", "task_id", "workflow_id", "ext"}, exclude_none=True)
        return {"id": new_id("msg"), "channel_id": channel.id, "from_session_id": caller.session_id,
                "to_session_id": to, "message_kind": meta.message_kind.value, "correlation_id": correlation_id,
                "reply_to_message_id": reply_to, "metadata": extra, "body": json.dumps(req.body),
                "idempotency_key": req.idempotency_key,
                "request_hash": None if req.idempotency_key is None else req.fingerprint()}

    async def _network_channels(self, caller: Caller) -> list[str] | None:
        if caller.is_root:
            return None
        if caller.session_id not in self._allowed:
            row = await self.store.sessions.session(caller.session_id)
            if row is None:
                raise errors.Unauthenticated(f"no session {caller.session_id}")
            self._allowed[caller.session_id] = list(row.permissions.get("network_channels", []))
        return self._allowed[caller.session_id]
