"""Channels: list the channels you may use, send, receive (waiting, bounded) and reply. Served on both
sockets (on `agent.sock` the caller is the session of the bearer token) at seed 002's
`/api/agent/channels...` routes, with `{channel}` the channel id."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

from engine.channels import models as cm
from engine import models
from mcp_server import commands
from mcp_server.api import AgentDockAPI
from mcp_server.ops import CHANGE, Op

NAME = "channels"
"""The toolset (`--toolsets channels`) and the permission area."""
op = partial(Op, NAME)
COLUMNS = ["id", "channel", "display_name", "allowed_message_kinds", "last_activity_at"]


class ListInput(models.Input):
    pass


LIST = op("channel_list", "The channels you may use: your parent's family channel, your own once you spawn, and "
          "the channel of each task you created or claimed.", ListInput, cm.ChannelList,
          lambda e, c, i: e.channels.list(c), "GET", "/api/agent/channels", envelope=None)
SEND = op("channel_send", "Send a message (any JSON body up to 64 KiB; metadata.message_kind: status, progress, "
          "request, result, error or chat) to a channel's other members. Durable once this returns.", cm.Send,
          cm.MessageResult, lambda e, c, i: e.channels.send(c, i), "POST", "/api/agent/channels/{channel_id}/send",
          CHANGE, envelope=None, status=201)
RECV = op("channel_recv", "Messages on a channel you have not yet received, oldest first (each is handed to you "
          "once). wait=true waits (bounded, 45 s) for the next one; call again to go on waiting.", cm.Recv,
          cm.Messages, lambda e, c, i: e.channels.recv(c, i), "GET", "/api/agent/channels/{channel_id}/recv",
          CHANGE, envelope=None, wait="wait_seconds")
REPLY = op("channel_reply", "Reply to a message: it goes to that message's sender, on its channel, with its "
           "correlation id.", cm.Reply, cm.MessageResult, lambda e, c, i: e.channels.reply(c, i),
           "POST", "/api/agent/channels/reply", CHANGE, envelope=None, status=201)
OPS = (LIST, SEND, RECV, REPLY)
COMMANDS = {"channels": "channels between sessions: list, send, recv [--follow], reply"}


# ---------------------------------------------------------------- CLI


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    found = await api.call(LIST)
    if args.json:
        commands.show(found, True)
    else:
        commands.show({"data": [c.model_dump(mode="json") for c in found.channels]}, False, COLUMNS)
    return 0


async def cmd_send(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(cm.Send, {"channel_id": args.channel_id, "body": _body(args.body),
                                 "metadata": _metadata(args, cm.MessageKind.status),
                                 **commands.given(idempotency_key=args.idempotency_key)})
    commands.show((await api.call(SEND, req)).message, args.json)
    return 0


async def cmd_reply(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(cm.Reply, {"reply_to_message_id": args.message_id, "body": _body(args.body),
                                  "metadata": _metadata(args, cm.MessageKind.reply),
                                  **commands.given(idempotency_key=args.idempotency_key)})
    commands.show((await api.call(REPLY, req)).message, args.json)
    return 0


async def cmd_recv(api: AgentDockAPI, args: argparse.Namespace) -> int:
    """Print what has not yet been received; `--follow` goes on waiting (Ctrl-C ends it)."""
    while True:
        req = models.parse(cm.Recv, commands.given(channel_id=args.channel_id, limit=args.limit,
                                                   wait=True if args.follow or args.wait else None,
                                                   wait_seconds=args.wait, after_sequence=args.after))
        got = await api.call(RECV, req)
        for message in got.messages:
            _print_message(message, args.json)
        if not args.follow:
            if not got.messages and not args.json:
                print("(no new messages)", file=sys.stderr)
            return 0
        args.after = None  # read again once; then on from the cursor


def _print_message(message: cm.Message, as_json: bool) -> None:
    if as_json:
        print(json.dumps(message.model_dump(mode="json")), flush=True)
        return
    body = message.body if isinstance(message.body, str) else json.dumps(message.body)
    to = f" -> {message.to_session_id}" if message.to_session_id else ""
    print(commands.safe(f"#{message.sequence} {message.message_id} {message.from_session_id}{to} "
                        f"[{message.metadata.message_kind}] {body}"), flush=True)
    sys.stdout.flush()


def _body(text: str) -> object:
    """A message body: JSON when it parses as JSON, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _metadata(args: argparse.Namespace, default: cm.MessageKind) -> dict[str, object]:
    return commands.given(message_kind=args.kind or default.value, correlation_id=getattr(args, "correlation_id", None),
                          task_id=args.task_id, run_id=args.run_id)


def add_commands(cli: commands.Commands) -> None:
    cli.add("channels", "list", cmd_list, help=LIST.summary)
    c = cli.add("channels", "send", cmd_send, help="send a message (BODY: JSON, or text)")
    c.add_argument("channel_id", metavar="CHANNEL_ID", help="channel id (chn_...)")
    c.add_argument("body", help="the message: JSON, or text")
    c.add_argument("--correlation-id", dest="correlation_id", help="what the message answers or continues")
    r = cli.add("channels", "reply", cmd_reply, help="reply to a message: to its sender, with its correlation id")
    r.add_argument("message_id", help="message id (msg_...)")
    r.add_argument("body", help="the reply: JSON, or text")
    for p in (c, r):
        p.add_argument("--kind", help="message_kind: " + ", ".join(cm.MessageKind))
        p.add_argument("--task-id", dest="task_id", help="the task it is about (tsk_...)")
        p.add_argument("--run-id", dest="run_id", help="the agent run it is about (run_...)")
        p.add_argument("--idempotency-key", dest="idempotency_key",
                       help="repeat a send with the same key: the first message comes back, not a copy")
    c = cli.add("channels", "recv", cmd_recv, help="messages not yet received on a channel")
    c.add_argument("channel_id", metavar="CHANNEL_ID", help="channel id (chn_...)")
    c.add_argument("--limit", type=int, help="at most this many messages")
    c.add_argument("--wait-seconds", dest="wait", type=float, help="seconds to wait for a message when none is there")
    c.add_argument("--follow", action="store_true", help="keep waiting and printing until Ctrl-C")
    c.add_argument("--after-sequence", dest="after", type=int, help="read again what came after this sequence (an answer you lost)")
