"""Sessions end to end: a spawned child running in a real sandbox calls back over `agent.sock` with
its token and sees only itself; tokens, stops and the root's powers are tried from inside the
container and over the socket from the host."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

from tests.conftest import FULL, Daemon, tool_error
from tests.e2e.test_http import http as control

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

AGENT = "python3 /run/agentdock/agentdock-agent"


@asynccontextmanager
async def agent(daemon: Daemon, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.settings.agent_socket))
    headers = {"Authorization": f"Bearer {token}".strip()} if token is not None else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://agentdock", timeout=90,
                                 headers=headers) as client:
        yield client


async def spawn(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await client.post("/api/agent/spawn", json={"agent_name": "worker", **body})
    assert resp.status_code == 201, resp.text
    return resp.json()["spawn"]


async def ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    with anyio.fail_after(120):
        resp = await client.get(f"/api/v1/agent-runs/{run_id}", params={"wait": 90})
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


async def test_a_spawned_child_in_a_real_sandbox_calls_back_as_itself_over_agent_sock(daemon: Daemon):
    async with control(daemon) as root:
        sandbox = (await root.post("/api/v1/sandboxes", json={"image": FULL})).json()["data"]
        script = (f"{AGENT} me; echo ---; ls -a /run/agentdock; echo ---; "
                  f"AGENTDOCK_TOKEN= {AGENT} me || echo refused-without-token; "
                  f"{AGENT} POST /api/agent/spawn '{{\"agent_name\": \"w\", \"permissions\": {{\"tools\": [\"devices\"]}}}}'"
                  f" || echo refused-wider-child; "
                  f"{AGENT} GET /api/v1/sandboxes || echo refused-devices")
        child = await spawn(root, spawn_role="reader", permissions={"tools": ["agent", "runs"]},
                            prompt="p", command=script, target_id=sandbox["id"])
        run = await ended(root, child["run"]["id"])

    assert run["status"] == "succeeded", run
    me_text, listing, last = run["output"].split("---\n")
    me = json.loads(me_text)["me"]
    assert me["session"]["id"] == child["session"]["id"]
    assert me["self"]["session_id"] == child["session"]["id"]
    assert me["session"]["lineage"]["parent_session_id"] == "ses_root"
    assert me["session"]["lineage"]["spawn_role"] == "reader"
    assert {c["id"] for c in me["capabilities"]} >= {"agent_me", "agent_run_get"}
    assert "sandbox_create" not in {c["id"] for c in me["capabilities"]}
    assert set(listing.split()) == {".", "..", "agent.sock", "agentdock-agent"}  # no control.sock in there
    assert "refused-without-token" in last and "unauthenticated" in run["stderr"]
    assert "refused-wider-child" in last and "permissions.tools: 'devices'" in run["stderr"]
    assert "refused-devices" in last and "permission_denied" in run["stderr"]
    assert child["token"] not in run["output"] + run["stderr"]


async def test_the_agent_socket_refuses_missing_bad_and_ended_tokens_and_never_acts_as_root(daemon: Daemon):
    sock = daemon.settings.agent_socket
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666  # any uid in a sandbox connects; the token decides
    assert stat.S_IMODE(os.stat(daemon.settings.control_socket).st_mode) == 0o600

    async with control(daemon) as root:
        child = await spawn(root, permissions={"tools": ["agent"]})

    for token in (None, "", "adt_" + "0" * 64, child["token"] + "x", "x" * 5000):
        async with agent(daemon, token) as c:
            resp = await c.get("/api/agent/me")
            assert resp.status_code == 401, resp.text
            assert resp.json()["diagnostic"]["code"] == "unauthenticated"
            resp = await c.post("/api/v1/sandboxes", json={})
            assert resp.status_code == 401, resp.text

    async with agent(daemon, child["token"]) as c:
        assert (await c.get("/api/agent/me")).json()["me"]["session"]["id"] == child["session"]["id"]
        for method, path, body in (("POST", "/api/v1/sandboxes", {}), ("GET", "/api/v1/agent-runs", None),
                                   ("POST", "/api/v1/agent-runs", {"prompt": "p", "command": "true"})):
            resp = await c.request(method, path, json=body)
            assert resp.status_code == 403, (path, resp.text)
            assert resp.json()["diagnostic"]["code"] == "permission_denied"
        widen = await c.post("/api/agent/spawn", json={"agent_name": "w", "permissions": {"tools": ["devices"]}})
        assert widen.status_code == 403 and "permissions.tools" in widen.text
        stop_root = await c.post("/api/v1/sessions/ses_root/stop")
        assert stop_root.status_code in (400, 404), stop_root.text

    async with control(daemon) as root:
        sessions = (await root.get("/api/v1/sessions")).json()["data"]
        assert [s["id"] for s in sessions] == ["ses_root", child["session"]["id"]]  # nothing written
        assert (await root.post(f"/api/v1/sessions/{child['session']['id']}/stop")).status_code == 200
        assert (await root.get("/api/v1/sandboxes")).json()["data"] == []

    async with agent(daemon, child["token"]) as c:
        resp = await c.get("/api/agent/me")
        assert resp.status_code == 401 and "stopped" in resp.json()["diagnostic"]["message"]


async def test_stopping_a_parent_cancels_its_auto_stopping_childs_run_in_a_real_sandbox(daemon: Daemon):
    async with control(daemon) as root:
        parent = await spawn(root, permissions={"tools": ["agent", "runs"]})
        async with agent(daemon, parent["token"]) as p:
            child = await spawn(p, prompt="p", command="echo started; sleep 300")
        run_id = child["run"]["id"]
        after, output = 0, ""
        with anyio.fail_after(90):
            while "started" not in output:  # long-poll the run's events until its first output
                page = (await root.get(f"/api/v1/agent-runs/{run_id}/events",
                                       params={"after": after, "wait": 30})).json()
                after = page["next_after_sequence"]
                output += "".join(e["payload"].get("text", "") for e in page["data"] if e["type"] == "output")

        stopped = await root.post(f"/api/v1/sessions/{parent['session']['id']}/stop")
        assert stopped.status_code == 200, stopped.text
        run = await ended(root, run_id)
        child_now = (await root.get(f"/api/v1/sessions/{child['session']['id']}")).json()["data"]

    assert (run["status"], run["failure_kind"]) == ("canceled", "canceled"), run
    assert (child_now["state"], child_now["stop_reason"]) == ("stopped", "parent_stopped")


async def test_agentdock_serve_with_a_token_lists_only_the_tools_the_session_may_use(daemon: Daemon):
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    from tests.conftest import AGENTDOCK

    async with control(daemon) as root:
        child = await spawn(root, permissions={"tools": ["agent_run_get"]})
        spawner = await spawn(root, permissions={"tools": ["agent"]})
    env = {**daemon.env, "AGENTDOCK_TOKEN": child["token"]}
    with anyio.fail_after(60):
        async with Client(StdioServerParameters(command=AGENTDOCK, args=["serve"], env=env)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            me = await client.call_tool("agent_me", {})
    assert names == {"agent_run_get", "agent_me", "approval_get"}  # who it is and the approvals it waits on
    assert not me.is_error and me.structured_content["session"]["id"] == child["session"]["id"]

    env = {**daemon.env, "AGENTDOCK_TOKEN": spawner["token"]}
    with anyio.fail_after(60):
        async with Client(StdioServerParameters(command=AGENTDOCK, args=["serve"], env=env)) as client:
            wider = await client.call_tool("agent_spawn", {"agent_name": "w", "permissions": {"tools": ["runs"]}})
            own = await client.call_tool("agent_spawn", {"agent_name": "w", "ttl_seconds": 60})
    assert tool_error(wider)["code"] == "permission_denied"
    assert not own.is_error and own.structured_content["lineage"]["parent_session_id"] == spawner["session"]["id"]


async def test_a_short_real_ttl_ends_the_session_and_cancels_its_run(daemon: Daemon):
    async with control(daemon) as root:
        child = await spawn(root, ttl_seconds=3, prompt="p", command="sleep 300")
        run = await ended(root, child["run"]["id"])
        session = (await root.get(f"/api/v1/sessions/{child['session']['id']}")).json()["data"]
    assert (run["status"], run["failure_kind"]) == ("canceled", "canceled"), run
    assert (session["state"], session["stop_reason"]) == ("expired", "ttl_expired")
    async with agent(daemon, child["token"]) as c:
        assert (await c.get("/api/agent/me")).status_code == 401


def test_the_cli_spawns_lists_and_stops_sessions_and_refuses_a_wider_child(daemon: Daemon):
    spawned = json.loads(daemon.cli("spawn", "helper", "--tools", "agent,runs", "--role", "scout", "--json").stdout)
    sid = spawned["session"]["id"]
    assert spawned["lineage"]["spawn_role"] == "scout" and spawned["token"].startswith("adt_")
    listed = json.loads(daemon.cli("sessions", "list", "--json").stdout)["data"]
    assert [s["id"] for s in listed] == ["ses_root", sid]
    table = daemon.cli("sessions", "list").stdout
    assert sid in table and "helper" in table

    as_child = {**daemon.env, "AGENTDOCK_TOKEN": spawned["token"]}
    import subprocess

    from tests.conftest import AGENTDOCK
    wider = subprocess.run([AGENTDOCK, "spawn", "deeper", "--tools", "devices", "--json"], env=as_child,
                           capture_output=True, text=True, timeout=60)
    assert wider.returncode == 1 and "Traceback" not in wider.stderr
    assert json.loads(wider.stdout)["diagnostic"]["code"] == "permission_denied"

    stopped = json.loads(daemon.cli("sessions", "stop", sid, "--json").stdout)
    assert (stopped["state"], stopped["stop_reason"]) == ("stopped", "stopped")
    bad = daemon.cli("sessions", "get", "../sandboxes", "--json", check=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["diagnostic"]["evidence"]["field"] == "session_id"
