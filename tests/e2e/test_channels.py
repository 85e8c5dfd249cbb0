"""Channels end to end through the real daemon: sessions talk over agent.sock with their bearer
tokens, the local user over control.sock, through a real MCP client session and through the CLI;
a receiver waiting over HTTP gets the message sent meanwhile; permissions and bad input are refused."""

from __future__ import annotations

import json
import subprocess

import anyio
import pytest

from engine.channels import models as cm
from tests.conftest import AGENTDOCK, Daemon
from tests.e2e.test_agent_socket import agent, spawn
from tests.e2e.test_http import http as control
from tests.e2e.test_mcp import call, failing_call, session

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

FAMILY = cm.channel_id(cm.family_name("ses_root"))
CHANNELS = "/api/agent/channels"


async def test_sessions_talk_over_agent_sock_and_a_waiting_receiver_wakes_on_the_send(daemon: Daemon):
    async with control(daemon) as root:
        a = await spawn(root, permissions={"tools": ["channels"], "network_channels": ["*"]})
        b = await spawn(root, permissions={"tools": ["channels"], "network_channels": ["family:ses_root"]})
        muted = await spawn(root, permissions={"tools": ["channels"], "network_channels": []})
        listed = (await root.get(CHANNELS)).json()["channels"]
        got: dict[str, dict] = {}
        async with agent(daemon, a["token"]) as ac, agent(daemon, b["token"]) as bc, \
                agent(daemon, muted["token"]) as mc:

            async def wait_for_one() -> None:
                resp = await ac.get(f"{CHANNELS}/{FAMILY}/recv", params={"wait": "true", "wait_seconds": 40})
                got["a"] = resp.json()

            with anyio.fail_after(60):  # that the wait wakes on the commit is shown on the fake clock
                async with anyio.create_task_group() as tg:  # (tests/unit/test_channels.py); here, over HTTP
                    tg.start_soon(wait_for_one)
                    sent = await root.post(f"{CHANNELS}/{FAMILY}/send", json={
                        "body": {"step": "build"}, "metadata": {"message_kind": "request", "correlation_id": "r1"}})
            reply = await bc.post(f"{CHANNELS}/reply", json={"reply_to_message_id": sent.json()["message"]["message_id"],
                                                             "body": "on it"})
            root_got = (await root.get(f"{CHANNELS}/{FAMILY}/recv")).json()["messages"]
            a_again = (await ac.get(f"{CHANNELS}/{FAMILY}/recv")).json()["messages"]
            refused = await mc.post(f"{CHANNELS}/{FAMILY}/send", json={"body": "x"})
            chat_in_unknown = await ac.post(f"{CHANNELS}/chn_0000000000000000dead/send", json={"body": "x"})
            too_long = await ac.get(f"{CHANNELS}/{FAMILY}/recv", params={"wait_seconds": 1000})
            too_big = await ac.post(f"{CHANNELS}/{FAMILY}/send", json={"body": "x" * (cm.MAX_BODY_BYTES + 1)})
            body_channel = await ac.post(f"{CHANNELS}/{FAMILY}/send", json={"body": 1, "channel": FAMILY})
            muted_list = (await mc.get(CHANNELS)).json()["channels"]
        after = (await root.get(f"{CHANNELS}/{FAMILY}/recv")).json()["messages"]
    assert [c["id"] for c in listed] == [FAMILY] and listed[0]["channel"] == "family:ses_root"
    assert sent.status_code == 201, sent.text
    message = sent.json()["message"]
    assert [m["message_id"] for m in got["a"]["messages"]] == [message["message_id"]]
    assert got["a"]["messages"][0]["body"] == {"step": "build"}
    assert reply.status_code == 201, reply.text
    r = reply.json()["message"]
    assert (r["to_session_id"], r["metadata"]["correlation_id"], r["from_session_id"]) == (
        "ses_root", "r1", b["session"]["id"])
    assert [m["message_id"] for m in root_got] == [r["message_id"]]
    assert a_again == []  # handed once; b's reply went to the root only
    assert refused.status_code == 403 and "network_channels" in refused.json()["error"]
    assert muted_list == []
    assert chat_in_unknown.status_code == 404 and chat_in_unknown.json()["diagnostic"]["evidence"]["field"] == "channel_id"
    for resp, field in ((too_long, "wait_seconds"), (too_big, "body"), (body_channel, "channel")):
        assert resp.status_code == 400 and resp.json()["diagnostic"]["evidence"]["field"] == field, resp.text
    assert after == []  # the refusals wrote nothing


async def test_the_mcp_tools_send_receive_and_reply_as_the_local_user(daemon: Daemon):
    async with session(daemon) as client:
        child = await call(client, "agent_spawn", {"agent_name": "helper",
                                                   "permissions": {"tools": ["channels"]}})
        channels = (await call(client, "channel_list", {}))["channels"]
        assert [c["id"] for c in channels] == [FAMILY]
        async with agent(daemon, child["token"]) as c:
            asked = (await c.post(f"{CHANNELS}/{FAMILY}/send", json={
                "body": "which branch?", "metadata": {"message_kind": "request"}})).json()["message"]
            got = await call(client, "channel_recv", {"channel_id": FAMILY, "wait": True, "wait_seconds": 5})
            answered = await call(client, "channel_reply", {"reply_to_message_id": asked["message_id"],
                                                            "body": "main"})
            sent = await call(client, "channel_send", {"channel_id": FAMILY, "body": {"go": True},
                                                       "metadata": {"message_kind": "status"}})
            child_got = (await c.get(f"{CHANNELS}/{FAMILY}/recv")).json()["messages"]
        bad_kind = await failing_call(client, "channel_send", {"channel_id": FAMILY, "body": 1,
                                                               "metadata": {"message_kind": "shout"}})
        bad_wait = await failing_call(client, "channel_recv", {"channel_id": FAMILY, "wait_seconds": -1})
        empty = await call(client, "channel_recv", {"channel_id": FAMILY, "wait_seconds": 0.2})
    assert [m["message_id"] for m in got["messages"]] == [asked["message_id"]]
    assert answered["message"]["metadata"]["correlation_id"] == asked["message_id"]
    assert [m["message_id"] for m in child_got] == [answered["message"]["message_id"], sent["message"]["message_id"]]
    assert child_got[0]["to_session_id"] == child["session"]["id"]
    assert bad_kind["evidence"]["field"] == "metadata.message_kind"
    assert bad_wait["evidence"]["field"] == "wait_seconds"
    assert empty == {"messages": [], "waited": True}


def test_the_cli_lists_sends_follows_and_replies(daemon: Daemon):
    child = json.loads(daemon.cli("spawn", "helper", "--json").stdout)
    listed = json.loads(daemon.cli("channels", "list", "--json").stdout)["channels"]
    assert [c["id"] for c in listed] == [FAMILY]
    env = {**daemon.env, "AGENTDOCK_TOKEN": child["token"]}
    follow = subprocess.Popen([AGENTDOCK, "channels", "recv", FAMILY, "--follow", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sent = [json.loads(daemon.cli("channels", "send", FAMILY, body, "--kind", "status", "--json").stdout)
                for body in ('{"n": 1}', "plain text")]
        lines = [json.loads(follow.stdout.readline()) for _ in sent]
    finally:
        follow.kill()
        follow.wait(10)
    assert [m["message_id"] for m in lines] == [m["message_id"] for m in sent]
    assert [m["body"] for m in lines] == [{"n": 1}, "plain text"]
    asked = subprocess.run([AGENTDOCK, "channels", "send", FAMILY, "ready?", "--kind", "request", "--json"],
                           env=env, capture_output=True, text=True, timeout=60, check=True)
    asked_id = json.loads(asked.stdout)["message_id"]
    replied = json.loads(daemon.cli("channels", "reply", asked_id, "yes", "--json").stdout)
    assert replied["to_session_id"] == child["session"]["id"] and replied["reply_to_message_id"] == asked_id
    text = daemon.cli("channels", "recv", FAMILY).stdout
    assert asked_id in text and "[request] ready?" in text
    assert daemon.cli("channels", "recv", FAMILY, "--json").stdout == ""  # received once
    again = daemon.cli("channels", "recv", FAMILY, "--after", "0", "--json").stdout.splitlines()
    assert [json.loads(line)["message_id"] for line in again] == [asked_id]  # read again on asking
    bad = subprocess.run([AGENTDOCK, "channels", "send", FAMILY, "x", "--kind", "shout", "--json"], env=daemon.env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert json.loads(bad.stdout)["diagnostic"]["evidence"]["field"] == "metadata.message_kind"
