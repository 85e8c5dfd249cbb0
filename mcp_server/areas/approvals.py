"""Approvals a person gives: their HTTP routes, MCP tools and CLI commands.

A session under `confirm-risky` whose risky call was refused with `approval_required` waits on the
approval its diagnostic names (`GET /api/agent/approvals/{id}?wait=S`, `approval_get`), then repeats
the call. The local user decides on `control.sock` (`agentdock approvals approve|deny`, the HTTP
routes) or in their own `agentdock serve` with `approval_review`, which asks the human through MCP
elicitation and only reports what they answered. A session holding the `approvals` permission decides
for the sessions below it (`approval_approve`, `approval_deny`, the same routes on `agent.sock`)."""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from starlette.requests import Request
from starlette.responses import Response

from engine import approval_models as am
from engine import errors, models
from engine.app import Engine
from engine.callers import Caller
from engine.settings import Settings
from mcp_server import commands, mcp_tools
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint, body, data, params

NAME = "approvals"
"""The toolset (`--toolsets approvals`) and the permission area (deciding the approvals of the sessions below)."""
COLUMNS = ["id", "status", "session_id", "summary", "expires_at", "decided_by"]
PATH = "/api/v1/approvals"
REVIEWED_BY_PERSON = "the local user, asked through MCP elicitation (approval_review)"


# ---------------------------------------------------------------- HTTP


def endpoints(engine: Engine) -> list[Endpoint]:
    service = engine.approvals

    async def list_(request: Request, caller: Caller) -> Response:
        return data(await service.list(caller, params(request, am.ApprovalListQuery)))

    async def get(request: Request, caller: Caller) -> Response:
        q = params(request, am.ApprovalQuery)
        return data(await service.get(caller, q.approval_id, q.wait))

    async def approve(request: Request, caller: Caller) -> Response:
        approval_id = params(request, am.ApprovalRef).approval_id
        return data(await service.approve(caller, approval_id, models.parse(am.Decision, await body(request))))

    async def deny(request: Request, caller: Caller) -> Response:
        approval_id = params(request, am.ApprovalRef).approval_id
        return data(await service.deny(caller, approval_id, models.parse(am.Decision, await body(request))))

    async def events(request: Request, caller: Caller) -> Response:
        return data(await service.events(caller, params(request, am.ApprovalEventsQuery)))

    return [
        Endpoint(PATH, list_, ["GET"]),
        Endpoint(PATH + "/{approval_id:id}", get, ["GET"]),
        Endpoint("/api/agent/approvals/{approval_id:id}", get, ["GET"]),
        Endpoint(PATH + "/{approval_id:id}/approve", approve, ["POST"]),
        Endpoint(PATH + "/{approval_id:id}/deny", deny, ["POST"]),
        Endpoint("/api/v1/approval-events", events, ["GET"]),
    ]


# ---------------------------------------------------------------- MCP


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def approval_get(inp: am.ApprovalWait, ctx: Context) -> am.Approval:
        return await api.get_approval(inp.approval_id, inp.wait_seconds)

    async def approval_list(inp: am.ApprovalListQuery, ctx: Context) -> am.ApprovalList:
        return await api.list_approvals(inp)

    async def approval_approve(inp: am.DecisionInput, ctx: Context) -> am.Approval:
        return await api.approve(inp.approval_id, am.Decision(reason=inp.reason))

    async def approval_deny(inp: am.DecisionInput, ctx: Context) -> am.Approval:
        return await api.deny(inp.approval_id, am.Decision(reason=inp.reason))

    async def approval_review(inp: am.Review, ctx: Context) -> am.ReviewResult:
        return await review(api, ctx, inp)

    return [
        mcp_tools.make_tool(
            "approval_get", "Get an approval (apr_... from an approval_required error); with wait_seconds (at most "
            "45), wait while it is pending. Once approved, repeat the refused call: it goes ahead once.",
            am.ApprovalWait, am.Approval, approval_get, mcp_tools.READ),
        mcp_tools.make_tool(
            "approval_list", "List approvals, newest first, optionally by status: every one for the local user; "
            "for a session holding the approvals permission, its own and those of the sessions below it.",
            am.ApprovalListQuery, am.ApprovalList, approval_list, mcp_tools.READ),
        mcp_tools.make_tool(
            "approval_approve", "Approve a pending approval of a session below you (needs the approvals permission; "
            "never your own): that session's same call then goes ahead once.",
            am.DecisionInput, am.Approval, approval_approve, mcp_tools.annotations(idempotent_hint=True)),
        mcp_tools.make_tool(
            "approval_deny", "Deny a pending approval of a session below you (needs the approvals permission; never "
            "your own): that session's same call stays refused.",
            am.DecisionInput, am.Approval, approval_deny, mcp_tools.annotations(idempotent_hint=True)),
        mcp_tools.make_tool(
            "approval_review", "Ask the user (MCP elicitation) to approve or deny pending approvals of agent "
            "sessions; the user answers, and this reports what they decided.",
            am.Review, am.ReviewResult, approval_review, mcp_tools.annotations()),
    ]


async def review(api: AgentDockAPI, ctx: Context, inp: am.Review) -> am.ReviewResult:
    """Ask the person about each pending approval (one, or up to `MAX_REVIEW`), then approve or deny what
    they answered: ticked approves, unticked or declined denies, dismissed leaves it pending."""
    if inp.approval_id is not None:
        one = await api.get_approval(inp.approval_id)
        if one.status is not am.ApprovalStatus.pending:
            raise errors.InvalidTransition(f"approval {one.id} is {one.status.value}; only a pending approval is "
                                           "reviewed", evidence={"approval_id": one.id, "status": one.status.value})
        pending = [one]
    else:
        q = am.ApprovalListQuery(status=am.ApprovalStatus.pending, limit=am.MAX_REVIEW)
        pending = (await api.list_approvals(q)).data
    pending = [a for a in pending if a.status is am.ApprovalStatus.pending]
    if not pending:
        return am.ReviewResult(data=[])
    answers = await mcp_tools.ask(ctx, {a.id: _question(a) for a in pending}, mcp_tools.Confirm)
    out = []
    for approval in pending:
        answer = answers.get(approval.id)
        verdict = "skipped" if answer is None or answer.action == "cancel" else (
            "approve" if answer.action == "accept" and answer.content.get("confirm") is True else "deny")
        if verdict != "skipped":
            decide = api.approve if verdict == "approve" else api.deny
            try:
                approval = await decide(approval.id, am.Decision(reason=REVIEWED_BY_PERSON))
            except errors.InvalidTransition:  # decided elsewhere, or expired, while the person was asked
                approval = await api.get_approval(approval.id)
        out.append(am.Reviewed(approval_id=approval.id, session_id=approval.session_id, summary=approval.summary,
                               answer=verdict, status=approval.status))
    return am.ReviewResult(data=out)


def _question(approval: am.Approval) -> str:
    """What the person reads: written by agentdock from checked values (ids, a profile, the summary)."""
    return (f"agentdock: session {approval.session_id} (workspace {approval.workspace_id}, profile "
            f"{approval.profile_id or 'none'}) asks to {commands.safe(approval.summary)}. Approve it? "
            f"(approval {approval.id}; it expires at {approval.expires_at.isoformat()})")


def resources(api: AgentDockAPI) -> list[mcp_tools.Resource]:
    return []


# ---------------------------------------------------------------- CLI


async def cmd_list(api: AgentDockAPI, args: argparse.Namespace) -> int:
    q = models.parse(am.ApprovalListQuery, commands.given(status=args.status, limit=args.limit))
    commands.show(await api.list_approvals(q), args.json, COLUMNS)
    return 0


async def cmd_get(api: AgentDockAPI, args: argparse.Namespace) -> int:
    q = models.parse(am.ApprovalQuery, commands.given(approval_id=args.id, wait=args.wait))
    commands.show(await api.get_approval(q.approval_id, q.wait), args.json)
    return 0


async def cmd_approve(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.approve(args.id, models.parse(am.Decision, commands.given(reason=args.reason))),
                  args.json)
    return 0


async def cmd_deny(api: AgentDockAPI, args: argparse.Namespace) -> int:
    commands.show(await api.deny(args.id, models.parse(am.Decision, commands.given(reason=args.reason))), args.json)
    return 0


async def cmd_events(api: AgentDockAPI, args: argparse.Namespace) -> int:
    q = models.parse(am.ApprovalEventsQuery, commands.given(after_sequence=args.after_sequence, limit=args.limit))
    commands.show(await api.approval_events(q), args.json, ["sequence", "type", "message", "created_at"])
    return 0


def add_commands(cli: commands.Commands) -> None:
    cli.group("approvals", "approvals a person gives: list, get, approve, deny, events")
    c = cli.add("approvals", "list", cmd_list)
    c.add_argument("--status", choices=[s.value for s in am.ApprovalStatus])
    c.add_argument("--limit", type=int)
    c = cli.add("approvals", "get", cmd_get)
    c.add_argument("id")
    c.add_argument("--wait", type=float, help="seconds to wait while it is pending (at most 45)")
    for verb, call in (("approve", cmd_approve), ("deny", cmd_deny)):
        c = cli.add("approvals", verb, call, help=f"{verb} a pending approval")
        c.add_argument("id")
        c.add_argument("--reason", help="why, for the record")
    c = cli.add("approvals", "events", cmd_events, help="the approvals' history: who asked, who decided, when")
    c.add_argument("--after-sequence", type=int)
    c.add_argument("--limit", type=int)
