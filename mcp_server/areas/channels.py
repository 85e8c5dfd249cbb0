"""Channels: list the channels you may use, send, receive (waiting, bounded) and reply. Served on both
sockets (on `agent.sock` the caller is the session of the bearer token) at seed 002's
`/api/agent/channels...` routes, with `{channel}` the channel id."""

from __future__ import annotations

import argparse
import json
import sys

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import channel_models as cm
from engine import errors, ids, models
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint, body, params, with_idempotency_key

NAME = "channels"
"""The toolset (`--toolsets channels`) and the permission area."""
COLUMNS = ["id", "channel", "display_name", "allowed_message_kinds", "last_activity_at"]


class ChannelRef(models.Input):
    channel: ids.ChannelId
    """The channel id (chn_...)."""


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    service = engine.channels

    def answer(value: models.Record, status: int = 200) -> Response:
        return JSONResponse(value.model_dump(mode="json"), status_code=status)

    async def list_(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return answer(await service.list(caller))

    async def send(request: Request, caller: Caller) -> Response:
        channel = params(request, ChannelRef).channel
        data = with_idempotency_key(request, await body(request))
        if "channel" in data:
            raise errors.InvalidInput("channel", "is the path's channel id; leave it out of the body")
        return answer(await service.send(caller, models.parse(cm.Send, {**data, "channel": channel})), 201)

    async def recv(request: Request, caller: Caller) -> Response:
        return answer(await service.recv(caller, params(request, cm.Recv)))

    async def reply(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        data = with_idempotency_key(request, await body(request))
        return answer(await service.reply(caller, models.parse(cm.Reply, data)), 201)

    return [
        Endpoint("/api/agent/channels", list_, ["GET"]),
        Endpoint("/api/agent/channels/reply", reply, ["POST"]),
        Endpoint("/api/agent/channels/{channel:id}/send", send, ["POST"]),
        Endpoint("/api/agent/channels/{channel:id}/recv", recv, ["GET"]),
    ]


# ---------------------------------------------------------------- MCP


class ListInput(models.Input):
    pass


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def channel_list(inp: ListInput, ctx: Context) -> cm.ChannelList:
        return await api.list_channels()

    async def channel_send(inp: cm.Send, ctx: Context) -> cm.MessageResult:
        return await api.send_message(inp)

    async def channel_recv(inp: cm.Recv, ctx: Context) -> cm.Messages:
        return await api.recv_messages(inp)

    async def channel_reply(inp: cm.Reply, ctx: Context) -> cm.MessageResult:
        return await api.reply_message(inp)

    change = mcp_tools.annotations()
    bound = settings.mcp_max_wait_seconds
    return [
        mcp_tools.make_tool("channel_list", "The channels you may use: your parent's family channel, your own once "
                            "you spawn, and the channel of each task you created or claimed.",
                            ListInput, cm.ChannelList, channel_list, mcp_tools.READ),
        mcp_tools.make_tool("channel_send", "Send a message (any JSON body up to 64 KiB; metadata.message_kind: "
                            "status, progress, request, reply, result, error or chat) to a channel's other "
                            "members. Durable once this returns.", cm.Send, cm.MessageResult, channel_send, change),
        mcp_tools.make_tool("channel_recv", "Messages on a channel you have not yet received, oldest first (each "
                            f"is handed to you once). wait=true waits up to {bound:g} s for the next one; call "
                            "again to go on waiting.", cm.Recv, cm.Messages, channel_recv, change),
        mcp_tools.make_tool("channel_reply", "Reply to a message: it goes to that message's sender, on its "
                            "channel, with its correlation id.", cm.Reply, cm.MessageResult, channel_reply,
                            change),
    ]


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    return []


# ---------------------------------------------------------------- CLI


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    found = await api.list_channels()
    if args.json:
        commands.show(found, True)
    else:
        commands.show({"data": [c.model_dump(mode="json") for c in found.channels]}, False, COLUMNS)
    return 0


async def cmd_send(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(cm.Send, {"channel": args.channel, "body": _body(args.body),
                                 "metadata": _metadata(args, cm.MessageKind.status),
                                 **commands.given(idempotency_key=args.idempotency_key)})
    commands.show((await api.send_message(req)).message, args.json)
    return 0


async def cmd_reply(api: AgentDockAPI, args: argparse.Namespace) -> int:
    req = models.parse(cm.Reply, {"reply_to_message_id": args.message_id, "body": _body(args.body),
                                  "metadata": _metadata(args, cm.MessageKind.reply),
                                  **commands.given(idempotency_key=args.idempotency_key)})
    commands.show((await api.reply_message(req)).message, args.json)
    return 0


async def cmd_recv(api: AgentDockAPI, args: argparse.Namespace) -> int:
    """Print what has not yet been received; `--follow` goes on waiting (Ctrl-C ends it)."""
    while True:
        req = models.parse(cm.Recv, commands.given(channel=args.channel, limit=args.limit,
                                                   wait=True if args.follow or args.wait else None,
                                                   wait_seconds=args.wait, after_sequence=args.after))
        got = await api.recv_messages(req)
        for message in got.messages:
            _print_message(message, args.json)
        if not args.follow:
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
    cli.group("channels", "channels between sessions: list, send, recv [--follow], reply")
    cli.add("channels", "list", cmd_list)
    c = cli.add("channels", "send", cmd_send, help="send a message (BODY: JSON, or text)")
    c.add_argument("channel", help="channel id (chn_...)")
    c.add_argument("body")
    c.add_argument("--correlation-id", dest="correlation_id")
    r = cli.add("channels", "reply", cmd_reply, help="reply to a message: to its sender, with its correlation id")
    r.add_argument("message_id", help="message id (msg_...)")
    r.add_argument("body")
    for p in (c, r):
        p.add_argument("--kind", help="message_kind: " + ", ".join(cm.MessageKind))
        p.add_argument("--task-id", dest="task_id")
        p.add_argument("--run-id", dest="run_id")
        p.add_argument("--idempotency-key", dest="idempotency_key",
                       help="repeat a send with the same key: the first message comes back, not a copy")
    c = cli.add("channels", "recv", cmd_recv, help="messages not yet received on a channel")
    c.add_argument("channel", help="channel id (chn_...)")
    c.add_argument("--limit", type=int)
    c.add_argument("--wait", type=float, help="seconds to wait for a message when none is there")
    c.add_argument("--follow", action="store_true", help="keep waiting and printing until Ctrl-C")
    c.add_argument("--after", type=int, help="read again what came after this sequence (an answer you lost)")
