"""`make demo` end to end: `python -m mcp_server.demo` on a fresh home, as a subprocess. It must say that
everything came back as expected, nothing on the way may log an exception (not the demo, not the
`agentdock serve` it drives, whose stderr is the demo's, not the daemon that serve starts), and the story
it tells must have happened: the daemon it leaves running is asked afterwards, over control.sock."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.settings import Settings
from mcp_server import daemon as daemon_mod
from tests.conftest import ROOT, logged_errors, remove_owned_containers

pytestmark = pytest.mark.docker

PRIMES_BELOW = {50_000: 5133, 80_000: 7837}
CHILDREN = ("demo-ada", "demo-grace")


@dataclass
class Demo:
    done: subprocess.CompletedProcess[str]
    """The demo's run: its exit code, stdout (the story it printed) and stderr (its own and serve's)."""
    client: httpx.Client
    """The daemon it started and left running, over control.sock."""
    settings: Settings


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """One run of the demo on a fresh home, for every test here to question (it takes a while)."""
    home = Path(tempfile.mkdtemp(prefix="ad-", dir="/tmp"))  # short: Unix socket paths are at most 108 bytes
    settings = Settings(home=home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTDOCK_") and k != "ANTHROPIC_API_KEY"}
    env.update(AGENTDOCK_HOME=str(home),  # the agent CLIs' packages are fetched once, not per home
               AGENTDOCK_CACHE=os.environ.get("AGENTDOCK_CACHE") or str(Path.home() / ".agentdock" / "cache"))
    try:
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "mcp_server.demo"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        transport = httpx.HTTPTransport(uds=str(settings.control_socket))
        with httpx.Client(transport=transport, base_url="http://agentdock", timeout=60) as client:
            yield Demo(done, client, settings)
    finally:
        daemon_mod.stop(settings)  # the demo leaves its daemon running, as it tells its user
        remove_owned_containers(home)
        shutil.rmtree(home, ignore_errors=True)


def get(client: httpx.Client, path: str, **query: Any) -> Any:
    resp = client.get(path, params=query)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_demo_runs_end_to_end_and_nothing_on_the_way_logs_an_exception(demo: Demo) -> None:
    done, settings = demo.done, demo.settings
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "demo: everything came back as expected" in done.stdout
    assert logged_errors(done.stderr) == [], done.stderr[-3000:]
    log = daemon_mod.log_path(settings).read_text()
    assert f"serving on {settings.control_socket}" in log  # the daemon the demo started, on this home
    assert logged_errors(log) == [], log[-3000:]


def test_two_children_each_claimed_completed_and_reported_one_task_and_the_demo_read_it_all(demo: Demo) -> None:
    done, client = demo.done, demo.client
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    children = {s["agent_name"]: s for s in get(client, "/api/v1/sessions")["data"] if s["agent_name"] in CHILDREN}
    assert sorted(children) == sorted(CHILDREN)
    for child in children.values():
        assert child["lineage"]["parent_session_id"] == "ses_root" and child["profile_id"], child
        assert child["state"] == "stopped"  # the demo's cleanup
        run = get(client, f"/api/v1/agent-runs/{child['run_id']}")["data"]
        assert run["status"] == "succeeded", run

    tasks = [get(client, f"/api/v1/tasks/{t['id']}")["data"] for t in get(client, "/api/v1/tasks")["data"]]
    assert len(tasks) == 2
    by = {}
    for task in tasks:
        assert task["status"] == "completed" and task["result"] == {"primes": PRIMES_BELOW[task["payload"]["below"]]}
        assert [r["status"] for r in task["runs"]] == ["completed"], task["runs"]
        by[task["id"]] = task["runs"][0]["session_id"]
    assert sorted(by.values()) == sorted(c["id"] for c in children.values())  # one task each

    family = next(c for c in get(client, "/api/agent/channels")["channels"] if c["channel"] == "family:ses_root")
    messages = get(client, f"/api/agent/channels/{family['id']}/recv", after_sequence=0)["messages"]
    for name, child in children.items():
        sent = [m for m in messages if m["from_session_id"] == child["id"]]
        assert [m["metadata"]["message_kind"] for m in sent] == ["progress", "result"], sent
        task_id = next(t for t, s in by.items() if s == child["id"])
        assert {m["metadata"]["task_id"] for m in sent} == {task_id}
        result = sent[1]["body"]
        assert result["primes"] == next(t["result"]["primes"] for t in tasks if t["id"] == task_id)
        soul = get(client, "/api/agent/soul", agent_name=name)
        assert soul["validation_status"] == "valid" and result["soul_digest"] == soul["digest"]
        assert f"{soul['digest'][:23]}..., the same one the child reported" in done.stdout  # soul_get, read back
        assert f"{name:<10} result   " in done.stdout  # channel_recv, as it came
    assert get(client, f"/api/agent/channels/{family['id']}/recv")["messages"] == []  # the demo received them all


def test_the_group_ran_under_the_profile_with_progress_and_masked_the_secret_it_printed(demo: Demo) -> None:
    done, client = demo.done, demo.client
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [group] = get(client, "/api/v1/agent-run-groups")["data"]
    assert group["status"] == "succeeded" and group["workspace_id"].startswith("demo-")
    counts = group["entry_counts"]
    assert (counts["total"], counts["succeeded"]) == (3, 3), counts
    entries = get(client, f"/api/v1/agent-run-groups/{group['id']}/runs")["data"]
    roles = {e["orchestration_role"]: get(client, f"/api/v1/agent-runs/{e['run_id']}")["data"] for e in entries}
    assert sorted(roles) == ["counter", "keyholder", "reporter"]
    assert all(r["profile_id"] and r["secrets"] == ["DEMO_API_KEY"] for r in roles.values()), roles
    assert roles["counter"]["output"] == "25\n"
    assert roles["keyholder"]["output"] == ("hello from the profile: DEMO_API_KEY is set, 32 characters\n"
                                            "and printed by accident: ********\n")
    assert [a["path"] for a in get(client, f"/api/v1/agent-runs/{roles['reporter']['id']}/artifacts")["data"]] == [
        "/workspace/out/report.html"]

    story = done.stdout
    dispatch = story[story.index("group_dispatch"):story.index("done: True")]
    assert re.search(r"progress [012]/3 ", dispatch), dispatch  # printed while the entries ran,
    assert "progress 3/3 " in dispatch, dispatch  # and as they ended, before the dispatch returned
    events = story[story.index("== group_events"):story.index("== a run that fails")]
    assert "group_finished" in events and events.count("entry_finished") == 3

    runs = get(client, "/api/v1/agent-runs", limit=100)["data"]
    assert {(r["provider"], r["failure_kind"]) for r in runs} >= {("custom", "nonzero_exit"),
                                                                  ("claude-code", "auth_required")}
    assert get(client, "/api/v1/agent-runtime-profiles")["data"] == []  # deleted by the demo's cleanup
    assert not (demo.settings.secrets_dir / "DEMO_API_KEY").exists()  # removed by it too
