"""Channels' records and inputs (seed 002's `channel`, `message` and its `metadata`), and the store's
rows they are read from."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import Field, JsonValue, model_validator

from engine import ids, models
from engine.records import Row

MAX_BODY_BYTES = 64 * 1024
"""A message body, as JSON, at most this many bytes (bigger payloads belong in artifacts or a task's payload)."""
MAX_EXT_KEYS = 32
MAX_EXT_BYTES = 8 * 1024
MAX_DEPTH = 32
"""JSON nested deeper than this is refused (as the HTTP API refuses it)."""
PREVIEW_CHARS = 200
DEFAULT_RECV_LIMIT = 50
MAX_RECV_LIMIT = 500
CORRELATION = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
WORKFLOW = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class MessageKind(StrEnum):
    status = "status"
    """Where the sender is (`started`, `blocked on X`)."""
    progress = "progress"
    """How far a piece of work has got."""
    request = "request"
    """Asks for something; the answer is a `reply` carrying its correlation id."""
    reply = "reply"
    """Answers a message (`channel_reply` sets it, addressed to that message's sender)."""
    result = "result"
    """What a piece of work produced."""
    error = "error"
    """Something went wrong."""
    chat = "chat"
    """Free conversation (family channels only)."""


class ChannelKind(StrEnum):
    family = "family"
    """A parent and the sessions it spawned."""
    task = "task"
    """A task's creator and every session that claimed it."""


ALLOWED_KINDS: dict[ChannelKind, tuple[MessageKind, ...]] = {
    ChannelKind.family: tuple(MessageKind),
    ChannelKind.task: (MessageKind.status, MessageKind.progress, MessageKind.request, MessageKind.reply,
                       MessageKind.result, MessageKind.error),
}
"""What each kind of channel carries: a task's channel is about the task, so it has no `chat`."""


def channel_id(name: str) -> str:
    """A channel's id, derived from its name: whoever knows the family or task finds its channel."""
    return "chn_" + hashlib.sha256(name.encode()).hexdigest()[:ids.HEX_DIGITS]


def family_name(parent_session_id: str) -> str:
    return f"family:{parent_session_id}"


def task_name(task_id: str) -> str:
    return f"task:{task_id}"


# ---------------------------------------------------------------- inputs


class Metadata(models.Input):
    """What a message says about itself, besides its body."""

    message_kind: MessageKind = MessageKind.status
    """What the message is: status, progress, request, reply, result, error or chat."""
    correlation_id: str | None = Field(default=None, pattern=CORRELATION)
    """Ties a request to its replies: set it on a request; `channel_reply` copies it (or, when the message
    replied to has none, uses that message's id)."""
    coordination_channel_id: ids.ChannelId | None = None
    """The channel it is sent on (filled in; if given, it must be that channel)."""
    run_id: ids.RunId | None = None
    """The agent run it is about."""
    task_id: ids.TaskId | None = None
    """The task it is about."""
    workflow_id: str | None = Field(default=None, pattern=WORKFLOW)
    """Your own id of the workflow it belongs to."""
    ext: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_EXT_KEYS)
    """Your own fields (at most 8 KiB of JSON)."""

    @model_validator(mode="after")
    def _check(self) -> Metadata:
        _json_size(self.ext, "ext", MAX_EXT_BYTES, "")
        return self


def _depth(value: Any) -> int:
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _json_size(value: Any, field: str, limit: int, hint: str) -> None:
    """Refuse JSON nested too deeply, with NaN/infinity, or longer than `limit` bytes (naming `field`)."""
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"{field}: nested more than {MAX_DEPTH} levels deep")
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise ValueError(f"{field}: must be plain JSON (no NaN or infinity)") from None
    if size > limit:
        raise ValueError(f"{field}: {size} bytes as JSON; at most {limit}{hint}")


def _body_size(body: Any) -> Any:
    _json_size(body, "body", MAX_BODY_BYTES, " (put bigger data in a task payload or an artifact and send its id)")
    return body


class Outgoing(models.Input):
    """What a send and a reply share."""

    body: JsonValue
    """Any JSON (a string, an object, ...), at most 64 KiB."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    """Repeat a send whose answer you did not get with the same key: you get the message the first one
    stored, never a second copy (keys are yours alone; the same key with a different message is refused)."""

    @model_validator(mode="after")
    def _check(self) -> Outgoing:
        _body_size(self.body)
        if self.idempotency_key is not None and not models.IDEMPOTENCY_KEY.fullmatch(self.idempotency_key):
            raise ValueError("idempotency_key: printable ASCII without spaces, 1 to 200 characters")
        return self

    def fingerprint(self) -> str:
        """What makes two sends with one key the same send."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json", exclude={"idempotency_key"}),
                                         sort_keys=True).encode()).hexdigest()


class Send(Outgoing):
    channel_id: ids.ChannelId
    """The channel id (chn_...): `channel_list` shows yours."""
    metadata: Metadata = Field(default_factory=Metadata)
    """Its kind (`message_kind`) and what it is about (task, run, correlation)."""


class Reply(Outgoing):
    reply_to_message_id: ids.MessageId
    """The message answered (msg_...): the reply goes to its sender, on its channel."""
    metadata: Metadata = Field(default_factory=lambda: Metadata(message_kind=MessageKind.reply))
    """Its kind (default `reply`) and what it is about; the correlation id is the original's."""


SendOrReply = TypeVar("SendOrReply", Send, Reply)


class Recv(models.Input):
    channel_id: ids.ChannelId
    """The channel id (chn_...)."""
    limit: int = Field(default=DEFAULT_RECV_LIMIT, ge=1, le=MAX_RECV_LIMIT)
    """At most this many messages, and fewer once their bodies pass the answer's byte budget (1 MiB by
    default): the rest wait for the next recv."""
    wait: bool = False
    """When nothing is waiting, wait for the next message (up to `wait_seconds`)."""
    wait_seconds: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """How long `wait` waits (default and most: the server's bound, 45 s); giving it implies `wait`."""
    after_sequence: int | None = Field(default=None, ge=0, le=models.MAX_SEQUENCE)
    """Read what comes after this sequence instead of after your cursor: to get again an answer you
    lost (give the last sequence you hold). Your cursor never moves back."""


# ---------------------------------------------------------------- records


class Channel(models.Record):
    id: str
    channel: str
    """Its name: `family:<parent session id>` or `task:<task id>`."""
    display_name: str
    purpose: str
    allowed_message_kinds: list[MessageKind]
    workspace_id: str
    run_id: str | None = None
    task_id: str | None = None
    workflow_id: str | None = None
    last_activity_at: datetime


class ChannelList(models.Record):
    channels: list[Channel]


class MessageMetadata(models.Record):
    message_kind: MessageKind
    correlation_id: str | None = None
    coordination_channel_id: str
    run_id: str | None = None
    task_id: str | None = None
    workflow_id: str | None = None
    ext: dict[str, Any] = Field(default_factory=dict)


class Message(models.Record):
    message_id: str
    channel_id: str
    sequence: int
    """Its place in the channel (1, 2, ...): messages are received in this order."""
    from_session_id: str
    to_session_id: str | None = None
    """Only this session receives it (a reply); None: every member but the sender."""
    reply_to_message_id: str | None = None
    metadata: MessageMetadata
    body: JsonValue = None
    timestamp: datetime


class MessageResult(models.Record):
    message: Message


class Messages(models.Record):
    messages: list[Message]
    waited: bool = False
    """Whether this call waited for a message to arrive."""


class InboxItem(models.Record):
    channel_id: str
    kind: MessageKind
    message_id: str
    metadata: MessageMetadata
    preview: str
    timestamp: datetime


# ---------------------------------------------------------------- store rows


class ChannelRow(Row):
    id: str
    channel: str
    kind: ChannelKind
    display_name: str
    purpose: str
    allowed_message_kinds: str
    workspace_id: str
    owner_session_id: str
    run_id: str | None
    task_id: str | None
    workflow_id: str | None
    last_sequence: int
    last_activity_at: datetime
    created_at: datetime

    @property
    def kinds(self) -> list[MessageKind]:
        return [MessageKind(k) for k in json.loads(self.allowed_message_kinds)]

    def record(self) -> Channel:
        return Channel(id=self.id, channel=self.channel, display_name=self.display_name, purpose=self.purpose,
                       allowed_message_kinds=self.kinds, workspace_id=self.workspace_id, run_id=self.run_id,
                       task_id=self.task_id, workflow_id=self.workflow_id, last_activity_at=self.last_activity_at)


class MessageRow(Row):
    id: str
    channel_id: str
    sequence: int
    from_session_id: str
    to_session_id: str | None
    message_kind: MessageKind
    correlation_id: str | None
    reply_to_message_id: str | None
    metadata: dict[str, Any]
    body: str
    request_hash: str | None = None
    created_at: datetime

    def record(self) -> Message:
        meta = MessageMetadata(message_kind=self.message_kind, correlation_id=self.correlation_id,
                               coordination_channel_id=self.channel_id, **self.metadata)
        return Message(message_id=self.id, channel_id=self.channel_id, sequence=self.sequence,
                       from_session_id=self.from_session_id, to_session_id=self.to_session_id,
                       reply_to_message_id=self.reply_to_message_id, metadata=meta, body=json.loads(self.body),
                       timestamp=self.created_at)

    def item(self) -> InboxItem:
        msg = self.record()
        text = msg.body if isinstance(msg.body, str) else json.dumps(msg.body)
        return InboxItem(channel_id=self.channel_id, kind=self.message_kind, message_id=self.id,
                         metadata=msg.metadata, preview=text[:PREVIEW_CHARS], timestamp=self.created_at)
