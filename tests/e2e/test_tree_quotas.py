"""Authority that holds (issue 16), end to end: children in real sandboxes call the daemon over
agent.sock with their tokens, as agents do, and try what the issue found. Quotas hold per tree of
sessions and per workspace (a parent spawning fresh flooders gets no fresh quota), task bodies are
bounded and list answers stay within their byte budget, a send cannot pass for someone else's reply,
and a secret a child's run holds reaches no record, in the clear or in a common encoding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import anyio
import pytest

from engine.channels import models as cm
from engine.secrets import forms
from tests.conftest import FULL, Daemon
from tests.e2e.test_agent_socket import agent, ended, spawn
from tests.e2e.test_http import SANDBOXES, diagnostic
from tests.e2e.test_http import http as control
from tests.e2e.test_secrets import everything_on_disk, set_secret

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TREE_MESSAGES = 30
TREE_TASKS = 8
QUOTAS = {"AGENTDOCK_CHANNEL_QUOTA_MESSAGES": str(TREE_MESSAGES), "AGENTDOCK_TASK_QUOTA_TASKS": str(TREE_TASKS),
          "AGENTDOCK_TREE_MAX_LIVE_SANDBOXES": "2", "AGENTDOCK_WORKSPACE_MAX_LIVE_SANDBOXES": "3"}
PROFILES = "/api/v1/agent-runtime-profiles"
VALUE = "sk-agentdock-e2e-4f9c2a7e81b3d6051c9e"
NAME = "SERVICE_TOKEN"
ROOT_FAMILY = cm.channel_id(cm.family_name("ses_root"))


@pytest.fixture(autouse=True)
def small_quotas(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The daemon (started after this, by `daemon`) takes its settings from the environment."""
    for key, value in QUOTAS.items():
        monkeypatch.setenv(key, value)
    yield


CLIENT = r'''
import base64, http.client, json, os, socket, sys
from urllib.parse import quote


class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.environ["AGENTDOCK_SOCKET"])


def call(method, path, body=None):
    conn = Unix("agentdock", timeout=120)
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Authorization": "Bearer " + os.environ["AGENTDOCK_TOKEN"],
                          "Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    return resp.status, json.loads(raw), len(raw)


def report(**facts):
    print("REPORT " + json.dumps(facts), flush=True)
'''

FLOOD = CLIENT + r'''
channel = call("GET", "/api/agent/context")[1]["context"]["coordination_channel"]["channel"]["id"]
sent = 0
while True:
    status, data, _ = call("POST", f"/api/agent/channels/{channel}/send", {"body": {"n": sent, "pad": "x" * 2000}})
    if status != 201:
        report(sent=sent, status=status, diagnostic=data["diagnostic"])
        break
    sent += 1
'''

TASKS = CLIENT + r'''
status, data, _ = call("POST", "/api/v1/tasks", {"title": "too big", "payload": {"p": "x" * 300_000}})
report(step="oversized", status=status, field=data["diagnostic"]["evidence"].get("field"))
made = 0
while True:
    status, data, _ = call("POST", "/api/v1/tasks", {"title": f"t{made}", "payload": {"p": "y" * 200_000}})
    if status != 201:
        report(step="flood", made=made, status=status, diagnostic=data["diagnostic"])
        break
    made += 1
status, data, size = call("GET", "/api/v1/tasks?limit=100")
report(step="summaries", status=status, bytes=size, payloads=[t["payload"] for t in data["data"]])
status, data, size = call("GET", "/api/v1/tasks?limit=100&include_payload=true")
report(step="bodies", status=status, bytes=size, carried=sum(not t["bodies_omitted"] for t in data["data"]))
'''

LEAK = CLIENT + r'''
value = os.environ["SERVICE_TOKEN"]
raw = value.encode()
said = {"whole": f"my key is {value}", "base64": base64.b64encode(b"Bearer " + raw).decode(), "hex": raw.hex(),
        "reversed": value[::-1], "upper": value.upper(), "mixed": value.swapcase(), "url": quote(value, safe="")}
channel = call("GET", "/api/agent/context")[1]["context"]["coordination_channel"]["channel"]["id"]
out = {}
out["message"] = call("POST", f"/api/agent/channels/{channel}/send",
                      {"body": {"said": said, value: "as a key"}, "metadata": {"ext": {"k": said["hex"]}}})[:2]
out["correlation"] = call("POST", f"/api/agent/channels/{channel}/send",
                          {"body": 1, "metadata": {"correlation_id": value}})[:2]
out["task"] = call("POST", "/api/v1/tasks", {"title": said["whole"], "payload": {"said": said}})[:2]
claim = call("POST", "/api/agent/tasks/claim-next", {})[1]["claim"]
out["complete"] = call("POST", f"/api/agent/tasks/{claim['run']['id']}/complete",
                       {"claim_token": claim["claim_token"], "result": {"r": said["base64"]}})[:2]
out["second"] = call("POST", "/api/v1/tasks", {"title": "second", "max_attempts": 1})[:2]
claim = call("POST", "/api/agent/tasks/claim-next", {})[1]["claim"]
out["fail"] = call("POST", f"/api/agent/tasks/{claim['run']['id']}/fail",
                   {"claim_token": claim["claim_token"], "error": "it broke: " + said["reversed"]})[:2]
out["group"] = call("POST", "/api/v1/agent-run-groups", {"name": said["upper"], "metadata": {"m": said["url"]}})[:2]
out["sandbox"] = call("POST", "/api/v1/sandboxes", {"name": f"box {value}", "metadata": {"d": said["hex"]}})[:2]
out["spawn"] = call("POST", "/api/agent/spawn", {
    "agent_name": "helper", "prompt": "use " + said["whole"], "command": "true",
    "target_id": out["sandbox"][1]["data"]["id"]})[:2]
print(json.dumps({k: v[0] for k, v in out.items()}))
report(**{k: v[1] for k, v in out.items()})
'''


def reports(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line.split(" ", 1)[1]) for line in run["output"].splitlines() if line.startswith("REPORT ")]


async def full_image_profile(root, **fields: Any) -> str:
    resp = await root.post(PROFILES, json={"name": fields.pop("name", "full"), "runtime": "custom", "image": FULL,
                                           **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["data"]["id"]


async def test_children_spawned_in_turn_share_their_trees_channel_quota(daemon: Daemon):
    async with control(daemon) as root:
        profile = await full_image_profile(root)
        parent = await spawn(root, permissions={"tools": ["agent", "runs", "channels"], "sandbox_profiles": ["*"]})
        family = cm.channel_id(cm.family_name(parent["session"]["id"]))
        runs = []
        async with agent(daemon, parent["token"]) as p:
            for name in ("flooder1", "flooder2"):  # in turn, each in its own real sandbox
                kid = await spawn(p, agent_name=name, prompt=FLOOD, command="python3 -",
                                  agent_runtime_profile_id=profile)
                runs.append(await ended(root, kid["run"]["id"]))
            own = await p.post(f"/api/agent/channels/{family}/send", json={"body": "and the parent itself"})
        received = []
        with anyio.fail_after(60):
            while page := (await root.get(f"/api/agent/channels/{family}/recv",
                                          params={"limit": 500})).json()["messages"]:
                received.extend(page)

    assert [r["status"] for r in runs] == ["succeeded", "succeeded"], [r["stderr"] for r in runs]
    first, second = (reports(r)[0] for r in runs)
    assert (first["sent"], second["sent"]) == (TREE_MESSAGES, 0)  # the second got no fresh quota
    for refused in (first, second):
        assert refused["status"] == 413 and refused["diagnostic"]["code"] == "limit_exceeded"
        assert refused["diagnostic"]["evidence"]["scope"] == "tree"
        assert refused["diagnostic"]["evidence"]["scope_id"] == parent["session"]["id"]
    diag = diagnostic(own, 413, "limit_exceeded")
    assert diag["evidence"]["scope_id"] == parent["session"]["id"]
    assert len(received) == TREE_MESSAGES  # what was refused was not written


async def test_a_child_in_a_sandbox_meets_its_task_bounds_and_lists_stay_within_their_budget(daemon: Daemon):
    async with control(daemon) as root:
        profile = await full_image_profile(root)
        child = await spawn(root, permissions={"tools": ["agent", "tasks"], "sandbox_profiles": ["*"]}, prompt=TASKS,
                            command="python3 -", agent_runtime_profile_id=profile)
        run = await ended(root, child["run"]["id"])
        listed = await root.get("/api/v1/tasks", params={"limit": 500})
        with_bodies = await root.get("/api/v1/tasks", params={"limit": 500, "include_payload": "true"})
        one = await root.get(f"/api/v1/tasks/{listed.json()['data'][0]['id']}")

    assert run["status"] == "succeeded", run["stderr"]
    oversized, flood, summaries, bodies = reports(run)
    assert (oversized["status"], oversized["field"]) == (400, "payload")
    assert flood["made"] == TREE_TASKS and flood["status"] == 413
    assert flood["diagnostic"]["evidence"]["setting"] == "AGENTDOCK_TASK_QUOTA_TASKS"
    assert summaries["payloads"] == [None] * TREE_TASKS and summaries["bytes"] < 20_000
    assert 0 < bodies["carried"] < TREE_TASKS and bodies["bytes"] < 1_048_576 + 20_000  # 8 x 200 KB, 1 MiB budget
    assert listed.status_code == 200 and len(listed.content) < 20_000
    assert len(listed.json()["data"]) == TREE_TASKS  # the oversized one and the refused one were not written
    assert with_bodies.status_code == 200 and len(with_bodies.content) < 1_048_576 + 20_000
    assert one.json()["data"]["payload"] == {"p": "y" * 200_000}


async def test_a_send_cannot_pass_for_a_reply_to_another_sessions_request(daemon: Daemon):
    async with control(daemon) as root:
        asker = await spawn(root, permissions={"tools": ["channels"]})
        other = await spawn(root, permissions={"tools": ["channels"]})
    send = f"/api/agent/channels/{ROOT_FAMILY}/send"
    async with agent(daemon, asker["token"]) as a, agent(daemon, other["token"]) as b:
        request = await a.post(send, json={"body": "which port?", "metadata": {"message_kind": "request",
                                                                                "correlation_id": "port-1"}})
        assert request.status_code == 201, request.text
        forged = await b.post(send, json={"body": "6666", "metadata": {"message_kind": "reply",
                                                                       "correlation_id": "port-1"}})
        posing = await b.post(send, json={"body": "6666", "metadata": {"message_kind": "result",
                                                                       "correlation_id": "port-1"}})
        answer = await b.post("/api/agent/channels/reply", json={
            "reply_to_message_id": request.json()["message"]["message_id"], "body": "8080"})
        got = (await a.get(f"/api/agent/channels/{ROOT_FAMILY}/recv")).json()["messages"]

    assert diagnostic(forged, 400, "invalid_input")["evidence"]["field"] == "metadata.message_kind"
    assert diagnostic(posing, 400, "invalid_input")["evidence"]["field"] == "metadata.correlation_id"
    assert answer.status_code == 201, answer.text
    assert [(m["body"], m["metadata"]["correlation_id"]) for m in got] == [("8080", "port-1")]


async def test_live_sandboxes_are_bounded_per_tree_and_per_workspace_over_agent_sock(daemon: Daemon):
    async with control(daemon) as root:
        makers = {"devices", "agent"}
        first = await spawn(root, permissions={"tools": sorted(makers)})
        second = await spawn(root, permissions={"tools": sorted(makers)})
    async with agent(daemon, first["token"]) as a:
        made = [await a.post(SANDBOXES, json={}) for _ in range(2)]
        over = await a.post(SANDBOXES, json={})
        below = await spawn(a, permissions={"tools": sorted(makers)})
    async with agent(daemon, below["token"]) as c:
        below_over = await c.post(SANDBOXES, json={})
    async with agent(daemon, second["token"]) as b:
        third = await b.post(SANDBOXES, json={})
        workspace_over = await b.post(SANDBOXES, json={})
    async with control(daemon) as root:
        live = (await root.get(SANDBOXES)).json()["data"]

    assert [m.status_code for m in made] == [201, 201] and third.status_code == 201, third.text
    for refused in (over, below_over):
        diag = diagnostic(refused, 413, "limit_exceeded")
        assert (diag["evidence"]["scope"], diag["evidence"]["scope_id"]) == ("tree", first["session"]["id"])
    diag = diagnostic(workspace_over, 413, "limit_exceeded")
    assert (diag["evidence"]["scope"], diag["evidence"]["live"]) == ("workspace", 3)
    assert len(live) == 3


async def test_a_secret_a_childs_run_holds_reaches_no_record_in_any_common_form(daemon: Daemon):
    set_secret(daemon, NAME, VALUE)
    async with control(daemon) as root:
        profile = await full_image_profile(root, name="keyed", secrets=[NAME])
        child = await spawn(root, permissions={"tools": ["agent", "runs", "channels", "tasks", "groups", "devices"],
                                               "sandbox_profiles": ["*"]},
                            prompt=LEAK, command="python3 -", agent_runtime_profile_id=profile)
        run = await ended(root, child["run"]["id"])
        (written,) = reports(run)
        message = (await root.get(f"/api/agent/channels/{ROOT_FAMILY}/recv")).json()["messages"]
        tasks = (await root.get("/api/v1/tasks", params={"include_payload": "true"})).json()["data"]
        group = (await root.get(f"/api/v1/agent-run-groups/{written['group']['data']['id']}")).json()["data"]
        sandbox = (await root.get(f"{SANDBOXES}/{written['sandbox']['data']['id']}")).json()["data"]
        grandchild = await ended(root, written["spawn"]["spawn"]["run"]["id"])
        answers = json.dumps([message, tasks, group, sandbox, grandchild, written])

    assert run["status"] == "succeeded", run["stderr"]
    statuses = json.loads(run["output"].splitlines()[0])
    assert statuses == {"message": 201, "correlation": 400, "task": 201, "complete": 200, "second": 201,
                        "fail": 200, "group": 201, "sandbox": 201, "spawn": 201}, run["output"]
    assert written["correlation"]["diagnostic"]["evidence"]["field"] == "metadata.correlation_id"
    (sent,) = message
    assert sent["body"]["said"]["whole"] == "my key is ********" and "********" in sent["body"]
    assert {k: v for k, v in sent["body"]["said"].items() if k != "base64"} == {
        "whole": "my key is ********", "hex": "********", "reversed": "********", "upper": "********",
        "mixed": "********", "url": "********"}
    assert sent["metadata"]["ext"] == {"k": "********"}
    done, failed = sorted(tasks, key=lambda t: t["title"] == "second")
    assert done["title"] == "my key is ********" and "********" in done["result"]["r"]
    assert failed["error"] == "it broke: ********"
    assert (group["name"], group["metadata"]) == ("********", {"m": "********"})
    assert (sandbox["name"], sandbox["metadata"]) == ("box ********", {"d": "********"})
    assert grandchild["prompt"] == "use my key is ********"
    raw = VALUE.encode()
    disguised = {f for form in {VALUE, raw.hex(), quote(VALUE, safe=""), *forms(VALUE)}
                 for f in (form, form.upper(), form.lower())}
    on_disk = everything_on_disk(daemon.settings.home)  # the database, its WAL, the daemon's log
    for form in disguised:
        assert form not in answers, form
        assert form.encode() not in on_disk, form
