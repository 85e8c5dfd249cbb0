"""The store's SQL and operations for channels, their members, messages and cursors (mixed into
`store.Tx` and `store.Store`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine import topics
from engine.channels.models import ChannelRow, MessageRow
from engine.sqlvalues import Connected, Reading, encode

SQL = {
    "channel_insert": (
        "INSERT INTO channels (id, channel, kind, display_name, purpose, allowed_message_kinds, workspace_id, "
        "owner_session_id, run_id, task_id, workflow_id, last_activity_at, created_at) VALUES (:id, :channel, "
        ":kind, :display_name, :purpose, :allowed_message_kinds, :workspace_id, :owner_session_id, :run_id, "
        ":task_id, :workflow_id, :now, :now) ON CONFLICT (id) DO NOTHING"
    ),
    "channel_join": (
        "INSERT INTO channel_members (channel_id, session_id, joined_at) VALUES (?, ?, ?) "
        "ON CONFLICT (channel_id, session_id) DO NOTHING"
    ),
    "channel_get": "SELECT * FROM channels WHERE id = ?",
    "channel_member": "SELECT 1 FROM channel_members WHERE channel_id = ? AND session_id = ?",
    "channels_of": (
        "SELECT c.* FROM channels c JOIN channel_members m ON m.channel_id = c.id WHERE m.session_id = ? "
        "ORDER BY c.last_activity_at DESC, c.id LIMIT ?"
    ),
    "channels_all": "SELECT * FROM channels ORDER BY last_activity_at DESC, id LIMIT ?",
    "channel_bump": (
        "UPDATE channels SET last_sequence = last_sequence + 1, last_activity_at = ? WHERE id = ? "
        "RETURNING last_sequence"
    ),
    "message_insert": (
        "INSERT INTO channel_messages (channel_id, sequence, id, from_session_id, to_session_id, message_kind, "
        "correlation_id, reply_to_message_id, metadata, body, idempotency_key, request_hash, created_at) VALUES "
        "(:channel_id, :sequence, :id, :from_session_id, :to_session_id, :message_kind, :correlation_id, "
        ":reply_to_message_id, :metadata, :body, :idempotency_key, :request_hash, :now)"
    ),
    "message_get": "SELECT * FROM channel_messages WHERE id = ?",
    "message_by_key": "SELECT * FROM channel_messages WHERE from_session_id = ? AND idempotency_key = ?",
    "messages_for": (
        "SELECT * FROM channel_messages WHERE channel_id = :channel AND sequence > :after "
        "AND from_session_id != :me AND (to_session_id IS NULL OR to_session_id = :me) ORDER BY sequence LIMIT :limit"
    ),
    "correlation_of_another": (
        "SELECT EXISTS (SELECT 1 FROM channel_messages WHERE channel_id = :channel AND correlation_id = :cid "
        "AND from_session_id != :me) OR EXISTS (SELECT 1 FROM channel_messages WHERE id = :cid "
        "AND channel_id = :channel AND from_session_id != :me)"
    ),
    "channel_last_sequence": "SELECT last_sequence FROM channels WHERE id = ?",
    "channel_cursor": "SELECT sequence FROM channel_cursors WHERE channel_id = ? AND session_id = ?",
    "channel_cursor_set": (
        "INSERT INTO channel_cursors (channel_id, session_id, sequence, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (channel_id, session_id) DO UPDATE SET sequence = excluded.sequence, "
        "updated_at = excluded.updated_at WHERE excluded.sequence > channel_cursors.sequence"
    ),
    "inbox": (
        "SELECT m.* FROM channel_members cm JOIN channel_messages m ON m.channel_id = cm.channel_id "
        "LEFT JOIN channel_cursors k ON k.channel_id = cm.channel_id AND k.session_id = cm.session_id "
        "WHERE cm.session_id = :me AND m.sequence > COALESCE(k.sequence, 0) AND m.from_session_id != :me "
        "AND (m.to_session_id IS NULL OR m.to_session_id = :me) ORDER BY m.created_at, m.channel_id, m.sequence "
        "LIMIT :limit"
    ),
    "inbox_count": (
        "SELECT count(*) AS n FROM channel_members cm JOIN channel_messages m ON m.channel_id = cm.channel_id "
        "LEFT JOIN channel_cursors k ON k.channel_id = cm.channel_id AND k.session_id = cm.session_id "
        "WHERE cm.session_id = :me AND m.sequence > COALESCE(k.sequence, 0) AND m.from_session_id != :me "
        "AND (m.to_session_id IS NULL OR m.to_session_id = :me)"
    ),
}


class ChannelWrites(Connected):
    """Channels in a write transaction: making them, messages in order, cursors (`store.Tx`)."""

    async def ensure_channel(self, row: dict[str, Any], members: Iterable[str]) -> None:
        """The channel (made once; its id comes from its name) with these sessions among its members."""
        await self.conn.execute(SQL["channel_insert"], encode({**row, "now": self.now}))
        await self.conn.executemany(SQL["channel_join"], [(row["id"], m, self.stamp) for m in members])

    async def channel(self, channel_id: str) -> ChannelRow | None:
        rows = await self.conn.execute_fetchall(SQL["channel_get"], (channel_id,))
        return ChannelRow.model_validate(dict(rows[0])) if rows else None

    async def is_member(self, channel_id: str, session_id: str) -> bool:
        return bool(await self.conn.execute_fetchall(SQL["channel_member"], (channel_id, session_id)))

    async def message(self, message_id: str) -> MessageRow | None:
        rows = await self.conn.execute_fetchall(SQL["message_get"], (message_id,))
        return MessageRow.model_validate(dict(rows[0])) if rows else None

    async def message_by_key(self, session_id: str, key: str) -> MessageRow | None:
        rows = await self.conn.execute_fetchall(SQL["message_by_key"], (session_id, key))
        return MessageRow.model_validate(dict(rows[0])) if rows else None

    async def correlation_of_another(self, channel_id: str, correlation_id: str, session_id: str) -> bool:
        """Whether another session's message in the channel carries (or is) this correlation id."""
        ((found,),) = await self.conn.execute_fetchall(SQL["correlation_of_another"], {
            "channel": channel_id, "cid": correlation_id, "me": session_id})
        return bool(found)

    async def append_message(self, row: dict[str, Any]) -> MessageRow:
        """The message, next in its channel's order; its waiters wake when this transaction commits."""
        ((seq,),) = await self.conn.execute_fetchall(SQL["channel_bump"], (self.stamp, row["channel_id"]))
        await self.conn.execute(SQL["message_insert"], encode({**row, "sequence": seq, "now": self.now}))
        self.touch(topics.channel(row["channel_id"]))
        message = await self.message(row["id"])
        assert message is not None
        return message

    async def take_messages(self, channel_id: str, session_id: str, limit: int,
                            after: int | None = None, budget: int | None = None) -> list[MessageRow]:
        """What `session_id` has not yet received on the channel (up to `limit` messages, and no more once
        their bodies and metadata pass `budget` bytes, though always the first), its cursor moved past
        them in this same transaction: a message is handed to a session once. `after`: read from there
        instead (a caller that lost an answer reads it again); the cursor still only moves forward."""
        rows = await self.conn.execute_fetchall(SQL["channel_cursor"], (channel_id, session_id))
        cursor = rows[0][0] if rows else 0
        start = cursor if after is None else after
        cur = await self.conn.execute(
            SQL["messages_for"], {"channel": channel_id, "after": start, "me": session_id, "limit": limit})
        found: list[MessageRow] = []
        size, cut = 0, False
        while (row := await cur.fetchone()) is not None:  # read no further than the budget
            size += len(row["body"]) + len(row["metadata"])
            if found and budget is not None and size > budget:
                cut = True
                break
            found.append(MessageRow.model_validate(dict(row)))
        await cur.close()
        if cut or len(found) == limit:
            upto = found[-1].sequence
        else:  # everything up to the channel's last message was looked at (the rest is not for this session)
            ((upto,),) = await self.conn.execute_fetchall(SQL["channel_last_sequence"], (channel_id,))
        if upto > cursor:
            await self.conn.execute(SQL["channel_cursor_set"], (channel_id, session_id, upto, self.stamp))
        return found

class ChannelReads(Reading):
    """Channels read on the reader (`store.Store`)."""

    async def channel(self, channel_id: str) -> ChannelRow | None:
        row = await self._one(SQL["channel_get"], (channel_id,))
        return ChannelRow.model_validate(row) if row else None

    async def list(self, session_id: str | None, limit: int) -> list[ChannelRow]:
        """The channels `session_id` is a member of (None: every channel), most recently active first."""
        rows = await (self._all(SQL["channels_all"], (limit,)) if session_id is None
                      else self._all(SQL["channels_of"], (session_id, limit)))
        return [ChannelRow.model_validate(r) for r in rows]

    async def is_member(self, channel_id: str, session_id: str) -> bool:
        return await self._one(SQL["channel_member"], (channel_id, session_id)) is not None

    async def message(self, message_id: str) -> MessageRow | None:
        row = await self._one(SQL["message_get"], (message_id,))
        return MessageRow.model_validate(row) if row else None

    async def inbox(self, session_id: str, limit: int) -> tuple[list[MessageRow], int]:
        """What `session_id` has not yet received on its channels, oldest first, and how much there is."""
        rows = await self._all(SQL["inbox"], {"me": session_id, "limit": limit})
        count = await self._one(SQL["inbox_count"], {"me": session_id})
        return [MessageRow.model_validate(r) for r in rows], int(count["n"]) if count else 0
