"""The TCP listener (off by default): a real MCP client session over streamable HTTP, in both protocol
revisions the SDK speaks, lists the tools and runs an agent; the HTTP API answers on the same port; no
token, a wrong token and a foreign Origin are refused with a diagnostic before anything is served."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Daemon, Listening
from tests.e2e.test_mcp import TOOLS, call, failing_call, wait_for_end

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def mcp_client(url: str, token: str, mode: str = "auto", query: str = "") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(60))
    return Client(streamable_http_client(f"{url}/mcp{query}", http_client=http), mode=mode)  # type: ignore[arg-type]


def tcp_listening() -> dict[int, tuple[str, int]]:
    """Inode -> (address, port) of every TCP socket in LISTEN state on this host."""
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                hex_address, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host-order
                found[int(fields[9])] = (str(ipaddress.ip_address(words)), int(hex_port, 16))
    return found


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


async def test_nothing_listens_on_tcp_by_default(daemon: Daemon) -> None:
    pid = daemon.pid()
    assert pid is not None
    listening = tcp_listening()
    own = [listening[i] for i in sockets_of(pid) if i in listening]
    # the one TCP socket it holds is the model gateway's, on its Docker network's address (devices only)
    for address, port in own:
        assert port == daemon.settings.gateway_port, own
        assert not ipaddress.ip_address(address).is_loopback and not ipaddress.ip_address(address).is_unspecified, own
    shown = daemon.cli("daemon", "status", "--json").stdout
    assert '"listen": null' in shown


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_an_mcp_client_over_streamable_http_lists_the_tools_and_runs_an_agent(listening: Listening,
                                                                                   mode: str) -> None:
    url, token = listening.url, listening.token
    with anyio.fail_after(90):
        async with mcp_client(url, token, mode) as client:
            assert sorted(t.name for t in (await client.list_tools()).tools) == sorted(TOOLS)
            run = await call(client, "agent_run", {"prompt": "say hi", "command": "echo hi over $AGENTDOCK_RUN_ID"})
            if run["status"] not in ("succeeded", "failed", "canceled"):
                run = await wait_for_end(client, run["id"])
            assert (run["status"], run["exit_code"]) == ("succeeded", 0)
            assert run["output"] == f"hi over {run['id']}\n"
            bad = await failing_call(client, "agent_run_get", {"run_id": "nope"})
            assert bad["code"] == "invalid_input"


async def test_toolsets_are_chosen_as_on_stdio(listening: Listening) -> None:
    url, token = listening.url, listening.token
    with anyio.fail_after(60):
        async with mcp_client(url, token, query="?toolsets=coordinator") as client:
            names = {t.name for t in (await client.list_tools()).tools}
    assert names == {"agent_run", "agent_run_get", "group_create", "group_dispatch", "group_get", "group_events",
                     "agent_me", "agent_spawn", "agent_stop", "channel_recv"}
    got = httpx.post(f"{url}/mcp?toolsets=nope", headers={"Authorization": f"Bearer {token}"}, json={})
    assert got.status_code == 400 and got.json()["diagnostic"]["evidence"]["field"] == "toolsets"


async def test_no_token_a_wrong_token_and_a_foreign_origin_are_refused(listening: Listening) -> None:
    d, url, token = listening.daemon, listening.url, listening.token
    assert stat.S_IMODE(d.settings.http_token_path.stat().st_mode) == 0o600 and len(token) >= 40
    right = {"Authorization": f"Bearer {token}"}
    for path in ("/api/v1/health", "/mcp", "/api/v1/agent-runs", "/nowhere"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": f"Bearer {token[:-1]}"}):
            got = httpx.get(url + path, headers=headers)
            assert got.status_code == 401, (path, headers, got.text)
            assert got.json()["diagnostic"]["code"] == "unauthenticated"
        foreign = httpx.get(url + path, headers={**right, "Origin": "http://evil.example"})
        assert foreign.status_code == 403 and foreign.json()["diagnostic"]["evidence"]["field"] == "Origin"
    twice = httpx.get(url + "/api/v1/health", headers=[("Authorization", f"Bearer {token}")] * 2)
    assert twice.status_code == 401
    # a session's token (a child's, of another workspace) is not the listener's: it opens nothing here
    child = httpx.post(url + "/api/agent/spawn", headers=right, json={"agent_name": "c", "workspace_id": "ws_other"})
    assert child.status_code == 201, child.text
    as_child = {"Authorization": f"Bearer {child.json()['spawn']['token']}"}
    for path in ("/api/v1/health", "/mcp", "/ui"):
        assert httpx.get(url + path, headers=as_child).status_code == 401
    # the host's other web apps' cookies (cookies are not bound to a port) do not hide the dashboard's
    crowded = {"Cookie": f'other="\\x; $$bad; agentdock_token={token}; last=1'}
    assert httpx.get(url + "/api/v1/health", headers=crowded).status_code == 200
    assert httpx.get(url + "/api/v1/health", headers={"Cookie": "agentdock_token=nope"}).status_code == 401
    own = httpx.get(url + "/api/v1/health", headers={**right, "Origin": url})
    assert own.status_code == 200 and own.json()["data"]["status"] == "ok"
    runs: Any = httpx.get(url + "/api/v1/agent-runs", headers=right).json()
    assert isinstance(runs["data"], list)
    shown = d.cli("daemon", "status", "--json").stdout
    assert f'"mcp": "{url}/mcp"' in shown
