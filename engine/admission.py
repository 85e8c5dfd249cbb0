"""Admission: queued runs start in creation order, never more at once than the daemon-wide cap
(`Settings.max_active_runs`), so a burst of creates cannot start more containers than the host
can take. It wakes when a run is queued or an active one ends (the `admission` topic), not on a
polling tick; queued runs survive a restart and are admitted after it.

It is the one scheduler: each pass first lets the groups settle entries whose run ended and claim
queued entries under their `concurrency_limit` (creating their runs `queued`), then admits runs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from engine import models, topics
from engine.ports import Clock
from engine.runs import RunService
from engine.store import Store

if TYPE_CHECKING:
    from engine.groups import GroupService

log = logging.getLogger("agentdock.admission")


class Admission:
    def __init__(self, store: Store, runs: RunService, clock: Clock, cap: int,
                 groups: GroupService | None = None) -> None:
        self.store = store
        self.runs = runs
        self.clock = clock
        self.cap = cap
        self.groups = groups

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            changed = self.store.topics.watch(topics.ADMISSION)
            if self.groups is not None:
                try:
                    await self.groups.schedule()
                except Exception:  # the scheduler must outlive one bad pass; the next commit retries
                    log.exception("group scheduling pass failed")
            await self.admit()
            await changed.wait()

    async def admit(self) -> int:
        """Start as many of the oldest queued runs as there are free slots, marking them started in
        one transaction (a run canceled meanwhile stays canceled); returns how many."""
        free = self.cap - self.runs.active
        if free <= 0:
            return 0
        picked = [q for q in await self.store.queued_runs(self.cap + free) if not self.runs.supervised(q.id)][:free]
        if not picked:
            return 0
        now = self.clock.now()
        started = []
        async with self.store.write(now) as tx:
            for run in picked:
                if await tx.transition_run(run.id, [models.RunStatus.queued], status="running", started_at=now):
                    await tx.append_events(run.id, [("run_started", "Run started", {"target_id": run.target_id})],
                                           group_id=run.group_id)
                    started.append(run.id)
        for run_id in started:
            self.runs.start(run_id)
        return len(started)
