"""End to end through a real MCP client session: `agentdock serve` over stdio, talking to a real daemon."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tests.conftest import AGENTDOCK, Daemon, logged_errors, owned_containers, tool_error

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.usefixtures("quiet_daemon")]

TOOLS = {
    "sandbox_create", "sandbox_list", "sandbox_get", "sandbox_delete",
    "agent_run", "agent_run_get", "agent_run_list", "agent_run_cancel", "agent_run_events", "agent_run_artifacts",
    "agent_me", "agent_spawn", "agent_stop", "agent_context", "coordinator_config", "soul_get", "soul_validate",
    "group_create", "group_dispatch", "group_get", "group_list", "group_runs", "group_events", "group_cancel",
    "task_create", "task_get", "task_list", "task_claim_next", "task_heartbeat", "task_complete", "task_fail",
    "task_release", "channel_list", "channel_send", "channel_recv", "channel_reply",
    "profile_create", "profile_get", "profile_list", "profile_update", "profile_delete",
    "approval_get", "approval_list", "approval_review",  # the user decides by being asked, not by a tool call
}
DEVICE_TOOLS = {"sandbox_create", "sandbox_list", "sandbox_get", "sandbox_delete"}
READ_ONLY = {"sandbox_list", "sandbox_get", "agent_run_get", "agent_run_list", "agent_run_events",
             "agent_run_artifacts", "agent_me", "agent_context", "coordinator_config", "soul_get", "soul_validate",
             "group_get", "group_list", "group_runs", "group_events", "task_get", "task_list", "channel_list",
             "profile_get", "profile_list", "approval_get", "approval_list"}
DESTRUCTIVE = {"sandbox_delete", "agent_run_cancel", "agent_stop", "group_cancel", "profile_delete"}
OPEN_WORLD = {"agent_run", "group_dispatch"}  # what runs an agent, which may reach outside when given a network
TERMINAL = {"succeeded", "failed", "canceled"}


@asynccontextmanager
async def session(daemon: Daemon, *args: str) -> AsyncIterator[Client]:
    """A fresh `agentdock serve` process and an MCP client session on its stdio. Once the session is
    over, what the process wrote on its stderr (the user's screen) must show no exception or error."""
    params = StdioServerParameters(command=AGENTDOCK, args=["serve", *args], env=daemon.env)
    with tempfile.TemporaryFile("w+") as stderr:
        async with Client(stdio_client(params, errlog=stderr)) as client:
            yield client
        stderr.seek(0)
        shown = stderr.read()
    assert logged_errors(shown) == [], shown[-3000:]


async def call(client: Client, name: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured content."""
    result = await client.call_tool(name, args, **kw)
    assert not result.is_error, f"{name} failed: {result.structured_content}"
    assert result.structured_content is not None
    return result.structured_content


async def failing_call(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Call a tool that must fail; return its diagnostic after checking the result's shape."""
    return tool_error(await client.call_tool(name, args))


async def sandbox(client: Client) -> str:
    return (await call(client, "sandbox_create", {}))["id"]


async def wait_for_end(client: Client, run_id: str, seconds: float = 30) -> dict[str, Any]:
    """Follow the run's events by long-poll until it has ended; return the final record."""
    after = 0
    with anyio.fail_after(seconds):
        while True:
            page = await call(client, "agent_run_events", {"run_id": run_id, "after_sequence": after, "wait_seconds": 5})
            after = page["next_after_sequence"]
            if page["run_status"] in TERMINAL and not page["data"]:
                return await call(client, "agent_run_get", {"run_id": run_id})


# ---------------------------------------------------------------- tool catalog


async def test_list_tools_gives_every_tool_with_schemas_and_honest_annotations(daemon):
    with anyio.fail_after(30):
        async with session(daemon) as client:
            listed = (await client.list_tools()).tools

    assert sorted(t.name for t in listed) == sorted(TOOLS)
    for tool in listed:
        assert tool.description, tool.name
        assert tool.input_schema.get("type") == "object", tool.name
        assert tool.output_schema is not None and tool.output_schema.get("type") == "object", tool.name
        assert tool.output_schema.get("properties"), tool.name
        ann = tool.annotations
        assert ann is not None, tool.name
        # only what the protocol's defaults do not say (not read-only, not idempotent) is left out
        assert (ann.read_only_hint or False) is (tool.name in READ_ONLY), tool.name
        if tool.name in READ_ONLY:
            assert (ann.destructive_hint, ann.idempotent_hint) == (None, None), tool.name
        else:  # destructive is the default, so it is always said
            assert ann.destructive_hint is (tool.name in DESTRUCTIVE), tool.name
        assert ann.open_world_hint is (tool.name in OPEN_WORLD), tool.name

    by_name = {t.name: t for t in listed}
    run_schema = by_name["agent_run"].input_schema
    assert {"prompt", "async", "command", "target_id", "timeout"} <= set(run_schema["properties"])
    assert "prompt" in run_schema.get("required", [])
    assert run_schema.get("additionalProperties") is False
    assert {"id", "status", "output", "exit_code"} <= set(by_name["agent_run"].output_schema["properties"])


async def test_toolsets_flag_limits_the_catalog_to_the_device_tools(daemon):
    with anyio.fail_after(30):
        async with session(daemon, "--toolsets", "devices") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}

    assert names == DEVICE_TOOLS
    assert "agentdock://runs/{run_id}" not in templates


# ---------------------------------------------------------------- running


async def test_agent_run_waits_for_the_end_and_reports_progress_while_waiting(daemon):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    with anyio.fail_after(60):
        async with session(daemon) as client:
            sid = await sandbox(client)
            run = await call(client, "agent_run", {
                "sandbox_id": sid, "prompt": "count to three",
                "command": "for i in 1 2 3; do echo $i; sleep 0.3; done"}, progress_callback=on_progress)

    assert (run["status"], run["output"], run["exit_code"], run["target_id"]) == ("succeeded", "1\n2\n3\n", 0, sid)
    assert run["provider"] == "custom" and run["finished_at"] is not None
    assert len(progress) >= 1
    values = [p[0] for p in progress]
    assert values == sorted(values) and len(set(values)) == len(values), values


async def test_async_run_returns_at_once_and_survives_the_client_that_started_it(daemon):
    # The run waits for a file that only a later session creates, so it is surely unfinished when the
    # first client exits (no race on how fast the second session starts).
    with anyio.fail_after(60):
        async with session(daemon) as first:
            sid = await sandbox(first)
            with anyio.fail_after(10):
                started = await call(first, "agent_run", {
                    "sandbox_id": sid, "prompt": "later", "timeout": 60, "async": True,
                    "command": "until [ -e go ]; do sleep 0.1; done; echo done"})
            assert started["status"] in ("queued", "running")
            assert started["finished_at"] is None and started["output"] == ""
        # the first client and its `agentdock serve` process are gone; the run is not

        async with session(daemon) as second:
            seen = await call(second, "agent_run_get", {"run_id": started["id"]})
            assert (seen["id"], seen["status"]) == (started["id"], "running")
            await call(second, "agent_run", {"sandbox_id": sid, "prompt": "release", "command": "touch go"})
            final = await wait_for_end(second, started["id"])

    assert (final["id"], final["status"], final["output"], final["exit_code"]) == (
        started["id"], "succeeded", "done\n", 0)


async def test_run_is_readable_as_a_resource(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            sid = await sandbox(client)
            run = await call(client, "agent_run", {"sandbox_id": sid, "prompt": "p", "command": "echo resource"})
            templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
            read = await client.read_resource(f"agentdock://runs/{run['id']}")

    assert "agentdock://runs/{run_id}" in templates
    assert len(read.contents) == 1
    content = read.contents[0]
    assert content.mime_type == "application/json"
    record = json.loads(content.text)  # type: ignore[union-attr]
    assert (record["id"], record["status"], record["output"]) == (run["id"], "succeeded", "resource\n")


async def test_reading_an_unknown_run_resource_is_a_not_found_error_naming_the_run(daemon):
    with anyio.fail_after(30):
        async with session(daemon) as client:
            with pytest.raises(MCPError) as info:
                await client.read_resource("agentdock://runs/run_0000000000000000dead")

    # The SDK's contract: a handler signals a missing instance with ResourceNotFoundError (-32602 with its
    # message); anything else is treated as a crash and the client only gets a generic message.
    assert info.value.code == INVALID_PARAMS
    assert "no run with id 'run_0000000000000000dead'" in info.value.message


# ---------------------------------------------------------------- bad input


BAD_RUNS = [
    pytest.param({"prompt": "p", "command": "echo x", "bogus": 1}, "invalid_input", "bogus", id="unknown-field"),
    pytest.param({"command": "echo x"}, "invalid_input", "prompt", id="missing-prompt"),
    pytest.param({"prompt": "p", "provider": "custom"}, "invalid_input", "command", id="custom-without-command"),
    pytest.param({"prompt": "p", "command": "echo x", "sandbox_id": "sbx_0000000000000000dead"}, "not_found", None,
                 id="unknown-sandbox"),
    pytest.param({"prompt": "p", "command": "echo x", "timeout": 0}, "invalid_input", "timeout", id="timeout-zero"),
]


async def test_bad_agent_run_input_is_a_tool_error_with_a_diagnostic_and_creates_nothing(daemon):
    with anyio.fail_after(30):
        async with session(daemon) as client:
            diagnostics = {case.id: await failing_call(client, "agent_run", case.values[0]) for case in BAD_RUNS}
            runs = await call(client, "agent_run_list", {})
            devices = await call(client, "sandbox_list", {})

    for case in BAD_RUNS:
        _, code, field = case.values
        diag = diagnostics[case.id]
        assert diag["code"] == code, (case.id, diag)
        if field is not None:
            assert diag["evidence"]["field"] == field, (case.id, diag)
            assert field in diag["message"], (case.id, diag)
        else:
            assert diag["evidence"]["id"] == "sbx_0000000000000000dead", (case.id, diag)
    assert runs["data"] == []
    assert devices["data"] == []


async def test_unknown_field_diagnostic_lists_the_fields_by_the_names_the_schema_uses(daemon):
    with anyio.fail_after(30):
        async with session(daemon) as client:
            schema = next(t for t in (await client.list_tools()).tools if t.name == "agent_run").input_schema
            diag = await failing_call(client, "agent_run", {"prompt": "p", "command": "echo x", "bogus": 1})

    known = diag["message"].split("known fields are: ", 1)[1].split(", ")
    assert sorted(known) == sorted(schema["properties"])


# ---------------------------------------------------------------- cancel, events, artifacts


async def test_agent_run_cancel_settles_a_long_run_as_canceled(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            sid = await sandbox(client)
            run = await call(client, "agent_run", {"sandbox_id": sid, "prompt": "forever", "command": "sleep 1000",
                                                   "async": True})
            canceled = await call(client, "agent_run_cancel", {"run_id": run["id"]})
            again = await call(client, "agent_run_get", {"run_id": run["id"]})

    assert (canceled["id"], canceled["status"], canceled["failure_kind"]) == (run["id"], "canceled", "canceled")
    assert canceled["finished_at"] is not None
    assert again["status"] == "canceled"


async def test_agent_run_events_are_numbered_one_to_n_from_queued_to_finished(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            sid = await sandbox(client)
            run = await call(client, "agent_run", {"sandbox_id": sid, "prompt": "p",
                                                   "command": "echo one; sleep 0.3; echo two >&2; exit 0"})
            page = await call(client, "agent_run_events", {"run_id": run["id"]})
            tail = await call(client, "agent_run_events", {"run_id": run["id"], "after_sequence": 2})

    events = page["data"]
    seqs = [e["sequence"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert events[0]["type"] == "run_queued" and events[-1]["type"] == "run_finished"
    assert {"run_started", "output", "stderr"} <= {e["type"] for e in events}
    assert all(e["agent_run_id"] == run["id"] for e in events)
    assert page["next_after_sequence"] == len(seqs) and page["run_status"] == "succeeded"
    assert [e["sequence"] for e in tail["data"]] == seqs[2:]


async def test_agent_run_artifacts_lists_an_exported_file_and_reads_it_as_text(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            sid = await sandbox(client)
            run = await call(client, "agent_run", {
                "sandbox_id": sid, "prompt": "p", "metadata": {"artifact_paths": ["out/report.txt"]},
                "command": "mkdir -p out && printf 'hello artifact\\n' > out/report.txt"})
            listing = await call(client, "agent_run_artifacts", {"run_id": run["id"]})
            by_listed_path = await call(client, "agent_run_artifacts",
                                        {"run_id": run["id"], "path": "/workspace/out/report.txt"})

    assert run["status"] == "succeeded"
    assert [a["path"] for a in listing["data"]] == ["/workspace/out/report.txt"]
    assert listing["data"][0]["size"] == len("hello artifact\n")
    assert listing["content"] is None
    assert by_listed_path["content"] == {"path": "/workspace/out/report.txt", "size": 15, "encoding": "utf-8",
                                         "content": "hello artifact\n"}


async def test_agent_run_artifacts_reads_a_file_by_the_relative_path_it_was_exported_under(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            sid = await sandbox(client)
            run = await call(client, "agent_run", {
                "sandbox_id": sid, "prompt": "p", "metadata": {"artifact_paths": ["out/report.txt"]},
                "command": "mkdir -p out && printf 'relative\\n' > out/report.txt"})
            result = await client.call_tool("agent_run_artifacts", {"run_id": run["id"], "path": "out/report.txt"})

    assert not result.is_error, result.structured_content
    assert result.structured_content["content"]["content"] == "relative\n"


# ---------------------------------------------------------------- ephemeral and structured runtimes


async def test_ephemeral_run_without_a_target_succeeds_and_leaves_no_device(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            run = await call(client, "agent_run", {"prompt": "p", "command": "echo ephemeral"})
            devices = await call(client, "sandbox_list", {})
            # The sandbox is removed (container, then record) just after the run settles; no event marks
            # that, so poll for the record to go, bounded.
            with anyio.fail_after(15):
                while not (gone := await client.call_tool("sandbox_get", {"sandbox_id": run["target_id"]})).is_error:
                    await anyio.sleep(0.1)
            containers = owned_containers(daemon.settings.home)

    assert (run["status"], run["output"], run["ephemeral"], run["target_kind"]) == (
        "succeeded", "ephemeral\n", True, "sandbox")
    assert run["target_id"].startswith("sbx_")
    assert devices["data"] == []
    assert tool_error(gone)["code"] == "not_found"
    assert containers == []


async def test_claude_code_run_through_mcp_gives_its_answer_and_tool_use_events(daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            sid = await sandbox(client)
            run = await call(client, "agent_run", {"sandbox_id": sid, "provider": "claude-code",
                                                   "prompt": "write a haiku"})
            events = await call(client, "agent_run_events", {"run_id": run["id"]})

    assert (run["status"], run["provider"], run["output"]) == ("succeeded", "claude-code", "Done: write a haiku")
    types = [e["type"] for e in events["data"]]
    assert "tool_use" in types
    tool_use = next(e for e in events["data"] if e["type"] == "tool_use")
    assert "Bash" in json.dumps(tool_use)


async def test_agent_run_returns_a_run_still_going_once_its_wait_bound_passes_and_the_run_goes_on(daemon):
    daemon.env["AGENTDOCK_MCP_MAX_WAIT_SECONDS"] = "2"
    async with session(daemon) as client:
        with anyio.fail_after(30):
            run = await call(client, "agent_run", {"prompt": "p", "command": "echo begun; sleep 1000"})
        assert run["status"] == "running"
        cancelled = await call(client, "agent_run_cancel", {"run_id": run["id"]})
    assert cancelled["status"] == "canceled"
