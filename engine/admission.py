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
from engine.devices.pool import Pool
from engine.ports import Clock
from engine.devices.models import Shape
from engine.runs.service import RunService
from engine.store import Store

if TYPE_CHECKING:
    from engine.groups.service import GroupService

log = logging.getLogger("agentdock.admission")


class Admission:
    def __init__(self, store: Store, runs: RunService, clock: Clock, cap: int,
                 groups: GroupService | None = None, pool: Pool | None = None) -> None:
        self.store = store
        self.pool = pool
        self.runs = runs
        self.clock = clock
        self.cap = cap
        self.groups = groups
        self.daemon_id = runs.daemon_id

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
        """Start as many of the oldest queued runs as there are slots, marking them started in one
        transaction (a run canceled meanwhile stays canceled); returns how many. A run a pooled device
        can serve claims one in that transaction, taking over the slot it held; a run that finds no slot
        free takes a ready pooled device's, and the device is removed (`engine.pool`)."""
        pool = self.pool
        free = self.cap - self.runs.active - (pool.held if pool else 0)
        budget = free + (pool.ready if pool else 0)
        if budget <= 0:
            return 0
        picked = [q for q in await self.store.runs.queued_runs(self.cap + budget, self.daemon_id)
                  if not self.runs.supervised(q.id)]
        picked = picked[:budget]
        if not picked:
            return 0
        now = self.clock.now()
        started = []
        taken: list[tuple[Shape, str]] = []  # pooled devices taken in this pass: given back unless claimed
        claimed: set[str] = set()
        discarded: set[str] = set()
        try:
            async with self.store.write(now) as tx:
                for run in picked:
                    device_id = None
                    if pool and run.shape:
                        pool.want(run.shape)
                        device_id = pool.take(run.shape)
                    if device_id is None:
                        if free > 0:
                            free -= 1
                        elif not (pool and pool.evict()):
                            break
                    else:
                        taken.append((run.shape, device_id))  # type: ignore[arg-type]
                    if not await tx.runs.transition_run(run.id, [models.RunStatus.queued], status="running",
                                                   started_at=now, daemon_id=self.daemon_id):
                        continue  # canceled meanwhile, or started by another daemon
                    if run.ephemeral:
                        await tx.devices.own_device(run.target_id, self.daemon_id)
                    payload: dict[str, Any] = {"target_id": run.target_id}
                    if device_id is not None:
                        if await tx.devices.claim_device(device_id, run.id, run.created_by):
                            claimed.add(device_id)
                            await tx.runs.update_run(run.id, target_id=device_id)
                            await tx.devices.delete_device(run.target_id)  # the sandbox it would have made
                            payload = {"target_id": device_id, "pooled": True}
                        else:  # not the ready device the pool took it for: the run makes its own
                            assert pool is not None
                            discarded.add(device_id)
                            pool.discard(device_id)
                    await tx.append_events(run.id, [("run_started", "Run started", payload)], group_id=run.group_id)
                    started.append(run.id)
        except BaseException:
            claimed.clear()  # rolled back: nothing was claimed
            raise
        finally:
            for shape, device_id in reversed(taken):
                if device_id not in claimed and device_id not in discarded:
                    assert pool is not None
                    pool.give_back(shape, device_id)
        for run_id in started:
            self.runs.start(run_id)
        return len(started)
