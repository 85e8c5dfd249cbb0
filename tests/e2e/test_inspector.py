"""A third-party client: the MCP Inspector's CLI lists our tools and calls one through `agentdock serve`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.conftest import AGENTDOCK, Daemon

pytestmark = pytest.mark.docker
INSPECTOR = "@modelcontextprotocol/inspector@0.17.2"  # later majors need Node 22; this machine has 20


def inspector(daemon: Daemon, *args: str) -> dict:
    npx = shutil.which("npx")
    assert npx, "npx is needed for the MCP Inspector check (Node.js is on every machine of this kind)"
    proc = subprocess.run([npx, "--yes", INSPECTOR, "--cli", AGENTDOCK, "serve", *args], env=daemon.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"inspector failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def test_the_mcp_inspector_lists_every_tool_with_schemas_and_runs_one(daemon: Daemon) -> None:
    tools = inspector(daemon, "--method", "tools/list")["tools"]
    assert {t["name"] for t in tools} >= {"sandbox_create", "agent_run", "agent_run_events"}
    assert all(t["inputSchema"]["type"] == "object" and "outputSchema" in t for t in tools)

    result = inspector(daemon, "--method", "tools/call", "--tool-name", "agent_run",
                       "--tool-arg", "prompt=hi", "--tool-arg", "command=echo hello from $AGENTDOCK_PROMPT")
    assert not result.get("isError"), result
    run = result["structuredContent"]
    assert (run["status"], run["output"]) == ("succeeded", "hello from hi\n")
