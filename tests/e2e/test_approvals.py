"""Approvals a person gives (issue 16, part 3), end to end on a real daemon.

A child under a `confirm-risky` profile runs as a Python script in a real sandbox and calls agent.sock
with its token, as an agent would: sending its own `X-Agentdock-Approved` header approves nothing (it
deleted and cancelled before), it cannot approve itself, and it waits on the approval its refusal
names until the local user decides (the CLI, the HTTP API on control.sock, or `approval_review` in
their own `agentdock serve`, which asks the human through MCP elicitation). A coordinator granted the
`approvals` permission decides for its own child over agent.sock; a session's own `agentdock serve`
never asks its own client, it reports `approval_required`."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp_types import ElicitResult

from engine.channels import models as cm
from tests.conftest import AGENTDOCK, FULL, Daemon, tool_error
from tests.e2e.test_agent_socket import agent, ended, spawn
from tests.e2e.test_http import diagnostic, http as control
from tests.e2e.test_mcp import call

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("quiet_daemon")]  # and its log clean

PROFILES = "/api/v1/agent-runtime-profiles"
GROUPS = "/api/v1/agent-run-groups"

CALLER = r'''
import http.client, json, os, socket


class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.environ["AGENTDOCK_SOCKET"])


def call(method, path, body=None, headers=None):
    conn = Unix("agentdock", timeout=120)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Authorization": "Bearer " + os.environ["AGENTDOCK_TOKEN"],
                          "Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    return [resp.status, json.loads(resp.read())]


def approval_id(answer):
    return answer[1]["diagnostic"]["evidence"]["approval_id"]


def report(body):
    channel = call("GET", "/api/agent/context")[1]["context"]["coordination_channel"]["channel"]["id"]
    call("POST", f"/api/agent/channels/{channel}/send", {"body": body})


def decided(approval):
    for _ in range(10):  # each wait is bounded by the daemon (45 s); a person may take longer
        data = call("GET", f"/api/agent/approvals/{approval}?wait=45")[1]["data"]
        if data["status"] != "pending":
            return data
    raise SystemExit(f"nobody decided {approval}")
'''

SELF_APPROVER = CALLER + r'''
HEADER = {"X-Agentdock-Approved": "user"}
out = {}
box = call("POST", "/api/v1/sandboxes", {})[1]["data"]["id"]
group = call("POST", "/api/v1/agent-run-groups", {"name": "g"})[1]["data"]["id"]
out["delete"] = call("DELETE", f"/api/v1/sandboxes/{box}", headers=HEADER)
out["cancel"] = call("POST", f"/api/v1/agent-run-groups/{group}/cancel", headers=HEADER)
delete, cancel = approval_id(out["delete"]), approval_id(out["cancel"])
out["self_approve"] = call("POST", f"/api/v1/approvals/{delete}/approve", {"reason": "me"}, headers=HEADER)
out["self_list"] = call("GET", "/api/v1/approvals")
report({"delete": delete, "cancel": cancel, "box": box, "group": group})
out["delete_decided"], out["cancel_decided"] = decided(delete), decided(cancel)
out["delete_again"] = call("DELETE", f"/api/v1/sandboxes/{box}")
out["cancel_again"] = call("POST", f"/api/v1/agent-run-groups/{group}/cancel")
print(json.dumps(out))
'''

WORKER = CALLER + r'''
out = {}
group = call("POST", "/api/v1/agent-run-groups", {"name": "g"})[1]["data"]["id"]
out["cancel"] = call("POST", f"/api/v1/agent-run-groups/{group}/cancel")
report({"cancel": approval_id(out["cancel"]), "group": group})
out["decided"] = decided(approval_id(out["cancel"]))
out["cancel_again"] = call("POST", f"/api/v1/agent-run-groups/{group}/cancel")
print(json.dumps(out))
'''


async def careful_profile(client: httpx.AsyncClient) -> str:
    """Under it a session's risky calls wait for a person; its devices run the image with Python."""
    made = await client.post(PROFILES, json={"name": "careful", "runtime": "custom", "image": FULL,
                                             "policy": {"approval": "confirm-risky"}})
    assert made.status_code == 201, made.text
    return made.json()["data"]["id"]


async def first_report(client: httpx.AsyncClient, channel: str, sender: str) -> dict[str, Any]:
    """The first message `sender` sent on `channel`, waited for on the daemon (long-poll)."""
    with anyio.fail_after(120):
        while True:
            page = await client.get(f"/api/agent/channels/{channel}/recv", params={"wait": "true",
                                                                                 "wait_seconds": 20})
            assert page.status_code == 200, page.text
            for message in page.json()["messages"]:
                if message["from_session_id"] == sender:
                    return message["body"]


def output(run: dict[str, Any]) -> dict[str, Any]:
    assert run["status"] == "succeeded", (run["output"], run["stderr"])
    return json.loads(run["output"].strip().splitlines()[-1])


async def test_a_session_in_a_real_sandbox_cannot_approve_itself_and_goes_ahead_once_a_person_approves(
        daemon: Daemon):
    async with control(daemon) as root:
        profile = await careful_profile(root)
        child = await spawn(root, agent_runtime_profile_id=profile, prompt=SELF_APPROVER, command="python3 -",
                            permissions={"tools": ["agent", "devices", "groups", "channels"],
                                         "sandbox_profiles": ["*"]})
        asked = await first_report(root, cm.channel_id(cm.family_name("ses_root")), child["session"]["id"])
        pending = (await root.get("/api/v1/approvals", params={"status": "pending"})).json()["data"]
        approved = daemon.cli("approvals", "approve", asked["delete"], "--reason", "tidy up", "--json")
        denied = await root.post(f"/api/v1/approvals/{asked['cancel']}/deny", json={"reason": "keep it"})
        run = await ended(root, child["run"]["id"])
        box = await root.get(f"/api/v1/sandboxes/{asked['box']}")
        group = (await root.get(f"{GROUPS}/{asked['group']}")).json()["data"]
    events = json.loads(daemon.cli("approvals", "events", "--json").stdout)["data"]
    out = output(run)

    for refused in (out["delete"], out["cancel"]):  # its own header changed nothing (it used to: 200)
        assert refused[0] == 403 and refused[1]["diagnostic"]["code"] == "approval_required", refused
        assert refused[1]["diagnostic"]["evidence"]["wait"].startswith("/api/agent/approvals/apr_")
    assert out["self_approve"][0] == 403 and out["self_approve"][1]["diagnostic"]["code"] == "permission_denied"
    assert out["self_list"][0] == 403
    assert {a["id"]: a["session_id"] for a in pending} == {asked["delete"]: child["session"]["id"],
                                                            asked["cancel"]: child["session"]["id"]}
    assert json.loads(approved.stdout)["status"] == "approved" and denied.status_code == 200, denied.text
    assert (out["delete_decided"]["status"], out["delete_decided"]["decided_by"],
            out["delete_decided"]["reason"]) == ("approved", "ses_root", "tidy up")
    assert (out["cancel_decided"]["status"], out["cancel_decided"]["reason"]) == ("denied", "keep it")
    assert out["delete_again"][0] == 200, out["delete_again"]
    assert out["cancel_again"][0] == 403 and out["cancel_again"][1]["diagnostic"]["code"] == "approval_denied"
    assert box.status_code == 404 and group["status"] != "canceled"
    assert [(e["type"], e["payload"]["approval_id"]) for e in events] == [
        ("approval_requested", asked["delete"]), ("approval_requested", asked["cancel"]),
        ("approval_approved", asked["delete"]), ("approval_denied", asked["cancel"]),
        ("approval_used", asked["delete"])]
    assert [e["payload"].get("decided_by") for e in events[2:4]] == ["ses_root", "ses_root"]


async def test_a_coordinator_granted_approvals_decides_for_its_child_in_a_real_sandbox_and_nobody_else_does(
        daemon: Daemon):
    async with control(daemon) as root:
        profile = await careful_profile(root)
        lead = await spawn(root, skip_agent_runtime_profile=True, permissions={
            "tools": ["agent", "runs", "groups", "channels", "approvals"], "sandbox_profiles": ["*"]})
        stranger = await spawn(root, skip_agent_runtime_profile=True, permissions={"tools": ["approvals"]})
        async with agent(daemon, lead["token"]) as coordinator:
            worker = await spawn(coordinator, agent_runtime_profile_id=profile, prompt=WORKER, command="python3 -",
                                 permissions={"tools": ["agent", "groups", "channels"], "sandbox_profiles": ["*"]})
            asked = await first_report(coordinator, cm.channel_id(cm.family_name(lead["session"]["id"])),
                                       worker["session"]["id"])
            async with agent(daemon, stranger["token"]) as other:
                beside = await other.post(f"/api/v1/approvals/{asked['cancel']}/approve", json={})
            async with agent(daemon, worker["token"]) as itself:
                own = await itself.post(f"/api/v1/approvals/{asked['cancel']}/approve", json={})
            seen = (await coordinator.get("/api/v1/approvals")).json()["data"]
            decided = await coordinator.post(f"/api/v1/approvals/{asked['cancel']}/approve",
                                             json={"reason": "lead's call"})
            history = await coordinator.get("/api/v1/approval-events")
        run = await ended(root, worker["run"]["id"])
    out = output(run)

    assert diagnostic(beside, 404)["evidence"]["field"] == "approval_id"  # not below it: it learns nothing
    assert diagnostic(own, 403)["code"] == "permission_denied"
    assert [a["id"] for a in seen] == [asked["cancel"]]
    assert decided.status_code == 200, decided.text
    assert (out["decided"]["status"], out["decided"]["decided_by"], out["decided"]["reason"]) == (
        "approved", lead["session"]["id"], "lead's call")
    assert out["cancel_again"][0] == 200 and out["cancel_again"][1]["data"]["status"] == "canceled"
    assert diagnostic(history, 403)["code"] == "permission_denied"  # the audit trail is the local user's


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_person_approves_in_their_own_serve_while_the_sessions_serve_asks_no_one(daemon: Daemon,
                                                                                           mode: str):
    async with control(daemon) as root:
        profile = await careful_profile(root)
        child = await spawn(root, agent_runtime_profile_id=profile)
    asked_session: list[Any] = []
    asked_person: list[str] = []

    async def session_client_answers(context: Any, params: Any) -> ElicitResult:
        asked_session.append(params)  # its own agent could answer here: it must never be asked
        return ElicitResult(action="accept", content={"confirm": True})

    async def person_answers(context: Any, params: Any) -> ElicitResult:
        asked_person.append(params.message)
        return ElicitResult(action="accept", content={"confirm": True})

    as_session = StdioServerParameters(command=AGENTDOCK, args=["serve"],
                                       env={**daemon.env, "AGENTDOCK_TOKEN": child["token"]})
    as_user = StdioServerParameters(command=AGENTDOCK, args=["serve"], env=daemon.env)
    with anyio.fail_after(90):
        async with Client(as_session, mode=mode, elicitation_callback=session_client_answers) as agent_side:
            group = await call(agent_side, "group_create", {"name": "g"})
            refused = await agent_side.call_tool("group_cancel", {"group_id": group["id"]})
            diag = tool_error(refused)
            approval = diag["evidence"]["approval_id"]
            async with Client(as_user, mode=mode, elicitation_callback=person_answers) as user_side:
                user_tools = {t.name for t in (await user_side.list_tools()).tools}
                reviewed = await call(user_side, "approval_review", {})
            waited = await call(agent_side, "approval_get", {"approval_id": approval, "wait_seconds": 5})
            canceled = await call(agent_side, "group_cancel", {"group_id": group["id"]})
            session_tools = {t.name for t in (await agent_side.list_tools()).tools}

    assert refused.is_error and diag["code"] == "approval_required" and asked_session == []
    assert [(r["approval_id"], r["answer"], r["status"]) for r in reviewed["data"]] == [
        (approval, "approve", "approved")]
    assert len(asked_person) == 1 and child["session"]["id"] in asked_person[0]
    assert f"cancel group {group['id']}" in asked_person[0]
    assert (waited["status"], waited["decided_by"]) == ("approved", "ses_root")
    assert canceled["status"] == "canceled"
    assert "approval_review" in user_tools and not {"approval_approve", "approval_deny"} & user_tools
    assert "approval_get" in session_tools and "approval_review" not in session_tools
