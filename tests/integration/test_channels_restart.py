"""Channels and leases outlive a kill -9 of the daemon.

While two sessions wait on their family channel, a third sends as fast as it can on a task's channel
and one lease is held long and one short; the daemon is killed mid-stream. After the restart every
send that was acknowledged is on the channel once, in order, and the send the kill cut off, repeated
with its idempotency key, is there exactly once whether or not it had landed; the waiters go on from
their cursors and
receive every message exactly once; the long lease is still held (heartbeat, complete) and the short
one expires as it would have."""

from __future__ import annotations

import anyio
import pytest

from mcp_server.areas import channels, tasks
from engine.channels import models as cm
from engine import errors
from engine.tasks import models as tm
from engine.sessions.models import SpawnRequest
from engine.lineage import PermissionPolicy
from mcp_server.client import DaemonClient
from tests.conftest import Daemon
from tests.integration.test_restart import kill_daemon
from mcp_server import areas

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

FAMILY = cm.channel_id(cm.family_name("ses_root"))


async def test_a_kill_9_loses_no_acknowledged_message_repeats_none_and_keeps_every_lease(daemon: Daemon) -> None:
    everything = PermissionPolicy(tools=["channels", "tasks"], network_channels=["*"])
    async with DaemonClient(daemon.settings) as root:
        tokens = [(await root.call(areas.agent.SPAWN, SpawnRequest(agent_name=f"w{i}", permissions=everything))).token
                  for i in range(3)]
        long_task = await root.call(tasks.CREATE, tm.TaskCreate(title="long", priority=2))
        short_task = await root.call(tasks.CREATE, tm.TaskCreate(title="short", priority=1, max_attempts=1))
    sender, a, b = (DaemonClient(daemon.settings, token=t) for t in tokens)
    held = (await sender.call(tasks.CLAIM_NEXT, tm.ClaimNext(lease_seconds=600))).claim
    dropped = (await a.call(tasks.CLAIM_NEXT, tm.ClaimNext(lease_seconds=2))).claim
    assert held is not None and dropped is not None and held.task.id == long_task.id
    stream = held.run.coordination_channel_id

    acked: list[str] = []
    cut_off: list[int] = []
    received: dict[str, list[cm.Message]] = {"a": [], "b": []}

    async def send_until_killed() -> None:
        n = 0
        while True:
            try:
                sent = await sender.call(channels.SEND, cm.Send(channel_id=stream, body={"n": n}, idempotency_key=f"n-{n}",
                                                         metadata=cm.Metadata(message_kind="progress")))
            except errors.EngineError:
                cut_off.append(n)  # the daemon is gone: this send may or may not have been committed
                return
            acked.append(sent.message.message_id)
            n += 1

    async def receive(name: str, client: DaemonClient, until: int) -> None:
        """Wait on the family channel across the restart until `until` messages came."""
        while len(received[name]) < until:
            try:
                got = await client.call(channels.RECV, cm.Recv(channel_id=FAMILY, wait=True, wait_seconds=20))
            except errors.EngineError:  # the daemon died under the wait: call again once it is back
                await anyio.sleep(0.2)
                continue
            received[name].extend(got.messages)

    async with root_client(daemon) as r:
        first = [(await r.call(channels.SEND, cm.Send(channel_id=FAMILY, body=i))).message.message_id for i in range(3)]
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive, "a", a, 6)
            tg.start_soon(receive, "b", b, 6)
            tg.start_soon(send_until_killed)
            while len(acked) < 30 or len(received["a"]) < 3 or len(received["b"]) < 3:
                await anyio.sleep(0.01)
            await kill_daemon(daemon)
            daemon.start()
            async with root_client(daemon) as r:
                rest = [(await r.call(channels.SEND, cm.Send(channel_id=FAMILY, body=i))).message.message_id
                        for i in range(3, 6)]

    (n,) = cut_off  # sent again with its key: stored once, whether or not the first attempt was
    retried = await sender.call(channels.SEND, cm.Send(channel_id=stream, body={"n": n}, idempotency_key=f"n-{n}",
                                                metadata=cm.Metadata(message_kind="progress")))
    acked.append(retried.message.message_id)
    async with root_client(daemon) as r:
        on_stream = (await r.call(channels.RECV, cm.Recv(channel_id=stream, limit=500))).messages
        beat = await sender.call(tasks.HEARTBEAT, tm.Heartbeat(task_run_id=held.run.id, claim_token=held.claim_token))
        done = await sender.call(tasks.COMPLETE, tm.Complete(task_run_id=held.run.id, claim_token=held.claim_token))
        with anyio.fail_after(30):
            while (await r.call(tasks.GET, task_id=short_task.id)).status != "failed":  # the reaper, on real time
                await anyio.sleep(0.1)
        expired = await r.call(tasks.GET, task_id=short_task.id)
    for c in (sender, a, b):
        await c.__aexit__()

    ids = [m.message_id for m in on_stream]
    assert len(ids) == len(set(ids))
    assert ids == acked  # every acknowledged send, once, in order; the cut-off one once, by its key
    assert [m.body["n"] for m in on_stream] == list(range(len(on_stream)))
    for name in ("a", "b"):
        assert [m.message_id for m in received[name]] == first + rest, name
    assert beat.lease.status == "running" and done.task.status == "completed"
    assert expired.failure_kind == "lease_expired" and [r.status for r in expired.runs] == ["expired"]


def root_client(daemon: Daemon) -> DaemonClient:
    return DaemonClient(daemon.settings, token="")
