"""Souls end to end: through a real MCP client session (`agentdock serve` over stdio), the daemon's real
HTTP app on its control socket, and the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.conftest import Daemon
from tests.e2e.test_http import diagnostic, http
from tests.e2e.test_mcp import call, failing_call, session

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SOUL = "/api/agent/soul"
GOOD = "---\nrole: Reviews code\ntone: [calm, terse]\nversion: '1'\n---\nYou review code.\n"
BROKEN = "---\nrole: 42\ntonne: [calm]\ntags:\n  - ok\n  - {x: 1}\n---\nBody\n"
BROKEN_PLACES = [("wrong_type", 2, 7, "role", "error"), ("unknown_key", 3, 1, "tonne", "error"),
                 ("wrong_type", 6, 5, "tags[1]", "error")]
CLAUDE = ("---\nname: code-reviewer\ndescription: Reviews code for bugs.\ntools: Read, Grep\nmodel: sonnet\n---\n"
          "You are a senior code reviewer.\n")
SEED_FIELDS = {"active", "agent_name", "body", "config_provenance", "created_at", "diagnostics", "digest", "enabled",
               "frontmatter", "limits", "present", "revision_id", "snapshot_id", "source_path", "truncated", "valid",
               "validation_status"}


def places(soul: dict) -> list[tuple]:
    return [(d["code"], d["line"], d["column"], d["field"], d["severity"]) for d in soul["diagnostics"]]


def souls_dir(daemon: Daemon) -> Path:
    return daemon.settings.home / "souls"


def write_soul(daemon: Daemon, name: str, text: str) -> Path:
    souls_dir(daemon).mkdir(exist_ok=True)
    path = souls_dir(daemon) / f"{name}.md"
    path.write_text(text)
    return path


async def test_soul_tools_through_a_real_mcp_session(daemon: Daemon):
    with anyio.fail_after(60):
        async with session(daemon) as client:
            missing = await call(client, "soul_get", {})
            write_soul(daemon, "agentdock", GOOD)
            mine = await call(client, "soul_get", {})
            broken = await call(client, "soul_validate", {"content": BROKEN, "agent_name": "helper"})
            stored = await call(client, "soul_validate", {})
            bad_name = await failing_call(client, "soul_get", {"agent_name": "../agentdock"})
            unknown = await failing_call(client, "soul_validate", {"content": GOOD, "path": "/etc/passwd"})
            resource = json.loads((await client.read_resource("agentdock://souls/agentdock")).contents[0].text)

    assert (missing["present"], missing["validation_status"], missing["agent_name"]) == (False, "missing", "agentdock")
    assert SEED_FIELDS <= set(mine)
    assert (mine["valid"], mine["active"], mine["frontmatter"]["tone"], mine["body"]) == (
        True, True, ["calm", "terse"], "You review code.\n")
    assert (broken["valid"], broken["validation_status"], broken["agent_name"]) == (False, "invalid", "helper")
    assert places(broken) == BROKEN_PLACES
    assert stored["validation_status"] == "valid" and stored["digest"] == mine["digest"]
    assert (bad_name["code"], bad_name["evidence"]["field"]) == ("invalid_input", "agent_name")
    assert (unknown["code"], unknown["evidence"]["field"]) == ("invalid_input", "path")
    assert resource["digest"] == mine["digest"]
    assert sorted(p.name for p in souls_dir(daemon).iterdir()) == ["agentdock.md"]  # validate stored nothing


async def test_soul_routes_through_the_real_http_app(daemon: Daemon):
    write_soul(daemon, "helper", GOOD)
    with anyio.fail_after(60):
        async with http(daemon) as client:
            missing = await client.get(SOUL)
            helper = await client.get(SOUL, params={"agent_name": "helper"})
            valid = await client.post(f"{SOUL}/validate", json={"content": GOOD})
            wrapped = await client.post(f"{SOUL}/validate", json={"data": {"content": BROKEN}})
            stored = await client.post(f"{SOUL}/validate", json={"agent_name": "helper"})
            bad_name = await client.get(SOUL, params={"agent_name": "a/../b"})
            extra = await client.get(SOUL, params={"snapshot_id": "snap_0000000000000000dead"})
            unknown = await client.post(f"{SOUL}/validate", json={"content": GOOD, "store": True})
            wrong_type = await client.post(f"{SOUL}/validate", json={"content": 5})
            imported = await client.post(f"{SOUL}/import", json={"content": CLAUDE})
            again = await client.post(f"{SOUL}/import", json={"content": CLAUDE})

    assert missing.status_code == 200 and missing.json()["validation_status"] == "missing"
    assert helper.status_code == 200 and SEED_FIELDS <= set(helper.json())  # the soul itself, as in the seed
    assert helper.json()["frontmatter"]["role"] == "Reviews code"
    assert valid.status_code == 200 and valid.json()["valid"] is True
    assert wrapped.status_code == 422 and places(wrapped.json()) == BROKEN_PLACES
    assert stored.status_code == 200 and stored.json()["digest"] == helper.json()["digest"]
    assert diagnostic(bad_name, 400, "invalid_input")["evidence"]["field"] == "agent_name"
    assert diagnostic(extra, 400, "invalid_input")["evidence"]["field"] == "snapshot_id"
    assert diagnostic(unknown, 400, "invalid_input")["evidence"]["field"] == "store"
    assert diagnostic(wrong_type, 400, "invalid_input")["evidence"]["field"] == "content"
    assert imported.status_code == 201 and imported.json()["written"] is True
    assert diagnostic(again, 409, "conflict")["evidence"]["field"] == "force"
    assert sorted(p.name for p in souls_dir(daemon).iterdir()) == ["code-reviewer.md", "helper.md"]


async def test_soul_cli_validate_get_and_import(daemon: Daemon, tmp_path: Path):
    broken = tmp_path / "broken.md"
    broken.write_text(BROKEN)
    agent = tmp_path / "reviewer.md"
    agent.write_text(CLAUDE)
    with anyio.fail_after(120):
        checked = await anyio.to_thread.run_sync(lambda: daemon.cli("soul", "validate", str(broken), check=False))
        checked_json = await anyio.to_thread.run_sync(
            lambda: daemon.cli("soul", "validate", str(broken), "--json", check=False))
        imported = await anyio.to_thread.run_sync(lambda: daemon.cli("soul", "import", str(agent), "--json",
                                                                     check=False))
        refused = await anyio.to_thread.run_sync(lambda: daemon.cli("soul", "import", str(agent), "--json",
                                                                    check=False))
        forced = await anyio.to_thread.run_sync(lambda: daemon.cli("soul", "import", str(agent), "--name", "rev",
                                                                   "--force", check=False))
        got = await anyio.to_thread.run_sync(lambda: daemon.cli("soul", "get", "code-reviewer", "--json",
                                                                check=False))
        shown = await anyio.to_thread.run_sync(lambda: daemon.cli("soul", "get", "rev", check=False))
        no_file = await anyio.to_thread.run_sync(lambda: daemon.cli("soul", "validate", str(tmp_path / "none.md"),
                                                                    "--json", check=False))

    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert f"{broken}:2:7: error: role must be text" in checked.stdout
    assert f"{broken}:3:1: error: unknown field 'tonne'" in checked.stdout
    assert checked_json.returncode == 1 and places(json.loads(checked_json.stdout)) == BROKEN_PLACES
    assert imported.returncode == 0, imported.stdout + imported.stderr
    result = json.loads(imported.stdout)
    assert result["written"] and result["path"] == str(souls_dir(daemon) / "code-reviewer.md")
    assert refused.returncode == 1 and json.loads(refused.stdout)["diagnostic"]["code"] == "conflict"
    assert forced.returncode == 0 and "wrote" in forced.stdout and (souls_dir(daemon) / "rev.md").exists()
    soul = json.loads(got.stdout)
    assert (soul["valid"], soul["frontmatter"]["role"]) == (True, "Reviews code for bugs.")
    assert soul["frontmatter"]["tags"] == ["claude-code", "model:sonnet", "tool:Read", "tool:Grep"]
    assert shown.returncode == 0 and "valid (active)" in shown.stdout
    assert no_file.returncode == 1 and json.loads(no_file.stdout)["diagnostic"]["evidence"]["field"] == "FILE"
