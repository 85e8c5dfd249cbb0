"""Groups end to end: a real MCP client session over stdio, the real HTTP app on the control socket (JSON and
SSE through a real SSE client), and the real CLI, against a real daemon on real Docker."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.conftest import Daemon, owned_containers
from tests.e2e.test_http import diagnostic, http
from tests.e2e.test_mcp import call, failing_call, session

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("quiet_daemon")]

GROUPS = "/api/v1/agent-run-groups"
UNKNOWN_SANDBOX = "sbx_0000000000000000dead"


@pytest.fixture(autouse=True)
def quick_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every 0.3 s, so a test sees one without waiting long (set before the daemon starts)."""
    monkeypatch.setenv("AGENTDOCK_SSE_HEARTBEAT_SECONDS", "0.3")


async def new_group(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    resp = await client.post(GROUPS, json={"concurrency_limit": 2, **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["data"]


async def dispatch(client: httpx.AsyncClient, group_id: str, runs: list[dict[str, Any]], **kw: Any) -> httpx.Response:
    return await client.post(f"{GROUPS}/{group_id}/dispatch", json={"runs": runs, **kw.pop("body", {})}, **kw)


async def ended(client: httpx.AsyncClient, group_id: str) -> dict[str, Any]:
    resp = await client.get(f"{GROUPS}/{group_id}", params={"wait": 60})
    assert resp.status_code == 200, resp.text
    group = resp.json()["data"]
    assert not group["is_active"], group
    return group


# ---------------------------------------------------------------- MCP


async def test_group_dispatch_over_mcp_waits_reporting_progress_and_returns_each_item_result(daemon: Daemon):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    with anyio.fail_after(90):
        async with session(daemon) as client:
            group = await call(client, "group_create", {"name": "fan", "concurrency_limit": 2,
                                                        "metadata": {"task": "t1"}})
            result = await call(client, "group_dispatch", {"group_id": group["id"], "runs": [
                {"prompt": "p", "command": "echo one; sleep 0.5", "orchestration_role": "coder"},
                {"prompt": "p", "command": "echo two; sleep 0.5"},
                {"prompt": "p", "command": "echo three", "sandbox_id": UNKNOWN_SANDBOX}]},
                progress_callback=on_progress)
            runs = await call(client, "group_runs", {"group_id": group["id"], "include_output": True,
                                                     "include_input": True})
            listed = await call(client, "group_list", {})
            got = await call(client, "group_get", {"group_id": group["id"]})

    assert result["done"] and len(result["results"]) == 3
    by_index = {r["index"]: r for r in result["results"]}
    assert by_index[0]["ok"] and by_index[0]["run"]["output"] == "one\n"
    assert by_index[0]["run"]["orchestration_role"] == "coder"
    assert by_index[0]["run"]["agent_run_group_id"] == group["id"]
    assert not by_index[2]["ok"] and by_index[2]["diagnostic"]["code"] == "not_found"
    assert result["group"]["status"] == "failed" and result["group"]["entry_counts"]["failed"] == 1
    assert progress and progress[-1][1] == 3  # progress counts this dispatch's items
    assert [r["output"]["output"] if r["output"] else None for r in runs["data"]] == ["one\n", "two\n", None]
    assert runs["data"][0]["input"]["prompt"] == "p"
    assert [g["id"] for g in listed["data"]] == [group["id"]]
    assert got["counts"] == {"total": 2, "running": 0, "succeeded": 2, "failed": 0, "canceled": 0}
    assert owned_containers(daemon.settings.home) == []


async def test_group_events_over_mcp_long_polls_and_the_commit_of_a_new_event_wakes_it(daemon: Daemon):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    with anyio.fail_after(90):
        async with session(daemon) as client, http(daemon) as web:
            group = await call(client, "group_create", {"concurrency_limit": 1, "expected_runs": 1})
            got: list[dict[str, Any]] = []

            async def read() -> None:  # waits 40 s unless an event comes
                got.append(await call(client, "group_events", {"group_id": group["id"], "wait": 40},
                                      progress_callback=on_progress))

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await anyio.sleep(0.5)
                resp = await dispatch(web, group["id"], [{"prompt": "p", "command": "true"}], body={"async": True})
                assert resp.status_code == 201, resp.text
            queued = resp.json()["data"]
            await ended(web, group["id"])
            page = await call(client, "group_events", {"group_id": group["id"], "after_sequence": 0, "limit": 1000})
            refused = await failing_call(client, "group_cancel", {"group_id": group["id"]})
            diag = await failing_call(client, "group_events", {"group_id": group["id"], "after_sequence": 10_000})

    assert got[0]["data"][0]["type"] == "entry_queued" and got[0]["is_active"]
    assert progress and progress[-1][0] == got[0]["next_after_sequence"]  # the wake was reported
    assert queued["results"] == [] and [e["status"] for e in queued["entries"]] in (["queued"], ["running"])
    events = page["data"]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "group_finished" and not page["is_active"]
    assert {"agent_run_group_id", "agent_run_id", "sequence", "type", "message", "payload", "created_at"} <= set(
        events[0])
    assert refused["code"] == "invalid_transition"  # it had succeeded: only an active group can be canceled
    assert diag["evidence"]["field"] == "after_sequence"


# ---------------------------------------------------------------- HTTP


async def test_idempotency_key_makes_a_retried_create_and_dispatch_a_no_op(daemon: Daemon):
    async with http(daemon) as client:
        headers = {"Idempotency-Key": "grp-1"}
        a = await client.post(GROUPS, json={"name": "g", "concurrency_limit": 1}, headers=headers)
        b = await client.post(GROUPS, json={"name": "g", "concurrency_limit": 1}, headers=headers)
        assert a.status_code == b.status_code == 201 and a.json()["data"]["id"] == b.json()["data"]["id"]
        gid = a.json()["data"]["id"]
        runs = [{"prompt": "p", "command": "true"}] * 3
        first = await dispatch(client, gid, runs, headers={"Idempotency-Key": "d-1"}, body={"async": True})
        again = await dispatch(client, gid, runs, headers={"Idempotency-Key": "d-1"}, body={"async": True})
        other = await dispatch(client, gid, runs[:1], headers={"Idempotency-Key": "d-1"})
        assert first.status_code == again.status_code == 201, again.text
        assert [e["id"] for e in first.json()["data"]["entries"]] == [e["id"] for e in again.json()["data"]["entries"]]
        diagnostic(other, 409, "conflict")
        group = await ended(client, gid)
    assert group["entry_counts"]["total"] == 3 and group["status"] == "succeeded"


async def test_sse_replays_then_streams_live_with_heartbeats_and_closes_once_the_group_has_ended(daemon: Daemon):
    async with http(daemon) as client:
        gid = (await new_group(client, concurrency_limit=1, expected_runs=2))["id"]
        resp = await dispatch(client, gid, [{"prompt": "p", "command": "echo first"}], params={"wait": 60})
        assert resp.status_code == 201 and resp.json()["data"]["done"], resp.text
        url = f"{GROUPS}/{gid}/events"
        seen: list[dict[str, Any]] = []
        heartbeats = 0
        with anyio.fail_after(60):
            async with client.stream("GET", url, params={"stream": "true"}) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                async for line in lines:  # the replay, then a heartbeat while the group waits for more
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                    elif line.startswith(":"):
                        heartbeats += 1
                        break
                live = await dispatch(client, gid, [{"prompt": "p", "command": "echo second"}],
                                      body={"async": True})
                assert live.status_code == 201, live.text
                async for line in lines:  # live events, then the end of the stream
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                    elif line.startswith(":"):
                        heartbeats += 1
        assert heartbeats >= 1
        assert [e["sequence"] for e in seen] == list(range(1, len(seen) + 1))
        assert seen[-1]["type"] == "group_finished"
        assert "second\n" in [e["payload"].get("text") for e in seen if e["type"] == "output"]

        # resumed from the last id the client saw: exactly what follows, then closed (the group has ended)
        resumed: list[Any] = []
        with anyio.fail_after(30):
            async with aconnect_sse(client, "GET", url, params={"stream": "true"},
                                    headers={"Last-Event-ID": "3"}) as source:
                async for sse in source.aiter_sse():
                    resumed.append(sse)
        assert [int(s.id) for s in resumed] == list(range(4, len(seen) + 1))
        assert [json.loads(s.data)["id"] for s in resumed] == [e["id"] for e in seen[3:]]

        bad = await client.get(url, params={"stream": "true"}, headers={"Last-Event-ID": "x"})
        assert diagnostic(bad, 400, "invalid_input")["evidence"]["field"] == "Last-Event-ID"
        beyond = await client.get(url, params={"stream": "true", "after_sequence": 10_000})
        assert diagnostic(beyond, 400, "invalid_input")["evidence"]["field"] == "after_sequence"


async def test_events_json_replays_from_a_cursor_and_refuses_a_cursor_or_wait_beyond_the_bound(daemon: Daemon):
    async with http(daemon) as client:
        gid = (await new_group(client))["id"]
        await dispatch(client, gid, [{"prompt": "p", "command": "echo a"}], params={"wait": 60})
        everything = (await client.get(f"{GROUPS}/{gid}/events")).json()
        tail = (await client.get(f"{GROUPS}/{gid}/events", params={"after_sequence": 2, "limit": 2})).json()
        beyond = await client.get(f"{GROUPS}/{gid}/events", params={"after_sequence": 10_000})
        too_long = await client.get(f"{GROUPS}/{gid}/events", params={"wait": 51})
        bare = (await client.get(f"{GROUPS}/{gid}/runs")).json()["data"]
        full = (await client.get(f"{GROUPS}/{gid}/runs", params={"include_input": "true",
                                                                 "include_output": "true"})).json()["data"]
    assert bare[0]["input"] is None and bare[0]["output"] is None
    assert (full[0]["input"]["command"], full[0]["output"]["output"]) == ("echo a", "a\n")
    assert [e["sequence"] for e in tail["data"]] == [3, 4] and tail["next_after_sequence"] == 4
    assert tail["data"] == everything["data"][2:4]
    assert diagnostic(beyond, 400, "invalid_input")["evidence"]["field"] == "after_sequence"
    assert diagnostic(too_long, 400, "invalid_input")["evidence"]["field"] == "wait"


@pytest.mark.parametrize(("body", "field"), [
    ({"concurrency_limit": 0}, "concurrency_limit"),
    ({"concurrency_limit": -3}, "concurrency_limit"),
    ({"concurrency_limit": 100_000}, "concurrency_limit"),
    ({"concurrency_limit": 1, "colour": "red"}, "colour"),
])
async def test_a_bad_group_is_400_naming_its_field_and_writes_nothing(daemon: Daemon, body, field):
    async with http(daemon) as client:
        resp = await client.post(GROUPS, json=body)
        assert diagnostic(resp, 400, "invalid_input")["evidence"]["field"] == field
        assert (await client.get(GROUPS)).json()["data"] == []


@pytest.mark.parametrize(("body", "field"), [
    ({"runs": []}, "runs"),
    ({"runs": [{"prompt": "p", "command": "true"}] * 1001}, "runs"),
    ({"runs": [{"prompt": "p", "command": "true", "sandbox": "x"}]}, "runs.0.sandbox"),
    ({"runs": [{"prompt": "p", "command": "true"}], "asyn": True}, "asyn"),
    ({}, "runs"),
])
async def test_a_bad_manifest_is_refused_whole_and_writes_nothing(daemon: Daemon, body, field):
    async with http(daemon) as client:
        gid = (await new_group(client))["id"]
        resp = await client.post(f"{GROUPS}/{gid}/dispatch", json=body)
        assert diagnostic(resp, 400, "invalid_input")["evidence"]["field"] == field
        group = (await client.get(f"{GROUPS}/{gid}")).json()["data"]
        events = (await client.get(f"{GROUPS}/{gid}/events")).json()["data"]
    assert (group["status"], group["entry_counts"]["total"], events) == ("queued", 0, [])
    assert owned_containers(daemon.settings.home) == []


async def test_cancel_kills_running_children_cancels_queued_ones_and_refuses_a_later_dispatch(daemon: Daemon):
    async with http(daemon) as client:
        gid = (await new_group(client, concurrency_limit=2))["id"]
        await dispatch(client, gid, [{"prompt": "p", "command": "sleep 1000"}] * 5, body={"async": True})
        with anyio.fail_after(60):
            while (await client.get(f"{GROUPS}/{gid}")).json()["data"]["counts"]["running"] < 2:
                await client.get(f"{GROUPS}/{gid}/events", params={"after_sequence": 0, "wait": 1})
        first = await client.post(f"{GROUPS}/{gid}/cancel")
        second = await client.post(f"{GROUPS}/{gid}/cancel")
        late = await dispatch(client, gid, [{"prompt": "p", "command": "true"}])
        runs = (await client.get(f"{GROUPS}/{gid}/runs")).json()["data"]
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["data"]["status"] == second.json()["data"]["status"] == "canceled"
    assert [r["status"] for r in runs] == ["canceled"] * 5
    assert sum(r["run_id"] is not None for r in runs) == 2  # the three queued never got a run
    assert all(r["run_status"] == "canceled" for r in runs if r["run_id"])
    diagnostic(late, 409, "invalid_transition")
    assert owned_containers(daemon.settings.home) == []  # the children's sandboxes, and their processes, are gone


# ---------------------------------------------------------------- CLI


async def test_cli_creates_dispatches_shows_streams_and_cancels_a_group(daemon: Daemon):
    created = json.loads(daemon.cli("agent-run-groups", "create", "--name", "cli", "--workspace", "ws_1",
                                    "--concurrency", "2", "--expected-runs", "2", "--json").stdout)
    gid = created["id"]
    assert (created["workspace_id"], created["concurrency_limit"], created["expected_runs"]) == ("ws_1", 2, 2)
    sync = daemon.cli("agent-run-groups", "dispatch", gid, "--run", '{"prompt":"p","command":"echo hi"}', "--json")
    result = json.loads(sync.stdout)
    assert result["done"] and result["results"][0]["ok"] and result["group"]["is_active"]
    queued = json.loads(daemon.cli("agent-run-groups", "dispatch", gid, "--async", "--json",
                                   "--run", '{"prompt":"p","command":"echo bye"}').stdout)
    assert len(queued["entries"]) == 1
    watched = daemon.cli("agent-run-groups", "show", gid, "--watch")  # not a terminal: plain status lines
    assert watched.stdout.strip().splitlines()[-1].startswith(f"{gid}  succeeded")
    shown = json.loads(daemon.cli("agent-run-groups", "show", gid, "--runs", "--json").stdout)
    assert [r["run_status"] for r in shown["runs"]] == ["succeeded", "succeeded"]
    streamed = daemon.cli("agent-run-groups", "events", gid, "--stream", "--json").stdout.splitlines()
    assert [json.loads(line)["sequence"] for line in streamed] == list(range(1, len(streamed) + 1))
    assert json.loads(streamed[-1])["type"] == "group_finished"
    page = json.loads(daemon.cli("agent-run-groups", "events", gid, "--limit", "2", "--json").stdout)
    assert [e["sequence"] for e in page["data"]] == [1, 2]
    plain = daemon.cli("agent-run-groups", "events", gid, "--stream").stdout
    assert "group_finished" in plain
    bad = daemon.cli("agent-run-groups", "create", "--concurrency", "0", "--json", check=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["diagnostic"]["evidence"]["field"] == "concurrency_limit"
    other = json.loads(daemon.cli("agent-run-groups", "create", "--json").stdout)["id"]
    canceled = json.loads(daemon.cli("agent-run-groups", "cancel", other, "--json").stdout)
    assert canceled["status"] == "canceled"


async def test_a_synchronous_dispatch_not_done_within_the_mcp_bound_returns_what_it_has_and_a_handle(daemon: Daemon):
    quick = Daemon(daemon.settings, {**daemon.env, "AGENTDOCK_MCP_MAX_WAIT_SECONDS": "1"})
    args = {"runs": [{"prompt": "p", "command": "true"}, {"prompt": "p", "command": "sleep 1000"}],
            "idempotency_key": "slow-1"}
    with anyio.fail_after(90):
        async with session(quick) as client:
            group = await call(client, "group_create", {"concurrency_limit": 2})
            first = await call(client, "group_dispatch", {"group_id": group["id"], **args})
            again = await call(client, "group_dispatch", {"group_id": group["id"], **args})
            canceled = await call(client, "group_cancel", {"group_id": group["id"]})

    assert not first["done"] and first["next_after_sequence"] >= 2
    assert len(first["entries"]) == 2 and len(first["results"]) <= 1
    assert again["dispatch_id"] == first["dispatch_id"] and not again["done"]
    assert [e["id"] for e in again["entries"]] == [e["id"] for e in first["entries"]]
    assert canceled["status"] == "canceled" and canceled["entry_counts"]["total"] == 2


async def test_a_dispatch_body_past_its_bound_is_413_before_it_is_read(daemon: Daemon):
    async with http(daemon) as client:
        gid = (await new_group(client))["id"]
    from tests.e2e.test_hostile_input import raw_exchange
    request = (f"POST {GROUPS}/{gid}/dispatch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {32 * 1024 * 1024 + 1}\r\n\r\n{{}}").encode()
    status, body = raw_exchange(daemon, request)
    assert (status, body["diagnostic"]["code"]) == (413, "payload_too_large")
