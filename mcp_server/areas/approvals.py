"""Approvals a person gives: their HTTP routes, MCP tools and CLI commands.

A session under `confirm-risky` whose risky call was refused with `approval_required` waits on the
approval its diagnostic names (`GET /api/agent/approvals/{id}?wait=S`, `approval_get`), then repeats
the call. The local user decides on `control.sock` (`agentdock approvals approve|deny`, the HTTP
routes) or in their own `agentdock serve` with `approval_review`, which asks the human through MCP
elicitation and only reports what they answered. A session holding the `approvals` permission decides
for the sessions below it (`approval_approve`, `approval_deny`, the same routes on `agent.sock`)."""

from __future__ import annotations

import dataclasses
from functools import partial

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool

from engine.approvals import models as am
from engine import errors
from engine.app import Engine
from engine.settings import Settings
from mcp_server import commands, mcp_tools, ops
from mcp_server.api import AgentDockAPI
from mcp_server.http import Endpoint
from mcp_server.ops import CHANGE, IDEMPOTENT, Op

NAME = "approvals"
"""The toolset (`--toolsets approvals`) and the permission area (deciding the approvals of the sessions below)."""
op = partial(Op, NAME)
PATH = "/api/v1/approvals"
ONE = PATH + "/{approval_id}"
REVIEWED_BY_PERSON = "the local user, asked through MCP elicitation (approval_review)"

GET = op("approval_get", "Get an approval (apr_... from an approval_required error); with wait_seconds (at most 45), "
         "wait while it is pending. Once approved, repeat the refused call: it goes ahead once.", am.ApprovalWait,
         am.Approval, lambda e, c, i: e.approvals.get(c, i.approval_id, i.wait_seconds), "GET", ONE,
         cli="approvals get", args=("approval_id",), wait="wait_seconds")
LIST = op("approval_list", "List approvals, newest first, optionally by status: every one for the local user; for a "
          "session holding the approvals permission, its own and those of the sessions below it.",
          am.ApprovalListQuery, am.ApprovalList, lambda e, c, i: e.approvals.list(c, i), "GET", PATH,
          cli="approvals list", columns=("id", "status", "session_id", "summary", "expires_at", "decided_by"))
APPROVE = op("approval_approve", "Approve a pending approval of a session below you (needs the approvals permission; "
             "never your own): that session's same call then goes ahead once.", am.DecisionInput, am.Approval,
             lambda e, c, i: e.approvals.approve(c, i.approval_id, am.Decision(reason=i.reason)),
             "POST", ONE + "/approve", IDEMPOTENT, cli="approvals approve", args=("approval_id",))
DENY = op("approval_deny", "Deny a pending approval of a session below you (needs the approvals permission; never "
          "your own): that session's same call stays refused.", am.DecisionInput, am.Approval,
          lambda e, c, i: e.approvals.deny(c, i.approval_id, am.Decision(reason=i.reason)),
          "POST", ONE + "/deny", IDEMPOTENT, cli="approvals deny", args=("approval_id",))
EVENTS = op("approval_events", "The approvals' history: who asked, who decided, when.", am.ApprovalEventsQuery,
            am.ApprovalEventList, lambda e, c, i: e.approvals.events(c, i), "GET", "/api/v1/approval-events",
            tool=False, cli="approvals events", columns=("sequence", "type", "message", "created_at"))
OPS = (GET, LIST, APPROVE, DENY, EVENTS)
COMMANDS = {"approvals": "approvals a person gives: list, get, approve, deny, events"}


def endpoints(engine: Engine) -> list[Endpoint]:
    """A session waits on its approval at seed 002's agent path too."""
    return [ops.endpoint(dataclasses.replace(GET, path="/api/agent/approvals/{approval_id}"), engine)]


def tools(api: AgentDockAPI, settings: Settings) -> list[Tool]:
    async def approval_review(inp: am.Review, ctx: Context) -> am.ReviewResult:
        return await review(api, ctx, inp)

    return [mcp_tools.make_tool(
        "approval_review", "Ask the user (MCP elicitation) to approve or deny pending approvals of agent sessions; the "
        "user answers, and this reports what they decided.", am.Review, am.ReviewResult, approval_review, CHANGE)]


async def review(api: AgentDockAPI, ctx: Context, inp: am.Review) -> am.ReviewResult:
    """Ask the person about each pending approval (one, or up to `MAX_REVIEW`), then approve or deny what
    they answered: ticked approves, unticked or declined denies, dismissed leaves it pending."""
    if inp.approval_id is not None:
        one = await api.call(GET, approval_id=inp.approval_id)
        if one.status is not am.ApprovalStatus.pending:
            raise errors.InvalidTransition(f"approval {one.id} is {one.status.value}; only a pending approval is "
                                           "reviewed", evidence={"approval_id": one.id, "status": one.status.value})
        pending = [one]
    else:
        q = am.ApprovalListQuery(status=am.ApprovalStatus.pending, limit=am.MAX_REVIEW)
        pending = (await api.call(LIST, q)).data
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
            try:
                approval = await api.call(APPROVE if verdict == "approve" else DENY, approval_id=approval.id,
                                          reason=REVIEWED_BY_PERSON)
            except errors.InvalidTransition:  # decided elsewhere, or expired, while the person was asked
                approval = await api.call(GET, approval_id=approval.id)
        out.append(am.Reviewed(approval_id=approval.id, session_id=approval.session_id, summary=approval.summary,
                               answer=verdict, status=approval.status))
    return am.ReviewResult(data=out)


def _question(approval: am.Approval) -> str:
    """What the person reads: written by agentdock from checked values (ids, a profile, the summary)."""
    return (f"agentdock: session {approval.session_id} (workspace {approval.workspace_id}, profile "
            f"{approval.profile_id or 'none'}) asks to {commands.safe(approval.summary)}. Approve it? "
            f"(approval {approval.id}; it expires at {approval.expires_at.isoformat()})")
