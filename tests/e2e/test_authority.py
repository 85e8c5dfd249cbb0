"""Authority that holds (issue 16), tried as an attacker would: from a session spawned into a real
sandbox, calling agent.sock with its token (and its children's). Another workspace is out of reach of
every create; a grandchild that opts out of its parent's profile keeps every limit of it; spawns
racing their parent's stop leave nothing live under it; a request with two Authorization headers is
refused. The engine-level cases are in tests/unit/test_authority.py and test_session_tree.py."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from engine.secrets import SecretStore
from engine.tokens import Tokens
from tests.conftest import FULL, Daemon
from tests.e2e.test_agent_socket import agent, ended, spawn
from tests.e2e.test_http import http as control

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

PROFILES = "/api/v1/agent-runtime-profiles"
GROUPS = "/api/v1/agent-run-groups"

CLIENT = r'''
import http.client, json, os, socket, sys, threading, time


class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.environ["AGENTDOCK_SOCKET"])


def call(method, path, body=None, token=None):
    conn = Unix("agentdock", timeout=120)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Authorization": "Bearer " + (token or os.environ["AGENTDOCK_TOKEN"]),
                          "Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read()
    return resp.status, json.loads(text) if text else None


out = {}


def attempt(name, method, path, body=None, token=None):
    """Record what the daemon answered: the status, and the diagnostic's code and field when refused."""
    status, data = call(method, path, body, token)
    diag = (data or {}).get("diagnostic") or {}
    out[name] = [status, diag.get("code"), (diag.get("evidence") or {}).get("field")]
    return data
'''

ESCAPE = CLIENT + r'''
attempt("group_create", "POST", "/api/v1/agent-run-groups", {"name": "g", "workspace_id": "B"})
attempt("agent_spawn", "POST", "/api/agent/spawn", {"agent_name": "w", "workspace_id": "B"})
attempt("agent_run", "POST", "/api/v1/agent-runs", {"prompt": "p", "command": "true", "workspace_id": "B"})
attempt("task_create", "POST", "/api/v1/tasks", {"title": "t", "workspace_id": "B"})
attempt("profile_create", "POST", "/api/v1/agent-runtime-profiles",
        {"name": "mine", "runtime": "custom", "workspace_id": "B", "network": True, "is_default": True})
attempt("sandbox_create", "POST", "/api/v1/sandboxes", {"workspace_id": "B", "network": True})
own = attempt("own_group", "POST", "/api/v1/agent-run-groups", {"name": "mine"})
attempt("group_dispatch", "POST", "/api/v1/agent-run-groups/" + own["data"]["id"] + "/dispatch",
        {"async": True, "runs": [{"prompt": "p", "command": "echo $B_KEY | base64", "workspace_id": "B"}]})
claim = attempt("claim", "POST", "/api/agent/tasks/claim-next", {"lease_seconds": 30})
listed = attempt("task_list", "GET", "/api/v1/tasks")
profiles = attempt("profile_list", "GET", "/api/v1/agent-runtime-profiles")
attempt("profile_update", "PUT", "/api/v1/agent-runtime-profiles/" + os.environ["B_PROFILE"], {"network": True})
for kind, path in (("run", "/api/v1/agent-runs/" + os.environ["B_RUN"]),
                   ("group", "/api/v1/agent-run-groups/" + os.environ["B_GROUP"])):
    attempt(kind + "_get", "GET", path)
    attempt(kind + "_events", "GET", path + "/events")
    attempt(kind + "_stream", "GET", path + "/events?stream=true")
out["claimed"] = claim["claim"]
out["tasks_seen"] = [t["workspace_id"] for t in listed["data"]]
out["profiles_seen"] = [p["id"] for p in profiles["data"]]
print(json.dumps(out))
'''


async def test_a_session_in_a_sandbox_creates_nothing_in_another_workspace_and_reads_nothing_of_it(daemon: Daemon):
    SecretStore(daemon.settings.secrets_dir).set("B_KEY", b"b-workspace-secret-value-0123456789")
    async with control(daemon) as root:
        b_profile = (await root.post(PROFILES, json={
            "name": "b-default", "runtime": "custom", "workspace_id": "B", "is_default": True,
            "secrets": ["B_KEY"]})).json()["data"]
        b_task = (await root.post("/api/v1/tasks", json={"title": "private", "workspace_id": "B"})).json()["data"]
        b_run = (await root.post("/api/v1/agent-runs", params={"wait": 30}, json={
            "prompt": "p", "command": "echo private", "workspace_id": "B"})).json()["data"]
        b_group = (await root.post(GROUPS, json={"name": "private", "workspace_id": "B"})).json()["data"]
        sandbox = (await root.post("/api/v1/sandboxes", json={"image": FULL})).json()["data"]
        child = await spawn(root, workspace_id="A", permissions={
            "tools": ["agent", "runs", "groups", "tasks", "profiles", "devices"], "sandbox_profiles": ["*"]},
            prompt=ESCAPE, command=f"B_PROFILE={b_profile['id']} B_RUN={b_run['id']} B_GROUP={b_group['id']} "
                                   "python3 -", target_id=sandbox["id"])
        run = await ended(root, child["run"]["id"])
        sessions = (await root.get("/api/v1/sessions")).json()["data"]
        groups = (await root.get(GROUPS)).json()["data"]
        runs = (await root.get("/api/v1/agent-runs")).json()["data"]
        task = (await root.get(f"/api/v1/tasks/{b_task['id']}")).json()["data"]
        profile = (await root.get(f"{PROFILES}/{b_profile['id']}")).json()["data"]
        sandboxes = (await root.get("/api/v1/sandboxes")).json()["data"]

    assert run["status"] == "succeeded", run
    assert b_run["status"] == "succeeded", b_run
    seen = json.loads(run["output"])
    for name, field in (("group_create", "workspace_id"), ("agent_spawn", "workspace_id"),
                        ("agent_run", "workspace_id"), ("task_create", "workspace_id"),
                        ("profile_create", "workspace_id"), ("sandbox_create", "workspace_id"),
                        ("group_dispatch", "runs.0.workspace_id")):
        assert seen[name] == [403, "permission_denied", field], (name, seen[name])
    for kind in ("run", "group"):  # the other workspace's records, their events and their streams
        for read in ("get", "events", "stream"):
            assert seen[f"{kind}_{read}"][:2] == [404, "not_found"], (kind, read, seen[f"{kind}_{read}"])
    assert seen["own_group"][0] == 201 and seen["profile_update"][:2] == [404, "not_found"]
    assert seen["claimed"] is None and seen["tasks_seen"] == [] and b_profile["id"] not in seen["profiles_seen"]
    assert [s["workspace_id"] for s in sessions] == ["default", "A"]  # the root and the child, nothing in B
    assert sorted(g["workspace_id"] or "" for g in groups) == ["", "B"]
    assert sorted(r["id"] for r in runs) == sorted([run["id"], b_run["id"]])
    assert (task["status"], task["runs"]) == ("queued", [])
    assert (profile["network"], profile["is_default"], profile["updated_at"]) == (
        False, True, b_profile["updated_at"])
    assert [s["id"] for s in sandboxes] == [sandbox["id"]]


OPT_OUTS = CLIENT + r'''
mode = os.environ["MODE"]
for opt, body in (("none", {}), ("skip", {"skip_agent_runtime_profile": True})):
    g = attempt(opt + ".spawn", "POST", "/api/agent/spawn", {"agent_name": "g", **body})["spawn"]
    token = g["token"]
    me = attempt(opt + ".me", "GET", "/api/agent/me", token=token)["me"]
    out[opt + ".limits"] = me["session"].get("effective_limits")
    if mode == "closed":
        attempt(opt + ".networked", "POST", "/api/v1/sandboxes", {"network": True}, token=token)
        made = attempt(opt + ".sandbox", "POST", "/api/v1/sandboxes", {}, token=token)["data"]
        out[opt + ".made"] = [made["network"], made["memory_mb"]]
        attempt(opt + ".bigger", "POST", "/api/v1/sandboxes", {"memory_mb": 1024}, token=token)
        attempt(opt + ".delete", "DELETE", "/api/v1/sandboxes/" + made["id"], token=token)
    else:
        attempt(opt + ".run", "POST", "/api/v1/agent-runs", {"prompt": "p", "command": "true"}, token=token)
        attempt(opt + ".sandbox", "POST", "/api/v1/sandboxes", {}, token=token)
        attempt(opt + ".spawn_run", "POST", "/api/agent/spawn", {"agent_name": "h", "prompt": "p", "command": "true"},
                token=token)
print(json.dumps(out))
'''


async def test_a_grandchild_that_opts_out_of_its_parents_profile_keeps_every_limit_of_it(daemon: Daemon):
    async with control(daemon) as root:
        await root.post(PROFILES, json={"name": "open-default", "runtime": "custom", "is_default": True,
                                        "network": True})  # what a spawn naming no profile gets
        closed = (await root.post(PROFILES, json={
            "name": "closed", "runtime": "custom", "network": False, "tools": ["exec", "files"],
            "policy": {"approval": "confirm-risky"}, "resources": {"memory_mb": 256}})).json()["data"]
        files = (await root.post(PROFILES, json={"name": "files", "runtime": "custom", "network": False,
                                                 "tools": ["files"]})).json()["data"]
        sandbox = (await root.post("/api/v1/sandboxes", json={"image": FULL, "network": False})).json()["data"]
        outputs = {}
        for mode, profile in (("closed", closed), ("files", files)):
            child = await spawn(root, agent_runtime_profile_id=profile["id"], prompt=OPT_OUTS,
                                command=f"MODE={mode} python3 -", target_id=sandbox["id"],
                                permissions={"tools": ["agent", "runs", "devices"], "sandbox_profiles": ["*"]})
            run = await ended(root, child["run"]["id"])
            assert run["status"] == "succeeded", run
            outputs[mode] = json.loads(run["output"])
        sandboxes = (await root.get("/api/v1/sandboxes")).json()["data"]
        runs = (await root.get("/api/v1/agent-runs")).json()["data"]

    closed_out, files_out = outputs["closed"], outputs["files"]
    for opt in ("none", "skip"):
        assert closed_out[f"{opt}.limits"] == {
            "network": False, "tools": ["exec", "files"], "image": None, "max_child_sandboxes": None,
            "resources": {"cpus": None, "memory_mb": 256, "pids_limit": None, "workspace_mb": None, "tmp_mb": None},
            "approval": "confirm-risky"}
        assert closed_out[f"{opt}.networked"] == [403, "permission_denied", "network"]
        assert closed_out[f"{opt}.made"] == [False, 256]
        assert closed_out[f"{opt}.bigger"] == [413, "limit_exceeded", "memory_mb"]
        assert closed_out[f"{opt}.delete"] == [403, "approval_required", "approval"]
        assert files_out[f"{opt}.limits"]["tools"] == ["files"]
        for name in ("run", "sandbox", "spawn_run"):
            assert files_out[f"{opt}.{name}"][:2] == [403, "permission_denied"], (opt, name, files_out)
    assert not any(s["network"] for s in sandboxes)
    assert len(sandboxes) == 3  # the root's, and one left by each closed grandchild (its delete was refused)
    assert len(runs) == 2  # the two children's own: no grandchild ran anything


RACER = CLIENT + r'''
stopped = threading.Event()


def racer():
    while not stopped.is_set():
        status, data = call("POST", "/api/agent/spawn", {"agent_name": "c"})
        if status == 201:
            print("ok", data["spawn"]["session"]["id"], flush=True)
        elif status == 401:
            stopped.set()
        else:
            time.sleep(0.02)  # no room under max_children: try again (its parent's stop is what ends this)


threads = [threading.Thread(target=racer) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
'''


async def test_spawns_racing_their_parents_stop_leave_no_live_session_under_it(daemon: Daemon):
    async with control(daemon) as root:
        sandbox = (await root.post("/api/v1/sandboxes", json={"image": FULL})).json()["data"]
        parent = await spawn(root, permissions={"tools": ["agent"]}, prompt=RACER, command="python3 -",
                             target_id=sandbox["id"])
        run_id, after, output = parent["run"]["id"], 0, ""
        with anyio.fail_after(120):
            while output.count("ok ") < 8:  # every place under max_children taken; the racers keep asking
                page = (await root.get(f"/api/v1/agent-runs/{run_id}/events",
                                       params={"after": after, "wait": 30})).json()
                after = page["next_after_sequence"]
                output += "".join(e["payload"].get("text", "") for e in page["data"] if e["type"] == "output")
        stopped = await root.post(f"/api/v1/sessions/{parent['session']['id']}/stop")
        assert stopped.status_code == 200, stopped.text
        run = await ended(root, run_id)
        sessions = {s["id"]: s for s in (await root.get("/api/v1/sessions")).json()["data"]}

    assert run["status"] == "canceled", run
    below = [s for s in sessions.values() if s["lineage"]["parent_session_id"] == parent["session"]["id"]]
    assert len(below) >= 8
    assert [s for s in below if s["state"] == "active"] == []
    tokens = Tokens(daemon.settings.home)
    for s in below:
        async with agent(daemon, tokens.token_for(s["id"])) as c:
            me = await c.get("/api/agent/me")
            again = await c.post("/api/agent/spawn", json={"agent_name": "d"})
        assert (me.status_code, again.status_code) == (401, 401), s["id"]


async def test_a_request_with_two_authorization_headers_is_refused_on_either_socket(daemon: Daemon):
    async with control(daemon) as root:
        child = await spawn(root, permissions={"tools": ["agent"]})
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.settings.agent_socket))
    answers: list[tuple[int, Any]] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://agentdock", timeout=30) as c:
        for pair in ((child["token"], "x"), ("x", child["token"]), (child["token"], child["token"])):
            headers = [("Authorization", f"Bearer {token}") for token in pair]
            for method, path in (("GET", "/api/agent/me"), ("POST", "/api/agent/spawn")):
                resp = await c.request(method, path, headers=headers, json={"agent_name": "w"} if method == "POST"
                                       else None)
                answers.append((resp.status_code, resp.json()["diagnostic"]["evidence"].get("field")))
        single = await c.get("/api/agent/me", headers={"Authorization": f"Bearer {child['token']}"})
    async with control(daemon) as root:
        on_control = await root.get("/api/v1/sessions", headers=[("Authorization", "Bearer a"),
                                                                 ("Authorization", "Bearer b")])
        sessions = (await root.get("/api/v1/sessions")).json()["data"]
    assert answers == [(400, "Authorization")] * 6
    assert single.status_code == 200
    assert on_control.status_code == 400 and on_control.json()["diagnostic"]["evidence"]["field"] == "Authorization"
    assert len(sessions) == 2  # the root and the child: no spawn went through
