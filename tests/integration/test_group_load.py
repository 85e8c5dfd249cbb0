"""The Docker path under load: a 1,000-entry group at 8 in flight in one shared sandbox (and 200 entries in
ephemeral sandboxes), the daemon killed (SIGKILL) five times at random moments and restarted. Every entry
ends exactly once (a ledger file in the sandbox shows each index ran once), the group's stream has no gap,
no container is orphaned, no run stays running past its timeout, and the group never stalls for longer than
the largest run timeout."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import anyio
import docker
import pytest

from engine.groups import models as gm
from engine.devices import models as dm
from mcp_server.client import DaemonClient
from tests.conftest import Daemon, owned_containers
from tests.integration.test_restart import kill_daemon
from mcp_server import areas

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

LIMIT = 8
TIMEOUT = 60
"""Every run's timeout: the longest a stall may last."""


class Follower:
    """Follows the group's stream (long-poll) and counts its finished entries, across restarts."""

    def __init__(self, group_id: str) -> None:
        self.group_id, self.after, self.finished = group_id, 0, 0

    async def until(self, client: DaemonClient, at_least: int) -> None:
        with anyio.fail_after(600):
            while self.finished < at_least:
                page = await client.call(areas.groups.EVENTS, group_id=self.group_id, after_sequence=self.after, wait_seconds=10)
                self.finished += sum(e.type == "entry_finished" for e in page.data)
                self.after = page.next_after_sequence


async def all_events(client: DaemonClient, group_id: str) -> list[gm.GroupEvent]:
    events: list[gm.GroupEvent] = []
    after = 0
    while page := (await client.call(areas.groups.EVENTS, areas.groups.EventsInput(group_id=group_id, after_sequence=after, limit=1000))).data:
        events += page
        after = page[-1].sequence
    return events


async def run_under_kills(daemon: Daemon, entries: int, item: dict, seed: int) -> tuple[gm.Group, list, list]:
    rng = random.Random(seed)
    async with DaemonClient(daemon.settings) as client:
        group = await client.call(areas.groups.CREATE, gm.GroupCreate(name="load", concurrency_limit=LIMIT, expected_runs=entries))
        req = areas.groups.DispatchInput.model_validate({"group_id": group.id, "async": True, "runs": [
            {**item, "prompt": f"item {i}", "command": item["command"].format(i=i), "timeout": TIMEOUT}
            for i in range(entries)]})
        assert len((await client.call(areas.groups.DISPATCH, req)).entries) == entries
    marks = sorted(rng.sample(range(entries // 20, entries * 9 // 10), 5))
    follower = Follower(group.id)
    for mark in marks:
        async with DaemonClient(daemon.settings) as client:
            await follower.until(client, mark)
            await anyio.sleep(rng.random() * 0.5)  # a random moment, not just after a commit
        await kill_daemon(daemon)
        daemon.start()
    async with DaemonClient(daemon.settings) as client:
        with anyio.fail_after(900):
            final = await client.call(areas.groups.GET, group_id=group.id, wait_seconds=45)
            while final.is_active:
                final = await client.call(areas.groups.GET, group_id=group.id, wait_seconds=45)
        rows = (await client.call(areas.groups.RUNS, areas.groups.RunsInput(group_id=group.id, limit=1000))).data
        events = await all_events(client, group.id)
        runs = [await client.call(areas.runs.GET, run_id=e.run_id) for e in rows if e.run_id]
    return final, events, runs


def check(final: gm.Group, events: list, runs: list, entries: int) -> None:
    assert (final.status, final.entry_counts.succeeded, final.entry_counts.total) == ("succeeded", entries, entries)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "a gap or a duplicate"
    ended = Counter(e.payload["entry_id"] for e in events if e.type == "entry_finished")
    assert len(ended) == entries and set(ended.values()) == {1}, "an entry ended twice or never"
    for run in runs:
        assert run.status == "succeeded" and run.output.startswith("done"), run
        assert run.finished_at - run.started_at <= timedelta(seconds=TIMEOUT + 30), run  # never running past it
    times = sorted(e.created_at for e in events if e.type == "entry_finished")
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= timedelta(seconds=TIMEOUT), f"the group stalled {max(gaps)}"


async def test_1000_entries_in_one_shared_sandbox_survive_five_kills_each_running_exactly_once(daemon: Daemon):
    async with DaemonClient(daemon.settings) as client:
        device = await client.call(areas.devices.CREATE, dm.DeviceCreate(pids_limit=512))
    final, events, runs = await run_under_kills(
        daemon, 1000, {"sandbox_id": device.id, "command": "echo {i} >> /workspace/ledger; echo done {i}"}, seed=15)

    check(final, events, runs, 1000)
    box = docker.from_env().containers.get(f"agentdock-{device.id}")
    ledger = Counter(box.exec_run(["cat", "/workspace/ledger"]).output.decode().split())
    assert sorted(int(i) for i in ledger) == list(range(1000)) and set(ledger.values()) == {1}, "ran twice or never"
    assert [c.labels["agentdock.device_id"] for c in owned_containers(daemon.settings.home)] == [device.id]


async def test_200_ephemeral_entries_survive_five_kills_each_running_exactly_once(daemon: Daemon):
    final, events, runs = await run_under_kills(daemon, 200, {"command": "echo done {i}"}, seed=16)

    check(final, events, runs, 200)
    started = Counter(e.payload["entry_id"] for e in events if e.type == "entry_started")
    twice = {entry for entry, n in started.items() if n > 1}
    assert not twice, ("an entry was started twice", [(e.type, e.message, e.payload) for e in events
                                                      if e.payload.get("entry_id") in twice])
    assert owned_containers(daemon.settings.home) == []
