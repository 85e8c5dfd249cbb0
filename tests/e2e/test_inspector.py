"""A third-party client: the MCP Inspector's CLI lists our tools (with its `--strict` schema portability
check), calls one through `agentdock serve`, and shows a failed call's diagnostic."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import AGENTDOCK, Daemon

pytestmark = pytest.mark.docker
INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
"""The newest: its package asks for Node 22, but its CLI runs on this machine's Node 20."""
VALIDATING_INSPECTOR = "@modelcontextprotocol/inspector@0.17.2"
"""An older CLI that checks an error result's structured content against the tool's output schema, so it
refused the result (exit 1, no diagnostic shown) while errors carried `{diagnostic, error}` there."""
TOOL_IS_ERROR_EXIT = 5
"""How Inspector 2.x exits when the tool answered `isError` (it still prints the result)."""
UNKNOWN_RUN = "run_0000000000000000dead"


def inspector(daemon: Daemon, *args: str, version: str = INSPECTOR) -> subprocess.CompletedProcess[str]:
    npx = shutil.which("npx")
    assert npx, "npx is needed for the MCP Inspector check (Node.js is on every machine of this kind)"
    # The Inspector starts the server with a minimal environment (as `claude mcp add` does): AGENTDOCK_HOME
    # would not reach it, so the home is said with --home, as the README's install line does.
    home = str(daemon.settings.home)
    return subprocess.run([npx, "--yes", version, "--cli", AGENTDOCK, "serve", "--home", home, *args],
                          env=daemon.env, capture_output=True, text=True, timeout=300)


def answered(proc: subprocess.CompletedProcess[str], exit_code: int = 0) -> dict:
    assert proc.returncode == exit_code, f"inspector exited {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def test_the_mcp_inspector_lists_every_tool_with_schemas_and_runs_one(daemon: Daemon) -> None:
    tools = answered(inspector(daemon, "--method", "tools/list"))["tools"]
    assert {t["name"] for t in tools} >= {"sandbox_create", "agent_run", "agent_run_events"}
    assert all(t["inputSchema"]["type"] == "object" and "outputSchema" in t for t in tools)

    result = answered(inspector(daemon, "--method", "tools/call", "--tool-name", "agent_run",
                                "--tool-arg", "prompt=hi", "--tool-arg", "command=echo hello from $AGENTDOCK_PROMPT"))
    assert not result.get("isError"), result
    run = result["structuredContent"]
    assert (run["status"], run["output"]) == ("succeeded", "hello from hi\n")


def test_the_inspectors_strict_check_finds_no_schema_portability_problem(daemon: Daemon) -> None:
    proc = inspector(daemon, "--method", "tools/list", "--strict")
    assert len(answered(proc)["tools"]) >= 40
    assert "Warning" not in proc.stderr and "Issue:" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("version", [INSPECTOR, VALIDATING_INSPECTOR])
def test_the_mcp_inspector_shows_a_failed_calls_diagnostic(daemon: Daemon, version: str) -> None:
    proc = inspector(daemon, "--method", "tools/call", "--tool-name", "agent_run_get", "--tool-arg",
                     f"run_id={UNKNOWN_RUN}", version=version)
    result = answered(proc, TOOL_IS_ERROR_EXIT if version == INSPECTOR else 0)
    assert result["isError"] is True and "structuredContent" not in result, result
    body = json.loads(result["content"][0]["text"])
    assert (body["diagnostic"]["code"], body["diagnostic"]["evidence"]["id"]) == ("not_found", UNKNOWN_RUN)
    assert body["error"] == body["diagnostic"]["message"] and UNKNOWN_RUN in body["error"]
