"""`approval_review` in the local user's own MCP server: the person at the client answers each pending
approval through MCP elicitation (both protocol eras), and the tool only reports what they decided.
The model gets no tool that decides by itself; a session's server gets no review tool."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import ElicitResult

from engine.approvals import models as am
from engine import errors
from engine.groups import models as gm
from engine.callers import ROOT
from mcp_server import mcp_app
from mcp_server.api import InProcessAPI
from tests.conftest import tool_error
from tests.unit.test_approvals import careful_profile, engine_for, session

pytestmark = pytest.mark.anyio


async def two_pending(engine) -> tuple[str, list[str]]:
    await careful_profile(engine)
    child = await session(engine)
    asked = []
    for name in ("a", "b"):
        group = await engine.groups.create(child, gm.GroupCreate(name=name))
        with pytest.raises(errors.ApprovalRequired) as caught:
            await engine.groups.cancel(child, group.id)
        asked.append(caught.value.evidence["approval_id"])
    return child.session_id, asked


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_person_asked_approves_one_and_declines_the_other(tmp_path, mode):
    async with engine_for(tmp_path).running() as engine:
        child, (first, second) = await two_pending(engine)
        asked: list[str] = []

        async def person(context: Any, params: Any) -> ElicitResult:
            asked.append(params.message)
            return (ElicitResult(action="accept", content={"confirm": True}) if first in params.message
                    else ElicitResult(action="decline"))

        server = mcp_app.build(InProcessAPI(engine, ROOT), engine.settings)
        with anyio.fail_after(20):
            async with Client(server, mode=mode, elicitation_callback=person) as client:
                result = await client.call_tool("approval_review", {})
        states = {a.id: a for a in (await engine.approvals.list(ROOT, am.ApprovalListQuery())).data}

    assert not result.is_error, result.structured_content
    reported = {r["approval_id"]: (r["answer"], r["status"]) for r in result.structured_content["data"]}
    assert reported == {first: ("approve", "approved"), second: ("deny", "denied")}
    assert len(asked) == 2
    assert all(child in m and "cancel group" in m for m in asked)
    assert (states[first].status, states[first].decided_by) == ("approved", "ses_root")
    assert "elicitation" in states[first].reason and states[second].status == "denied"


async def test_a_dismissed_question_leaves_the_approval_pending(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        _, (first, second) = await two_pending(engine)

        async def person(context: Any, params: Any) -> ElicitResult:
            return ElicitResult(action="cancel")

        server = mcp_app.build(InProcessAPI(engine, ROOT), engine.settings)
        with anyio.fail_after(20):
            async with Client(server, mode="legacy", elicitation_callback=person) as client:
                result = await client.call_tool("approval_review", {"approval_id": first})
        status = (await engine.approvals.get(ROOT, first)).status
    assert [(r["approval_id"], r["answer"]) for r in result.structured_content["data"]] == [(first, "skipped")]
    assert status is am.ApprovalStatus.pending


async def test_a_client_that_cannot_ask_decides_nothing(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        _, (first, _second) = await two_pending(engine)
        server = mcp_app.build(InProcessAPI(engine, ROOT), engine.settings)
        with anyio.fail_after(20):
            async with Client(server) as client:
                result = await client.call_tool("approval_review", {})
        pending = (await engine.approvals.list(ROOT, am.ApprovalListQuery(status=am.ApprovalStatus.pending))).data
    assert tool_error(result)["evidence"]["field"] == "elicitation"
    assert len(pending) == 2


async def test_the_users_model_gets_no_deciding_tool_and_a_session_gets_no_review(tmp_path):
    async with engine_for(tmp_path).running() as engine:
        await careful_profile(engine)
        decider = await session(engine, tools=["approvals"], careful=False)
        grants = frozenset(c.id for c in (await engine.sessions.me(decider)).capabilities)
        async with Client(mcp_app.build(InProcessAPI(engine, ROOT), engine.settings)) as client:
            users = {t.name for t in (await client.list_tools()).tools}
        async with Client(mcp_app.build(InProcessAPI(engine, decider), engine.settings, grants=grants)) as client:
            sessions = {t.name for t in (await client.list_tools()).tools}
    assert {"approval_review", "approval_list", "approval_get"} <= users
    assert not users & {"approval_approve", "approval_deny"}
    assert {"approval_approve", "approval_deny", "approval_list", "approval_get"} <= sessions
    assert "approval_review" not in sessions
