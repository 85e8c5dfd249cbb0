"""The one mapping from exceptions to MCP tool errors."""

from __future__ import annotations

import re

import anyio
import pytest
from mcp import Client

from engine import errors
from engine.app import Engine
from engine.callers import ROOT
from engine.settings import Settings
from mcp_server import mcp_app, mcp_tools
from mcp_server.api import InProcessAPI
from runtimes import adapters
from runtimes.fake import FakeBackend
from tests.conftest import tool_error


def test_an_engine_error_inside_a_task_group_is_mapped_as_that_error_not_as_an_internal_one():
    grouped = ExceptionGroup("unhandled errors in a TaskGroup",
                             [errors.SandboxUnavailable("the daemon went away", suggested_command="agentdock daemon start")])

    diag = tool_error(mcp_tools.error_result(grouped))

    assert (diag["code"], diag["message"], diag["suggested_command"]) == (
        "sandbox_unavailable", "the daemon went away", "agentdock daemon start")


def test_an_unexpected_error_is_a_generic_diagnostic_without_its_internals():
    result = mcp_tools.error_result(ExceptionGroup("two", [KeyError("secret-key"), ValueError("x")]))

    diag = tool_error(result)
    assert diag["code"] == "internal_error" and diag["id"].startswith("diag_")
    assert "secret-key" not in result.content[0].text


def engine_for(tmp_path) -> Engine:
    return Engine(Settings(home=tmp_path, image="fake:latest"), backend=FakeBackend(), harnesses=adapters.get)


def unknown_id(pattern: str) -> str | None:
    """An id of the shape `pattern` asks for that names no record, or None when `pattern` is no id's."""
    prefix = re.match(r"\^(?:\(\?:)?([a-z]+)", pattern)
    value = f"{prefix.group(1)}_{'0' * 16}dead" if prefix else ""
    return value if prefix and re.fullmatch(pattern, value) else None


def wrong_type(schema: dict) -> object:
    return 7 if schema.get("type") in ("object", "array", "string", "boolean") else {"not": ["a", "number"]}


@pytest.mark.anyio
async def test_every_tool_answers_junk_and_unknown_ids_with_an_error_every_client_accepts(tmp_path):
    """Over a real MCP client session: every tool, called with an unknown field, with every field of the
    wrong type, and (when all it needs is ids) with well-formed ids that name nothing, answers `isError`
    with the diagnostic as its text and no structured content; the client raises nothing."""
    async with engine_for(tmp_path).running() as engine:
        server = mcp_app.build(InProcessAPI(engine, ROOT), engine.settings, mcp_app.TOOLSETS)
        with anyio.fail_after(30):
            async with Client(server) as client:
                tools = (await client.list_tools()).tools
                unknown, typed, missing = {}, {}, {}
                for tool in tools:
                    props = tool.input_schema.get("properties", {})
                    unknown[tool.name] = tool_error(await client.call_tool(tool.name, {"junk_xyz": [1, {"a": None}]}))
                    if any("type" in p for p in props.values()):
                        args = {name: wrong_type(p) for name, p in props.items()}
                        typed[tool.name] = tool_error(await client.call_tool(tool.name, args))
                    required = tool.input_schema.get("required", [])
                    ids = {name: unknown_id(props[name].get("pattern", "")) for name in required}
                    if required and all(ids.values()):
                        missing[tool.name] = tool_error(await client.call_tool(tool.name, ids))

    assert len(tools) >= 40
    assert {name: d["code"] for name, d in unknown.items()} == {t.name: "invalid_input" for t in tools}
    named = {t.name: {"junk_xyz", *t.input_schema.get("required", [])} for t in tools}  # the first problem found
    assert {n: d["evidence"]["field"] for n, d in unknown.items() if d["evidence"]["field"] not in named[n]} == {}
    assert set(typed) >= {"agent_run", "group_dispatch", "agent_spawn", "task_create", "channel_send"}
    assert {name: d["code"] for name, d in typed.items()} == dict.fromkeys(typed, "invalid_input")
    assert set(missing) >= {"agent_run_get", "sandbox_get", "group_get", "task_get", "profile_get", "approval_get"}
    assert {name: d["code"] for name, d in missing.items()} == dict.fromkeys(missing, "not_found")
