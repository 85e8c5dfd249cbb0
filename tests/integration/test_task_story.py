"""The whole coordination story in real sandboxes.

The local user queues 20 tasks and spawns three children, each a Python script in its own sandbox
that talks to the daemon over agent.sock with its bearer token: it claims a task, reports on its
family channel, heartbeats and completes, until the queue is done. One child hangs holding a task
and is stopped mid-task; its lease runs out and another child finishes that task. Every task ends
completed exactly once, and the local user reads every child's reports in the order each sent them.
"""

from __future__ import annotations

import collections

import anyio
import pytest

from engine.channels import models as cm
from tests.conftest import FULL, Daemon
from tests.e2e.test_agent_socket import ended
from tests.e2e.test_http import http as control

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TASKS = 20
FAMILY = cm.channel_id(cm.family_name("ses_root"))

WORKER = r'''
import http.client, json, os, socket, sys, time

HANG = os.environ.get("HANG") == "1"


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
    data = json.loads(resp.read())
    if resp.status >= 400:
        raise SystemExit(f"{method} {path}: {resp.status} {data}")
    return data


channel = call("GET", "/api/agent/context")["context"]["coordination_channel"]["channel"]["id"]
me = call("GET", "/api/agent/me")["me"]["session"]["id"]
sent = 0


def report(step, task_id):
    global sent
    sent += 1
    call("POST", f"/api/agent/channels/{channel}/send",
         {"body": {"step": step, "task": task_id, "n": sent}, "metadata": {"message_kind": "progress",
                                                                         "task_id": task_id}})


while True:
    claim = call("POST", "/api/agent/tasks/claim-next", {"lease_seconds": 3 if HANG else 30,
                                                          "wait_seconds": 2})["claim"]
    if claim is None:
        tasks = call("GET", "/api/v1/tasks?limit=500")["data"]
        if all(t["status"] in ("completed", "failed") for t in tasks):
            break
        continue
    task, run, token = claim["task"]["id"], claim["run"]["id"], claim["claim_token"]
    report("started", task)
    if HANG:
        time.sleep(3600)  # holds the task without a heartbeat until it is stopped
    call("POST", f"/api/agent/tasks/{run}/heartbeat", {"claim_token": token})
    call("POST", f"/api/agent/tasks/{run}/complete", {"claim_token": token, "result": {"by": me}})
    report("done", task)
print("worker", me, "sent", sent)
'''


async def test_three_children_in_sandboxes_finish_twenty_tasks_exactly_once_despite_one_killed(daemon: Daemon):
    reports: list[dict] = []
    async with control(daemon) as root:
        tasks = [(await root.post("/api/v1/tasks", json={"title": f"t{i}", "priority": i % 3})).json()["data"]
                 for i in range(TASKS)]
        sandboxes = [(await root.post("/api/v1/sandboxes", json={"image": FULL})).json()["data"]["id"]
                     for _ in range(3)]

        async def spawn(name: str, sandbox: str, hang: bool) -> dict:
            resp = await root.post("/api/agent/spawn", json={
                "agent_name": name, "permissions": {"tools": ["agent", "tasks", "channels"]},
                "prompt": WORKER, "command": ("HANG=1 " if hang else "") + "python3 -", "target_id": sandbox})
            assert resp.status_code == 201, resp.text
            return resp.json()["spawn"]

        async def read_until(done: callable) -> None:
            with anyio.fail_after(120):
                while not done():
                    page = await root.get(f"/api/agent/channels/{FAMILY}/recv",
                                          params={"wait": "true", "wait_seconds": 20})
                    assert page.status_code == 200, page.text
                    reports.extend(page.json()["messages"])

        hung = await spawn("hung", sandboxes[0], hang=True)
        await read_until(lambda: any(r["from_session_id"] == hung["session"]["id"] for r in reports))
        stolen = reports[0]["body"]["task"]
        stopped = await root.post(f"/api/v1/sessions/{hung['session']['id']}/stop")
        assert stopped.status_code == 200, stopped.text
        workers = [await spawn(f"worker{i}", sandboxes[1 + i], hang=False) for i in range(2)]
        await read_until(lambda: sum(r["body"]["step"] == "done" for r in reports) == TASKS)
        runs = [await ended(root, w["run"]["id"]) for w in workers]
        hung_run = await ended(root, hung["run"]["id"])
        final = {t["id"]: (await root.get(f"/api/v1/tasks/{t['id']}")).json()["data"] for t in tasks}

    assert [r["status"] for r in runs] == ["succeeded", "succeeded"], [r["stderr"] for r in runs]
    assert hung_run["status"] == "canceled"
    for task in final.values():
        assert task["status"] == "completed", task
        assert [r["status"] for r in task["runs"]].count("completed") == 1, task
    assert [r["status"] for r in final[stolen]["runs"]] == ["expired", "completed"]
    assert final[stolen]["runs"][0]["session_id"] == hung["session"]["id"]
    finisher = final[stolen]["runs"][1]["session_id"]
    assert finisher in {w["session"]["id"] for w in workers}
    by_child = collections.defaultdict(list)
    for r in reports:
        by_child[r["from_session_id"]].append(r)
    for child, msgs in by_child.items():  # each child's reports arrive in the order it sent them
        assert [m["body"]["n"] for m in msgs] == list(range(1, len(msgs) + 1)), child
        assert [m["sequence"] for m in msgs] == sorted(m["sequence"] for m in msgs)
    done = [r["body"]["task"] for r in reports if r["body"]["step"] == "done"]
    assert sorted(done) == sorted(final) and len(set(done)) == TASKS
    assert any(r["body"] == {"step": "done", "task": stolen, "n": r["body"]["n"]} and r["from_session_id"] == finisher
               for r in reports)
