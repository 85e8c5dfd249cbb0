"""Agent runtime profiles end to end: the HTTP routes on a real daemon (both sockets), the CLI, and
`confirm-risky` turning a session's risky calls into pending approvals (tests/e2e/test_approvals.py
follows them to a person's decision)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from tests.conftest import Daemon, owned_containers
from tests.e2e.test_agent_socket import agent
from tests.e2e.test_http import RUNS, diagnostic, http
from tests.e2e.test_mcp import call

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

PROFILES = "/api/v1/agent-runtime-profiles"
GROUPS = "/api/v1/agent-run-groups"
SEED_BODY = {
    "workspace_id": "ws_123", "name": "Default app builder", "runtime": "claude-code",
    "description": "Builds apps in /workspace and exports deliverables.",
    "applies_to": {"resources": ["sandbox", "computer"]},
    "tools": ["files", "exec", "previews", "artifacts", "browser"],
    "connectors": ["refero/design-research", "anthropic/workspace-claude"],
    "env": {"ANTHROPIC_MODEL": "claude-sonnet-4.6", "MIOSA_AGENT_CWD": "/workspace"},
    "policy": {"approval": "confirm-risky", "max_child_sandboxes": 5},
    "metadata": {"product_agent": "app-builder"}, "is_default": True,
}


async def test_the_seed_example_round_trips_through_every_http_route(daemon: Daemon):
    async with http(daemon) as client:
        made = await client.post(PROFILES, json=SEED_BODY)
        assert made.status_code == 201, made.text
        profile = made.json()["data"]
        assert profile["id"].startswith("arp_")
        assert {k: profile[k] for k in SEED_BODY} == SEED_BODY
        assert profile["created_at"] and profile["updated_at"]
        tenant = (await client.post(PROFILES, json={"name": "t", "runtime": "codex"})).json()["data"]

        got = await client.get(f"{PROFILES}/{profile['id']}")
        assert got.status_code == 200 and got.json() == {"data": profile}
        listed = await client.get(PROFILES)
        assert [p["id"] for p in listed.json()["data"]] == [tenant["id"], profile["id"]]
        filtered = await client.get(PROFILES, params={"workspace_id": "ws_123"})
        assert [p["id"] for p in filtered.json()["data"]] == [profile["id"]]

        put = await client.put(f"{PROFILES}/{profile['id']}", json={"model": "opus", "env": {"A": "1"}})
        assert put.status_code == 200, put.text
        updated = put.json()["data"]
        assert (updated["model"], updated["env"], updated["name"]) == ("opus", {"A": "1"}, profile["name"])

        gone = await client.delete(f"{PROFILES}/{profile['id']}")
        assert gone.status_code == 200 and gone.json()["data"]["id"] == profile["id"]
        diagnostic(await client.get(f"{PROFILES}/{profile['id']}"), 404, "not_found")


async def test_bad_profiles_over_http_are_diagnostics_naming_the_field_and_write_nothing(daemon: Daemon):
    async with http(daemon) as client:
        dup = {"name": "dup", "runtime": "pi"}
        assert (await client.post(PROFILES, json=dup)).status_code == 201
        cases = [
            (dup, 409, "name"),
            ({"name": "x", "runtime": "gpt"}, 400, "runtime"),
            ({"name": "x", "runtime": "pi", "shell": True}, 400, "shell"),
            ({"name": "x", "runtime": "pi", "env": {"OPENAI_API_KEY": "sk-live-abc"}}, 400, "env.OPENAI_API_KEY"),
            ({"name": "x", "runtime": "pi", "secrets": ["NEVER_SET"]}, 400, "secrets.0"),
            ({"name": "x", "runtime": "pi", "tools": ["files", "root"]}, 400, "tools.1"),
        ]
        for body, status, field in cases:
            diag = diagnostic(await client.post(PROFILES, json=body), status)
            assert diag["evidence"]["field"] == field, (body, diag)
        secretish = diagnostic(await client.post(PROFILES, json=cases[3][0]), 400)
        assert secretish["suggested_command"] == "agentdock secrets set OPENAI_API_KEY"
        assert "sk-live-abc" not in json.dumps(secretish)
        listed = (await client.get(PROFILES)).json()["data"]
        assert [p["name"] for p in listed] == ["dup"]

        unknown = diagnostic(await client.post(RUNS, json={"prompt": "p", "command": "true",
                                                           "agent_runtime_profile_id": "arp_" + "0" * 20}), 400)
        assert unknown["evidence"]["field"] == "agent_runtime_profile_id"
        other = (await client.post(PROFILES, json={"name": "o", "runtime": "pi", "workspace_id": "ws_2"})).json()
        foreign = diagnostic(await client.post(RUNS, json={"prompt": "p", "command": "true",
                                                           "agent_profile_id": other["data"]["id"]}), 400)
        assert foreign["evidence"]["field"] == "agent_profile_id"
        assert (await client.get(RUNS)).json()["data"] == []
    assert owned_containers(daemon.settings.home) == []


async def test_deleting_a_profile_a_running_run_uses_is_refused_until_the_run_ends(daemon: Daemon):
    async with http(daemon) as client:
        profile = (await client.post(PROFILES, json={"name": "busy", "runtime": "custom"})).json()["data"]
        run = (await client.post(RUNS, json={"prompt": "p", "command": "sleep 60",
                                             "agent_runtime_profile_id": profile["id"]})).json()["data"]
        assert run["profile_id"] == profile["id"] and run["profile_snapshot"]["source"] == "explicit"
        refused = diagnostic(await client.delete(f"{PROFILES}/{profile['id']}"), 409)
        assert refused["evidence"]["in_use_by"] == {"runs": [run["id"]]} and run["id"] in refused["message"]
        with anyio.fail_after(60):
            canceled = await client.post(f"{RUNS}/{run['id']}/cancel")
        assert canceled.json()["data"]["status"] == "canceled"
        assert (await client.delete(f"{PROFILES}/{profile['id']}")).status_code == 200
        kept = (await client.get(f"{RUNS}/{run['id']}")).json()["data"]
        assert kept["profile_id"] == profile["id"] and kept["profile_snapshot"]["runtime"] == "custom"


async def test_a_session_over_agent_sock_sees_tenant_and_its_workspace_profiles_only(daemon: Daemon):
    async with http(daemon) as root:
        tenant = (await root.post(PROFILES, json={"name": "t", "runtime": "pi"})).json()["data"]
        mine = (await root.post(PROFILES, json={"name": "m", "runtime": "pi", "workspace_id": "w1"})).json()["data"]
        await root.post(PROFILES, json={"name": "o", "runtime": "pi", "workspace_id": "w2"})
        spawned = (await root.post("/api/agent/spawn", json={"agent_name": "w", "workspace_id": "w1"})).json()
    async with agent(daemon, spawned["spawn"]["token"]) as child:
        seen = (await child.get(PROFILES)).json()["data"]
        assert {p["id"] for p in seen} == {tenant["id"], mine["id"]}
        refused = diagnostic(await child.post(PROFILES, json={"name": "x", "runtime": "pi"}), 403)
        assert refused["evidence"]["field"] == "workspace_id"
        made = await child.post(PROFILES, json={"name": "x", "runtime": "pi", "workspace_id": "w1"})
        assert made.status_code == 201, made.text


def test_the_profiles_cli_creates_lists_gets_updates_and_removes_with_json(daemon: Daemon):
    made = json.loads(daemon.cli("profiles", "create", "cli-one", "--runtime", "codex", "--env", "A=1",
                                 "--tools", "exec", "--tools", "files", "--is-default", "--policy",
                                 '{"max_child_sandboxes": 2}', "--json").stdout)
    assert made["id"].startswith("arp_") and made["tools"] == ["exec", "files"] and made["is_default"]
    assert made["policy"] == {"approval": "none", "max_child_sandboxes": 2}
    listed = json.loads(daemon.cli("profiles", "list", "--json").stdout)
    assert [p["id"] for p in listed["data"]] == [made["id"]]
    assert json.loads(daemon.cli("profiles", "get", made["id"], "--json").stdout) == made
    updated = json.loads(daemon.cli("profiles", "update", made["id"], "--model", "gpt-5", "--json").stdout)
    assert updated["model"] == "gpt-5" and updated["env"] == {"A": "1"}
    bad = daemon.cli("profiles", "create", "leaky", "--runtime", "pi", "--env", "GH_TOKEN=ghp_abc", "--json",
                     check=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["diagnostic"]["suggested_command"] == \
        "agentdock secrets set GH_TOKEN"
    assert json.loads(daemon.cli("profiles", "delete", made["id"], "--json").stdout)["id"] == made["id"]
    assert json.loads(daemon.cli("profiles", "list", "--json").stdout)["data"] == []


# ---------------------------------------------------------------- confirm-risky: a person approves


async def group_status(daemon: Daemon, group_id: str) -> dict[str, Any]:
    async with http(daemon) as root:
        return (await root.get(f"{GROUPS}/{group_id}")).json()["data"]


async def test_confirm_risky_turns_risky_calls_into_pending_approvals_that_no_header_a_session_sends_approves(
        daemon: Daemon):
    async with http(daemon) as root:
        profile = (await root.post(PROFILES, json={"name": "careful", "runtime": "custom", "network": True,
                                                   "policy": {"approval": "confirm-risky"}})).json()["data"]
        spawned = (await root.post("/api/agent/spawn", json={
            "agent_name": "w", "agent_runtime_profile_id": profile["id"]})).json()["spawn"]
    async with agent(daemon, spawned["token"]) as child:
        group = (await child.post(GROUPS, json={"name": "g"})).json()["data"]
        claimed = await child.post(f"{GROUPS}/{group['id']}/cancel", json={"approved": True, "approval": "user"})
        cancel = await child.post(f"{GROUPS}/{group['id']}/cancel", headers={"X-Agentdock-Approved": "user"})
        networked = await child.post("/api/v1/sandboxes", json={"network": True},
                                     headers={"X-Agentdock-Approved": "user"})
        sandboxes = (await child.get("/api/v1/sandboxes")).json()["data"]
    after = await group_status(daemon, group["id"])
    assert claimed.status_code == 400 and claimed.json()["diagnostic"]["evidence"]["field"] == "approved"
    for resp, action in ((cancel, f"group.cancel:{group['id']}"), (networked, "device.create_networked:sandbox:")):
        assert resp.status_code == 403, resp.text
        diag = resp.json()["diagnostic"]
        assert diag["code"] == "approval_required" and diag["evidence"]["action"].startswith(action), diag
        assert diag["evidence"]["approval_id"].startswith("apr_") and "repeat this same call" in diag["message"]
    assert after["status"] != "canceled" and sandboxes == []


async def test_an_mcp_agent_run_naming_no_runtime_takes_the_default_profiles_runtime_and_model(daemon: Daemon):
    from tests.e2e.test_mcp import session, wait_for_end

    async with http(daemon) as root:
        made = await root.post(PROFILES, json={"name": "pi-default", "runtime": "pi", "model": "pi-model",
                                               "is_default": True, "env": {"GREETING": "hello"}})
        assert made.status_code == 201, made.text
    with anyio.fail_after(90):
        async with session(daemon) as client:
            run = await call(client, "agent_run", {"prompt": "say hi", "async": True})
            own = await call(client, "agent_run", {"prompt": "p", "command": "echo $GREETING", "async": True})
            done = await wait_for_end(client, own["id"], 60)
            await wait_for_end(client, run["id"], 60)
    assert (run["provider"], run["model"], run["profile_snapshot"]["name"]) == ("pi", "pi-model", "pi-default")
    assert own["provider"] == "custom" and done["output"] == "hello\n"


async def test_an_update_through_the_daemon_client_clears_a_field_given_as_null(daemon: Daemon):
    from mcp_server import areas
    from mcp_server.client import DaemonClient

    async with DaemonClient(daemon.settings) as client:
        made = await client.call(areas.profiles.CREATE, name="nullable", runtime="codex", model="gpt-5")
        kept = await client.call(areas.profiles.UPDATE, profile_id=made.id, description="d")
        cleared = await client.call(areas.profiles.UPDATE, profile_id=made.id, model=None)
    assert (made.model, kept.model, kept.description) == ("gpt-5", "gpt-5", "d")
    assert cleared.model is None and cleared.description == "d"
