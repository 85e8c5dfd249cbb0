"""The task queue end to end through the real daemon: the local user queues a task on control.sock, a
spawned session claims and completes it over agent.sock with its bearer token, and another session's
token is refused on that claim; the CLI drives the same queue."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import AGENTDOCK, Daemon
from tests.e2e.test_agent_socket import agent, spawn
from tests.e2e.test_http import http as control

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_a_session_claims_and_completes_over_agent_sock_and_another_sessions_token_is_refused(daemon: Daemon):
    async with control(daemon) as root:
        task = (await root.post("/api/v1/tasks", json={"title": "review", "priority": 2,
                                                       "payload": {"pr": 7}})).json()["data"]
        worker = await spawn(root, permissions={"tools": ["tasks"]})
        other = await spawn(root, permissions={"tools": ["tasks"]})
    async with agent(daemon, worker["token"]) as w, agent(daemon, other["token"]) as o:
        claimed = await w.post("/api/agent/tasks/claim-next", json={"lease_seconds": 60})
        assert claimed.status_code == 200, claimed.text
        claim = claimed.json()["claim"]
        run_id, token = claim["run"]["id"], claim["claim_token"]
        stolen = await o.post(f"/api/agent/tasks/{run_id}/complete", json={"claim_token": token})
        beat = await w.post(f"/api/agent/tasks/{run_id}/heartbeat", json={"claim_token": token})
        done = await w.post(f"/api/agent/tasks/{run_id}/complete", json={"claim_token": token, "result": "ok"})
        twice = await w.post(f"/api/agent/tasks/{run_id}/complete", json={"claim_token": token})
        seen = await w.get(f"/api/v1/tasks/{task['id']}")
    assert (claim["task"]["id"], claim["lease"]["session_id"], claim["run"]["attempt"]) == (
        task["id"], worker["session"]["id"], 1)
    assert token.startswith("tct_") and claim["lease"]["claim_token_hash"] != token
    assert stolen.status_code == 403 and stolen.json()["diagnostic"]["evidence"]["field"] == "task_run_id", stolen.text
    assert beat.status_code == 200 and beat.json()["lease"]["status"] == "running"
    assert done.status_code == 200 and done.json()["task"]["status"] == "completed", done.text
    assert twice.status_code == 409 and twice.json()["diagnostic"]["code"] == "invalid_transition"
    assert seen.json()["data"]["result"] == "ok" and [r["status"] for r in seen.json()["data"]["runs"]] == ["completed"]


def test_the_cli_creates_claims_and_completes_a_task_and_refuses_bad_input(daemon: Daemon):
    created = json.loads(daemon.cli("tasks", "create", "build", "--priority", "3", "--payload", '{"x": 1}',
                                    "--json").stdout)
    claim = json.loads(daemon.cli("tasks", "claim", "--lease-seconds", "30", "--json").stdout)["claim"]
    assert claim["task"]["id"] == created["id"]
    done = json.loads(daemon.cli("tasks", "complete", claim["run"]["id"], "--claim-token", claim["claim_token"],
                                 "--json").stdout)
    assert done["task"]["status"] == "completed"
    listed = json.loads(daemon.cli("tasks", "list", "--json").stdout)["data"]
    assert [(t["id"], t["status"]) for t in listed] == [(created["id"], "completed")]
    for args, field in ((["create", "t", "--priority", "-1"], "priority"), (["create", "t", "--max-attempts", "0"],
                                                                              "max_attempts"),
                        (["claim", "--wait-seconds", "1000"], "wait_seconds")):
        bad = subprocess.run([AGENTDOCK, "tasks", *args, "--json"], env=daemon.env, capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
        assert json.loads(bad.stdout)["diagnostic"]["evidence"]["field"] == field
    assert len(json.loads(daemon.cli("tasks", "list", "--json").stdout)["data"]) == 1  # nothing written
