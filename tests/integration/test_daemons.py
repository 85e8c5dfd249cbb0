"""Three real daemons on one PostgreSQL database, each with its own home (here they share the one Docker
engine, each with its own labels): a group of ephemeral entries spreads over them, one daemon is killed
(SIGKILL) mid-way, the leader settles its runs `process_lost` and the group retries those entries on the
others. Every entry ends exactly once, no run starts twice, the group's stream has no gap, and once the
killed daemon comes back no container of it is left. `AGENTDOCK_TEST_DAEMON_ENTRIES` sets the size
(1,000 in the figure of the README; the suite runs fewer)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from engine.groups import models as gm
from engine.settings import Settings
from mcp_server import areas
from mcp_server import daemon as daemon_mod
from mcp_server.client import DaemonClient
from tests import peek
from tests.conftest import SMALL, Daemon, owned_containers, remove_owned_containers
from tests.integration.test_group_load import Follower, all_events
from tests.integration.test_restart import kill_daemon

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ENTRIES = int(os.environ.get("AGENTDOCK_TEST_DAEMON_ENTRIES", "150"))
CAP = 4
LOST_AFTER = 4


@pytest.fixture
def three(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Daemon]]:
    shared = {"AGENTDOCK_DATABASE_URL": pg_url, "AGENTDOCK_IMAGE": SMALL, "AGENTDOCK_CANCEL_GRACE_SECONDS": "1",
              "AGENTDOCK_MAX_ACTIVE_RUNS": str(CAP), "AGENTDOCK_DAEMON_HEARTBEAT_SECONDS": "0.5",
              "AGENTDOCK_DAEMON_LOST_AFTER_SECONDS": str(LOST_AFTER)}
    for k, v in shared.items():
        monkeypatch.setenv(k, v)
    homes = [Path(tempfile.mkdtemp(prefix="ad-", dir="/tmp")) for _ in range(3)]
    daemons = [Daemon(Settings(home=h, image=SMALL, database_url=pg_url), {**os.environ, "AGENTDOCK_HOME": str(h)})
               for h in homes]
    try:
        for d in daemons:
            d.start()
        yield daemons
    finally:
        for d in daemons:
            daemon_mod.stop(d.settings)
            remove_owned_containers(d.settings.home)
            shutil.rmtree(d.settings.home, ignore_errors=True)


async def test_a_group_spreads_over_three_daemons_and_survives_one_killed(three: list[Daemon]):
    first, second, doomed = three
    async with DaemonClient(first.settings) as client:
        group = await client.call(areas.groups.CREATE, gm.GroupCreate(
            name="three", concurrency_limit=3 * CAP, expected_runs=ENTRIES))
        req = areas.groups.DispatchInput.model_validate({"group_id": group.id, "async": True, "runs": [
            {"prompt": f"item {i}", "command": f"echo done {i}", "timeout": 60} for i in range(ENTRIES)]})
        assert len((await client.call(areas.groups.DISPATCH, req)).entries) == ENTRIES
    follower = Follower(group.id)
    async with DaemonClient(second.settings) as client:
        await follower.until(client, ENTRIES // 3)
        await _until_running_on(doomed)
    doomed_id = (doomed.settings.home / "daemon.id").read_text().strip()
    await kill_daemon(doomed)

    async with DaemonClient(second.settings) as client:
        with anyio.fail_after(600):
            final = await client.call(areas.groups.GET, group_id=group.id, wait_seconds=45)
            while final.is_active:
                final = await client.call(areas.groups.GET, group_id=group.id, wait_seconds=45)
        events = await all_events(client, group.id)

    assert (final.status, final.entry_counts.succeeded) == ("succeeded", ENTRIES), final
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "a gap or a duplicate in the stream"
    ended = Counter(e.payload["entry_id"] for e in events if e.type == "entry_finished")
    assert len(ended) == ENTRIES and set(ended.values()) == {1}, "an entry ended twice or never"
    started = peek.rows(first.settings, "SELECT e.run_id, count(*) FROM events e WHERE e.type = 'run_started' "
                                        "GROUP BY e.run_id HAVING count(*) > 1")
    assert started == [], f"runs started twice: {started}"
    by_daemon = dict(peek.rows(first.settings, "SELECT daemon_id, count(*) FROM agent_runs GROUP BY daemon_id"))
    assert len(by_daemon) == 3 and None not in by_daemon, by_daemon
    lost = peek.rows(first.settings, "SELECT daemon_id, count(*) FROM agent_runs WHERE failure_kind = 'process_lost' "
                                     "GROUP BY daemon_id")
    retried = sum(e.type == "entry_retried" for e in events)
    assert retried == sum(n for _, n in lost) and {d for d, _ in lost} <= {doomed_id}, (lost, retried)
    print(f"\n{ENTRIES} entries over three daemons: {by_daemon}; {retried} retried after the kill")

    doomed.start()  # it comes back: its reconcile removes the containers of the runs settled without it
    for d in three:
        assert owned_containers(d.settings.home) == [], f"containers left by {d.settings.home}"
        assert d.logged_errors() == [], d.logged_errors()


async def _until_running_on(daemon: Daemon) -> None:
    """Until the daemon holds at least one started run (so killing it leaves runs to settle)."""
    with anyio.fail_after(60):
        while not peek.rows(daemon.settings, "SELECT 1 FROM agent_runs WHERE status = 'running' AND daemon_id = ?",
                            ((daemon.settings.home / "daemon.id").read_text().strip(),)):
            await anyio.sleep(0.05)
