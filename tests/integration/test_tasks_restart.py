"""Task leases outlive the daemon: kill -9 it while two leases are held, restart, and the one whose
holder comes back is completed with its claim token while the other expires exactly as before."""

from __future__ import annotations

import anyio
import pytest

from mcp_server.areas import tasks
from engine import errors
from engine.tasks import models as tm
from mcp_server.client import DaemonClient
from tests.conftest import Daemon
from tests.integration.test_restart import kill_daemon

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_held_leases_survive_a_kill_9_and_then_complete_or_expire_as_before(daemon: Daemon) -> None:
    async with DaemonClient(daemon.settings) as client:
        kept = await client.call(tasks.CREATE, tm.TaskCreate(title="kept", priority=2))
        lost = await client.call(tasks.CREATE, tm.TaskCreate(title="lost", priority=1, max_attempts=1))
        a = (await client.call(tasks.CLAIM_NEXT, tm.ClaimNext(lease_seconds=600))).claim
        b = (await client.call(tasks.CLAIM_NEXT, tm.ClaimNext(lease_seconds=2))).claim
    assert a is not None and b is not None and (a.task.id, b.task.id) == (kept.id, lost.id)
    await kill_daemon(daemon)
    daemon.start()
    async with DaemonClient(daemon.settings) as client:
        done = await client.call(tasks.COMPLETE, tm.Complete(task_run_id=a.run.id, claim_token=a.claim_token, result=1))
        with anyio.fail_after(30):
            while (await client.call(tasks.GET, task_id=lost.id)).status != "failed":  # the reaper, on real time
                await anyio.sleep(0.1)
        expired = await client.call(tasks.GET, task_id=lost.id)
        with pytest.raises(errors.EngineError) as late:
            await client.call(tasks.COMPLETE, tm.Complete(task_run_id=b.run.id, claim_token=b.claim_token))
    assert (done.task.status, done.run.status, done.task.attempts) == ("completed", "completed", 1)
    assert (expired.failure_kind, [r.status for r in expired.runs]) == ("lease_expired", ["expired"])
    assert late.value.diagnostic().code == "invalid_transition"
