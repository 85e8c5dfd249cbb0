"""The MCP tools speak only `AgentDockAPI`: the same tool calls give the same answers over the daemon
client (a real `agentdock serve` over stdio, a real daemon) and over the in-process adapter (an engine
in this process, through the SDK's in-memory client)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from engine.callers import ROOT
from engine.settings import Settings
from mcp_server import mcp_app
from mcp_server.api import InProcessAPI
from runtimes.wiring import docker_engine
from tests.conftest import SMALL, Daemon, remove_owned_containers
from tests.e2e.test_mcp import call, failing_call, session

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

UNKNOWN_RUN = "run_0000000000000000dead"
TOKEN = re.compile(r"\b(?:run|sbx|cmp|evt|diag|[a-z]{2,6})_[0-9a-f]{12,}\b")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?")


MEASURED = re.compile(r'"(memory_peak_bytes|pids_peak)": \d+')


def normalized(value: Any) -> Any:
    """`value` with each record id replaced by its order of first appearance and every time by `<t>`:
    what two runs of the same calls on two homes can have in common."""
    text = json.dumps(value, sort_keys=True)
    seen: dict[str, str] = {}
    text = TOKEN.sub(lambda m: seen.setdefault(m.group(), f"<id{len(seen)}>"), text)
    text = MEASURED.sub(lambda m: f'"{m[1]}": "<measured>"', text)  # a run's peaks differ from run to run
    return json.loads(TIME.sub("<t>", text))


async def scenario(client: Client) -> tuple[dict[str, Any], int]:
    """The same tool calls, in order; their results and how many progress notifications came."""
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    out: dict[str, Any] = {}
    out["sandbox_create"] = await call(client, "sandbox_create", {"name": "parity"})
    sid = out["sandbox_create"]["id"]
    out["agent_run"] = await call(client, "agent_run", {
        "sandbox_id": sid, "prompt": "p", "metadata": {"artifact_paths": ["out.txt"]},
        "command": "printf 'parity\\n' > out.txt && echo done"}, progress_callback=on_progress)
    rid = out["agent_run"]["id"]
    out["agent_run_get"] = await call(client, "agent_run_get", {"run_id": rid})
    events = await call(client, "agent_run_events", {"run_id": rid})
    out["agent_run_events"] = [(e["sequence"], e["type"]) for e in events["data"]] + [events["run_status"]]
    out["agent_run_list"] = await call(client, "agent_run_list", {"target_id": sid})
    out["agent_run_artifacts"] = await call(client, "agent_run_artifacts", {"run_id": rid, "path": "out.txt"})
    out["resource"] = json.loads((await client.read_resource(f"agentdock://runs/{rid}")).contents[0].text)
    # the wait bound (2 s here) passes: the run comes back still running, and goes on until canceled
    out["agent_run_bounded"] = await call(client, "agent_run", {"sandbox_id": sid, "prompt": "p",
                                                                "command": "echo begun; sleep 1000"})
    out["agent_run_cancel"] = await call(client, "agent_run_cancel", {"run_id": out["agent_run_bounded"]["id"]})
    out["unknown_run"] = await failing_call(client, "agent_run_get", {"run_id": UNKNOWN_RUN})
    out["bad_timeout"] = await failing_call(client, "agent_run", {"prompt": "p", "command": "true", "timeout": 0})
    out["sandbox_delete"] = await call(client, "sandbox_delete", {"sandbox_id": sid})
    out["sandbox_list"] = await call(client, "sandbox_list", {})
    out["soul_validate"] = await call(client, "soul_validate", {"content": "---\nrole: 42\ntone: calm\n---\nbody\n"})
    out["soul_bad_name"] = await failing_call(client, "soul_get", {"agent_name": "../x"})
    return out, len(progress)


async def test_the_same_tool_calls_answer_the_same_over_the_daemon_and_in_process(daemon: Daemon):
    daemon.env["AGENTDOCK_MCP_MAX_WAIT_SECONDS"] = "2"
    with anyio.fail_after(90):
        async with session(daemon) as client:
            over_daemon, daemon_progress = await scenario(client)

    home = Path(tempfile.mkdtemp(prefix="ad-", dir="/tmp"))  # its own home: two engines never share one
    settings = Settings(home=home, image=SMALL, cancel_grace_seconds=1.0, mcp_max_wait_seconds=2)
    try:
        with anyio.fail_after(90):
            async with docker_engine(settings).running() as engine, \
                    Client(mcp_app.build(InProcessAPI(engine, ROOT), settings)) as client:
                in_process, local_progress = await scenario(client)
    finally:
        remove_owned_containers(home)
        shutil.rmtree(home, ignore_errors=True)

    assert over_daemon["agent_run"]["status"] == "succeeded", over_daemon["agent_run"]
    assert over_daemon["agent_run_artifacts"]["content"]["content"] == "parity\n"
    assert (over_daemon["agent_run_bounded"]["status"], over_daemon["agent_run_cancel"]["status"]) == (
        "running", "canceled")
    assert over_daemon["unknown_run"]["code"] == "not_found"
    assert over_daemon["bad_timeout"]["evidence"]["field"] == "timeout"
    assert [(d["code"], d["line"], d["column"]) for d in over_daemon["soul_validate"]["diagnostics"]] == [
        ("wrong_type", 2, 7), ("coerced", 3, 7)]
    assert over_daemon["soul_bad_name"]["evidence"]["field"] == "agent_name"
    for name in over_daemon:
        assert normalized(in_process[name]) == normalized(over_daemon[name]), name
    assert daemon_progress >= 1 and local_progress >= 1
