"""End to end through the running daemon's real HTTP app on its control socket, and through the real CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import Daemon

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

RUNS = "/api/v1/agent-runs"
SANDBOXES = "/api/v1/sandboxes"


@asynccontextmanager
async def http(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(uds=str(daemon.settings.control_socket))
    async with httpx.AsyncClient(transport=transport, base_url="http://agentdock", timeout=60) as client:
        yield client


def diagnostic(resp: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    """Check an error response is the seeds' `{"diagnostic", "error"}` body; return the diagnostic."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"diagnostic", "error"}, body
    diag = body["diagnostic"]
    assert {"code", "category", "severity", "title", "message", "suggested_command", "evidence", "id"} <= set(diag)
    assert diag["message"] and body["error"] == diag["message"]
    assert "Traceback" not in resp.text
    if code is not None:
        assert diag["code"] == code, diag
    return diag


async def new_sandbox(client: httpx.AsyncClient) -> str:
    resp = await client.post(SANDBOXES, json={})
    assert resp.status_code == 201, resp.text
    return resp.json()["data"]["id"]


async def run_ids(client: httpx.AsyncClient) -> list[str]:
    resp = await client.get(RUNS, params={"limit": 200})
    assert resp.status_code == 200, resp.text
    return [r["id"] for r in resp.json()["data"]]


# ---------------------------------------------------------------- sandboxes


async def test_sandbox_create_list_get_and_delete_over_http(daemon):
    with anyio.fail_after(60):
        async with http(daemon) as client:
            created = await client.post(SANDBOXES, json={"data": {"name": "e2e", "memory_mb": 256}})
            assert created.status_code == 201, created.text
            device = created.json()["data"]
            listed = await client.get(SANDBOXES)
            got = await client.get(f"{SANDBOXES}/{device['id']}")
            deleted = await client.delete(f"{SANDBOXES}/{device['id']}")
            after_get = await client.get(f"{SANDBOXES}/{device['id']}")
            after_list = await client.get(SANDBOXES)

    assert device["id"].startswith("sbx_")
    assert (device["kind"], device["name"], device["memory_mb"], device["status"], device["network"]) == (
        "sandbox", "e2e", 256, "running", False)
    assert listed.status_code == 200 and [d["id"] for d in listed.json()["data"]] == [device["id"]]
    assert got.status_code == 200 and got.json()["data"]["id"] == device["id"]
    assert deleted.status_code == 200 and deleted.json()["data"]["id"] == device["id"]
    diagnostic(after_get, 404, "not_found")
    assert after_list.json()["data"] == []


# ---------------------------------------------------------------- runs


async def test_idempotency_key_returns_the_same_run_and_refuses_a_different_body(daemon):
    body = {"prompt": "once", "command": "echo once"}
    with anyio.fail_after(60):
        async with http(daemon) as client:
            body["sandbox_id"] = await new_sandbox(client)
            first = await client.post(RUNS, json=body, headers={"Idempotency-Key": "key-1"})
            second = await client.post(RUNS, json=body, headers={"Idempotency-Key": "key-1"})
            ids_after_repeat = await run_ids(client)
            clash = await client.post(RUNS, json={**body, "command": "echo twice"}, headers={"Idempotency-Key": "key-1"})
            ids_after_clash = await run_ids(client)

    assert first.status_code in (200, 201) and second.status_code in (200, 201)
    run_id = first.json()["data"]["id"]
    assert second.json()["data"]["id"] == run_id
    assert first.json()["data"]["idempotency_key"] == "key-1"
    assert ids_after_repeat == [run_id]
    diag = diagnostic(clash, 409, "conflict")
    assert diag["evidence"]["run_id"] == run_id
    assert ids_after_clash == [run_id]


BAD_BODIES = [
    pytest.param(b"{not json", "body", id="invalid-json"),
    pytest.param(b"[1, 2]", "body", id="not-an-object"),
    pytest.param(json.dumps({"prompt": "p", "command": "echo x", "bogus": 1}).encode(), "bogus", id="unknown-field"),
    pytest.param(json.dumps({"prompt": "p", "command": "echo x", "timeout": 0}).encode(), "timeout",
                 id="timeout-zero"),
    pytest.param(json.dumps({"data": {"prompt": "p", "command": "echo x", "timeout": "soon"}}).encode(), "timeout",
                 id="timeout-not-a-number"),
]


async def test_bad_run_body_is_400_with_a_diagnostic_naming_the_field_and_creates_nothing(daemon):
    with anyio.fail_after(30):
        async with http(daemon) as client:
            responses = {case.id: await client.post(RUNS, content=case.values[0],
                                                     headers={"content-type": "application/json"})
                         for case in BAD_BODIES}
            ids = await run_ids(client)
            devices = (await client.get(SANDBOXES)).json()["data"]

    for case in BAD_BODIES:
        diag = diagnostic(responses[case.id], 400, "invalid_input")
        assert diag["evidence"]["field"] == case.values[1], (case.id, diag)
    assert ids == [] and devices == []


async def test_unknown_run_and_unknown_route_are_404_diagnostics(app_client):
    client = app_client  # in process: the routes' answers, not the socket's
    with anyio.fail_after(30):
        run = await client.get(f"{RUNS}/run_0000000000000000dead")
        events = await client.get(f"{RUNS}/run_0000000000000000dead/events")
        route = await client.get("/api/v1/no-such-thing")

    diag = diagnostic(run, 404, "not_found")
    assert diag["evidence"] == {"kind": "run", "id": "run_0000000000000000dead"}
    assert diagnostic(events, 404, "not_found")["evidence"]["id"] == "run_0000000000000000dead"
    assert "/api/v1/no-such-thing" in diagnostic(route, 404, "not_found")["message"]


async def test_diagnostics_suggest_only_commands_the_cli_has(daemon):
    with anyio.fail_after(30):
        async with http(daemon) as client:
            responses = [await client.get(f"{RUNS}/run_0000000000000000dead"),
                         await client.get(f"{SANDBOXES}/sbx_0000000000000000dead"),
                         await client.get("/api/v1/no-such-thing")]

    for resp in responses:
        suggested = diagnostic(resp, 404)["suggested_command"]
        if suggested is None:
            continue
        words = suggested.split()
        assert words[0] == "agentdock", suggested
        helped = daemon.cli(words[1], "--help", check=False)
        assert helped.returncode == 0, f"{suggested!r} names a command the CLI does not have: {helped.stderr}"


async def test_wrong_method_gets_a_diagnostic(app_client):
    client = app_client  # in process: the routes' answers, not the socket's
    with anyio.fail_after(30):
        resp = await client.put(RUNS, json={"prompt": "p", "command": "echo x"})
        ids = await run_ids(client)

    diag = diagnostic(resp, (400, 405))
    assert "PUT" in diag["message"]
    assert ids == []


async def test_create_with_wait_answers_with_the_finished_run(daemon):
    with anyio.fail_after(60):
        async with http(daemon) as client:
            sid = await new_sandbox(client)
            resp = await client.post(RUNS, params={"wait": 30},
                                     json={"sandbox_id": sid, "prompt": "p", "command": "sleep 0.5; echo waited"})

    assert resp.status_code == 201, resp.text
    run = resp.json()["data"]
    assert (run["status"], run["output"], run["exit_code"], run["target_id"]) == ("succeeded", "waited\n", 0, sid)
    assert run["finished_at"] is not None


async def test_get_with_wait_answers_once_the_run_has_ended_or_as_it_is_when_the_wait_passes(daemon):
    with anyio.fail_after(60):
        async with http(daemon) as client:
            sid = await new_sandbox(client)
            quick = (await client.post(RUNS, json={"sandbox_id": sid, "prompt": "p",
                                                   "command": "sleep 0.5; echo waited"})).json()["data"]
            ended = await client.get(f"{RUNS}/{quick['id']}", params={"wait": 30})
            endless = (await client.post(RUNS, json={"sandbox_id": sid, "prompt": "p",
                                                     "command": "sleep 1000"})).json()["data"]
            with anyio.fail_after(10):
                bounded = await client.get(f"{RUNS}/{endless['id']}", params={"wait": 1})
            too_long = await client.get(f"{RUNS}/{endless['id']}", params={"wait": 3601})
            canceled = await client.post(f"{RUNS}/{endless['id']}/cancel")

    assert quick["status"] in ("queued", "running")
    assert ended.status_code == 200, ended.text
    assert (ended.json()["data"]["status"], ended.json()["data"]["output"]) == ("succeeded", "waited\n")
    assert bounded.status_code == 200 and bounded.json()["data"]["status"] == "running"
    assert diagnostic(too_long, 400, "invalid_input")["evidence"]["field"] == "wait"
    assert canceled.json()["data"]["status"] == "canceled"


async def test_events_long_poll_returns_only_events_after_the_cursor(daemon):
    with anyio.fail_after(60):
        async with http(daemon) as client:
            sid = await new_sandbox(client)
            created = await client.post(RUNS, json={
                "sandbox_id": sid, "prompt": "p", "timeout": 60,
                "command": "until [ -e go ]; do sleep 0.1; done; echo released"})
            run_id = created.json()["data"]["id"]
            # read until the run has started; the run then waits on `go`, so nothing more can come
            seen: list[dict[str, Any]] = []
            while not any(e["type"] == "run_started" for e in seen):
                page = (await client.get(f"{RUNS}/{run_id}/events",
                                         params={"after": len(seen), "wait": 5})).json()
                seen += page["data"]
            n = len(seen)

            idle = await client.get(f"{RUNS}/{run_id}/events", params={"after": n, "wait": 0.5})

            async def release() -> None:
                resp = await client.post(RUNS, params={"wait": 30},
                                         json={"sandbox_id": sid, "prompt": "go", "command": "touch go"})
                assert resp.json()["data"]["status"] == "succeeded"

            async with anyio.create_task_group() as tg:
                tg.start_soon(release)
                with anyio.fail_after(4.5):  # well within wait=5: it wakes on the event, not at the bound
                    woke = await client.get(f"{RUNS}/{run_id}/events", params={"after": n, "wait": 5})

    assert [e["sequence"] for e in seen] == list(range(1, n + 1))
    assert idle.status_code == 200
    assert (idle.json()["data"], idle.json()["next_after_sequence"], idle.json()["run_status"]) == ([], n, "running")
    assert woke.status_code == 200
    events = woke.json()["data"]
    assert events and events[0]["sequence"] == n + 1
    assert [e["sequence"] for e in events] == list(range(n + 1, n + 1 + len(events)))
    assert woke.json()["next_after_sequence"] == events[-1]["sequence"]


async def test_run_list_filters_by_status_and_pages_by_cursor(daemon):
    with anyio.fail_after(90):
        async with http(daemon) as client:
            sid = await new_sandbox(client)
            made = []
            for command in ("echo 1", "exit 3", "echo 2", "echo 3"):
                resp = await client.post(RUNS, params={"wait": 30},
                                         json={"sandbox_id": sid, "prompt": "p", "command": command})
                made.append(resp.json()["data"])
            pages = []
            params: dict[str, Any] = {"status": "succeeded", "limit": 1}
            while True:
                page = (await client.get(RUNS, params=params)).json()
                pages.append(page)
                if page["next_cursor"] is None:
                    break
                params["cursor"] = page["next_cursor"]

    assert [r["status"] for r in made] == ["succeeded", "failed", "succeeded", "succeeded"]
    succeeded_newest_first = [r["id"] for r in reversed(made) if r["status"] == "succeeded"]
    assert [len(p["data"]) for p in pages] == [1, 1, 1]
    assert [p["data"][0]["id"] for p in pages] == succeeded_newest_first
    assert all(p["next_cursor"] for p in pages[:-1]) and pages[-1]["next_cursor"] is None


async def test_run_list_refuses_a_cursor_it_never_handed_out(app_client):
    client = app_client  # in process: the routes' answers, not the socket's
    with anyio.fail_after(30):
        await client.post(RUNS, params={"wait": 30}, json={"prompt": "p", "command": "echo x"})
        resp = await client.get(RUNS, params={"cursor": "run_0000000000000000dead"})

    diag = diagnostic(resp, 400, "invalid_input")
    assert diag["evidence"]["field"] == "cursor"


async def test_control_socket_is_private_to_its_owner(daemon):
    st = os.stat(daemon.settings.control_socket)

    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()


# ---------------------------------------------------------------- the CLI against the same daemon


async def test_cli_daemon_start_is_refused_while_one_runs_and_status_reports_it(daemon):
    pid = daemon.pid()
    again = daemon.cli("daemon", "start", check=False)
    status = daemon.cli("daemon", "status", "--json", check=False)

    assert pid is not None and pid > 0
    assert again.returncode == 1
    assert "already running" in again.stderr + again.stdout
    assert str(pid) in again.stderr + again.stdout
    assert daemon.pid() == pid  # the running daemon is untouched
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert (reported["status"], reported["pid"]) == ("running", pid)


async def cli_all(daemon: Daemon, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run several CLI commands at once (each is a separate `agentdock` process)."""
    results: list[subprocess.CompletedProcess[str] | None] = [None] * len(commands)

    async def one(i: int, args: tuple[str, ...]) -> None:
        results[i] = await anyio.to_thread.run_sync(lambda: daemon.cli(*args, check=False))

    async with anyio.create_task_group() as tg:
        for i, args in enumerate(commands):
            tg.start_soon(one, i, args)
    return results  # type: ignore[return-value]


async def test_cli_prompt_runs_in_a_sandbox_and_runs_commands_read_it_back(daemon):
    sandbox = json.loads(daemon.cli("sandbox", "create", "--json").stdout)
    prompted = daemon.cli("sandbox", "prompt", sandbox["id"], "--provider", "custom", "--command", "echo hi",
                          "--timeout", "60", "--json", "--", "the prompt", check=False)
    assert prompted.returncode == 0, prompted.stdout + prompted.stderr
    run = json.loads(prompted.stdout)

    listed, got, events, plain = await cli_all(
        daemon, ("runs", "list", "--json"), ("runs", "get", run["id"], "--json"),
        ("runs", "events", run["id"], "--json"), ("runs", "get", run["id"]))

    assert (run["status"], run["output"], run["prompt"], run["target_id"], run["timeout"]) == (
        "succeeded", "hi\n", "the prompt", sandbox["id"], 60)
    assert all(r.returncode == 0 for r in (listed, got, events, plain)), [r.stderr for r in (listed, got, events, plain)]
    assert [r["id"] for r in json.loads(listed.stdout)["data"]] == [run["id"]]
    assert json.loads(got.stdout) == run
    data = json.loads(events.stdout)["data"]
    seqs = [e["sequence"] for e in data]
    assert seqs == list(range(1, len(seqs) + 1)) and data[-1]["type"] == "run_finished"
    assert run["id"] in plain.stdout and "succeeded" in plain.stdout


async def test_cli_bad_input_exits_nonzero_with_a_diagnostic_in_json_mode(daemon):
    sandbox = json.loads(daemon.cli("sandbox", "create", "--json").stdout)
    bad_timeout, missing = await cli_all(
        daemon, ("sandbox", "prompt", sandbox["id"], "--command", "echo hi", "--timeout", "0", "--json", "--",
                 "p"),
        ("runs", "get", "run_0000000000000000dead", "--json"))
    listed = json.loads(daemon.cli("runs", "list", "--json").stdout)

    assert bad_timeout.returncode != 0
    body = json.loads(bad_timeout.stdout)
    assert body["diagnostic"]["code"] == "invalid_input" and body["diagnostic"]["evidence"]["field"] == "timeout"
    assert body["error"] == body["diagnostic"]["message"]
    assert missing.returncode != 0
    assert json.loads(missing.stdout)["diagnostic"]["code"] == "not_found"
    assert "Traceback" not in bad_timeout.stderr + missing.stderr
    assert listed["data"] == []


async def test_a_runs_events_stream_as_server_sent_events_and_resume_from_the_last_id(daemon):
    async with http(daemon) as client:
        sid = await new_sandbox(client)
        run = (await client.post(RUNS, json={"sandbox_id": sid, "prompt": "p",
                                             "command": "echo one; sleep 1; echo two"})).json()["data"]
        url = f"{RUNS}/{run['id']}/events"
        seen: list[Any] = []
        with anyio.fail_after(60):
            async with aconnect_sse(client, "GET", url, params={"stream": "true"}) as source:
                async for event in source.aiter_sse():
                    seen.append(event)
        sequences = [int(e.id) for e in seen]
        assert sequences == list(range(1, len(seen) + 1))  # gapless, and closed once the run ended
        texts = "".join(json.loads(e.data)["payload"].get("text", "") for e in seen
                        if json.loads(e.data)["type"] == "output")
        assert texts == "one\ntwo\n"
        assert (await client.get(f"{RUNS}/{run['id']}")).json()["data"]["status"] == "succeeded"

        with anyio.fail_after(30):
            async with aconnect_sse(client, "GET", url, params={"stream": "true"},
                                    headers={"Last-Event-ID": "2"}) as source:
                resumed = [int(e.id) async for e in source.aiter_sse()]
        assert resumed == sequences[2:]
        bad = await client.get(url, params={"stream": "true"}, headers={"Last-Event-ID": "-1"})
        assert diagnostic(bad, 400, "invalid_input")["evidence"]["field"] == "Last-Event-ID"
