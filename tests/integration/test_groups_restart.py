"""A group survives kill -9 of the daemon: 100 entries at concurrency 5, the daemon killed mid-group and one
child's container killed while it is down; after a restart every entry ends exactly once, the lost run is
failed and its entry retried, nothing is orphaned, and the group's stream has no gap or duplicate."""

from __future__ import annotations

from collections import Counter

import anyio
import docker
import pytest

from engine import group_models as gm
from engine import models
from mcp_server.client import DaemonClient
from tests.conftest import Daemon, owned_containers
from tests.integration.test_restart import kill_daemon

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ENTRIES = 100
LIMIT = 5


async def count_finished(client: DaemonClient, group_id: str, at_least: int) -> None:
    """Follow the group's events (long-poll) until `at_least` entries have finished."""
    after, finished = 0, 0
    with anyio.fail_after(120):
        while finished < at_least:
            page = await client.group_events(group_id, gm.GroupEventsQuery(after_sequence=after, wait=10))
            finished += sum(e.type == "entry_finished" for e in page.data)
            after = page.next_after_sequence


async def test_kill_9_mid_group_every_entry_ends_once_the_lost_run_is_retried_and_nothing_is_orphaned(
        daemon: Daemon) -> None:
    async with DaemonClient(daemon.settings) as client:
        group = await client.create_group(gm.GroupCreate(name="crash", concurrency_limit=LIMIT,
                                                         expected_runs=ENTRIES))
        req = gm.DispatchRequest.model_validate({"async": True, "runs": [
            {"prompt": f"item {i}", "command": "sleep 0.3; echo done"} for i in range(ENTRIES)]})
        queued = await client.dispatch_group(group.id, req)
        assert len(queued.entries) == ENTRIES
        await count_finished(client, group.id, 10)
    await kill_daemon(daemon)

    running = docker.from_env().containers.list(filters={"label": [f"agentdock.home={daemon.settings.home}",
                                                                   "agentdock.ephemeral=1"]})
    assert running, "children were running when the daemon died"
    victim = running[0]
    victim_device = victim.labels["agentdock.device_id"]
    victim.kill()  # its process dies with it while nobody watches: a lost run

    daemon.start()
    async with DaemonClient(daemon.settings) as client:
        with anyio.fail_after(300):
            final = await client.wait_group(group.id, 55)
            while final.is_active:
                final = await client.wait_group(group.id, 55)
        entries = (await client.group_runs(group.id, gm.GroupRunsQuery(limit=1000))).data
        events, after = [], 0
        while page := (await client.group_events(group.id, gm.GroupEventsQuery(after_sequence=after,
                                                                               limit=1000))).data:
            events += page
            after = page[-1].sequence
        runs = [await client.get_run(e.run_id) for e in entries if e.run_id]
        lost = [r for r in (await client.list_runs(models.RunListQuery(
            status="failed", limit=200))).data if r.agent_run_group_id == group.id]

    assert (final.status, final.entry_counts.succeeded, final.entry_counts.total) == ("succeeded", ENTRIES, ENTRIES)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "a gap or a duplicate"
    finished = Counter(e.payload["entry_id"] for e in events if e.type == "entry_finished")
    assert len(finished) == ENTRIES and set(finished.values()) == {1}, "an entry ended twice or never"
    started = Counter(e.payload["entry_id"] for e in events if e.type == "entry_started")
    assert all(started[e.entry_id] == e.attempts for e in entries)
    assert [r.target_id for r in lost] == [victim_device]  # the lost run is failed...
    assert lost[0].failure_kind == "process_lost"
    retried = [e for e in entries if e.attempts == 2]
    assert len(retried) == 1 and retried[0].run_id != lost[0].id  # ...and its entry got a new attempt
    assert final.counts.total == ENTRIES + 1 and final.counts.failed == 1
    # never more than the limit at once, from the recorded start and end times of every child
    spans = [(r.started_at, r.finished_at) for r in [*runs, *lost]]
    assert all(s is not None and f is not None for s, f in spans)
    for start, _ in spans:
        assert sum(1 for s, f in spans if s <= start < f) <= LIMIT
    assert owned_containers(daemon.settings.home) == []  # no container orphaned
