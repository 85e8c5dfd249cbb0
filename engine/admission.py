"""Admission: queued runs start in creation order, never more at once than the daemon-wide cap
(`Settings.max_active_runs`), so a burst of creates cannot start more containers than the host
can take. It wakes when a run is queued or an active one ends (the `admission` topic), not on a
polling tick; queued runs survive a restart and are admitted after it."""

from __future__ import annotations

from typing import Any

import anyio

from engine import topics
from engine.runs import RunService
from engine.store import Store


class Admission:
    def __init__(self, store: Store, runs: RunService, cap: int) -> None:
        self.store = store
        self.runs = runs
        self.cap = cap

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            changed = self.store.topics.watch(topics.ADMISSION)
            await self.admit()
            await changed.wait()

    async def admit(self) -> int:
        """Start as many of the oldest queued runs as there are free slots; returns how many."""
        free = self.cap - self.runs.active
        if free <= 0:
            return 0
        started = 0
        for run_id in await self.store.queued_runs(self.cap + free):
            if started == free:
                break
            if not self.runs.supervised(run_id):
                self.runs.start(run_id)
                started += 1
        return started
