"""Warm starts: started sandboxes kept ready per image and resource shape, so a run without a target
claims one instead of waiting for its container to be made (about a third of a second on Docker).

A pooled device is an ordinary device: the keepalive its main process, no network, no env of any
run, recorded with its pool's key (`DeviceRow.pool`) and labelled `agentdock.pool`. A run's env,
secrets and token reach it only in the environment of the exec that runs it. Admission claims one
for a queued run of its shape in the transaction that starts the run (`Tx.claim_device`: one device
to one run); once the run's end is published the device is removed in the background, the run's
slot already free (`RunService`).

Slots: a ready or starting pooled device holds one of the `max_active_runs` slots, so pooled and
active together never pass the cap. A claim moves the slot to its run; a run that needs a slot when
none is free takes a ready device's, and that device is removed (`evict`). Top-up fills each shape
to `pool_size`, one device at a time, while a slot is free and no run waits for one.

After a crash `RunService.reconcile` removes every pooled container no unfinished run holds, unused
ones too (adopting them would keep containers made under the old settings, or of an image rebuilt
since; refilling costs a few seconds of background work once), and this service starts afresh.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from engine import errors, models, topics
from engine.callers import ROOT
from engine.daemons.identity import identity
from engine.devices.service import SIZES
from engine.ports import Clock, DeviceSpec, SandboxBackend
from engine.devices.models import Shape
from engine.settings import Settings
from engine.store import Store, new_id

log = logging.getLogger("agentdock.pool")
RETRY_SECONDS = 30.0
"""After a pooled device of a shape failed to start (an image not built, a busy engine), before trying again."""
REFILL_DELAY_SECONDS = 0.1
"""After a claim, before a replacement is started: starting a container takes the machine for a
moment, which the claiming run's exec (a few Docker calls) should have to itself."""
DRAIN_SECONDS = 15.0
"""How long a stopping daemon spends removing its ready devices (the next start removes any left)."""


class Pool:
    """The ready devices, by shape, and the service that keeps them topped up."""

    def __init__(self, store: Store, backend: SandboxBackend, clock: Clock, settings: Settings, *,
                 active: Callable[[], int]) -> None:
        self.store = store
        self.backend = backend
        self.clock = clock
        self.daemon_id = identity(settings.home)
        self.size = settings.pool_size
        self.cap = settings.max_active_runs
        self.idle_seconds = settings.pool_shape_idle_seconds
        self.active = active
        """Runs admitted and not yet settled (`RunService.active`)."""
        size = SIZES[models.TargetKind.sandbox]
        self.default = Shape(settings.image, size["cpus"], size["memory_mb"], size["pids_limit"],
                             settings.sandbox_workspace_mb, settings.sandbox_tmp_mb)
        """A run's sandbox when neither it nor a profile says otherwise: pooled from the start."""
        self._ready: dict[Shape, deque[str]] = {}
        self._starting: dict[Shape, int] = {}
        self._wanted: dict[Shape, float] = {}
        """Other shapes runs asked for, and when last (monotonic)."""
        self._retry_at: dict[Shape, float] = {}
        self._claimed_at = float("-inf")
        self._tg: TaskGroup | None = None

    # ------------------------------------------------------------ what admission uses

    @property
    def ready(self) -> int:
        return sum(len(q) for q in self._ready.values())

    @property
    def held(self) -> int:
        """Slots the pool holds: its ready devices and those being started."""
        return self.ready + sum(self._starting.values())

    def take(self, shape: Shape) -> str | None:
        """A ready device of `shape`, no longer the pool's (None: none is ready). The caller records the
        claim (`Tx.claim_device`), or gives it back if its transaction fails."""
        queue = self._ready.get(shape)
        if not queue:
            return None
        self._claimed_at = self.clock.monotonic()
        return queue.popleft()

    def give_back(self, shape: Shape, device_id: str) -> None:
        self._ready.setdefault(shape, deque()).appendleft(device_id)

    def want(self, shape: Shape) -> None:
        """A run of `shape` is admitted: pool that shape too (the default one always is), while runs
        keep asking for it."""
        if self.size and shape != self.default:
            self._wanted[shape] = self.clock.monotonic()

    def evict(self) -> bool:
        """Give a ready device's slot to a run that needs one: the device leaves the pool now and is
        removed in the background. False when none is ready."""
        if self._tg is None or not self.ready:
            return False
        shape = max(self._ready, key=lambda s: len(self._ready[s]))
        self.discard(self._ready[shape].pop())
        return True

    def discard(self, device_id: str) -> None:
        """Remove a device that left the pool, in the background (the next start, if this one dies first)."""
        if self._tg is not None:
            self._tg.start_soon(self._remove, device_id)

    # ------------------------------------------------------------ the service

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep each wanted shape topped up; on the way out, remove the ready devices."""
        if not self.size:
            task_status.started()
            return
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                while True:
                    changed = self.store.topics.watch(topics.ADMISSION)  # a run queued, started or settled
                    delay = await self._top_up()
                    if delay is None:
                        await changed.wait()
                    else:
                        await self.clock.wait(changed, delay)
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(DRAIN_SECONDS):
                await self._drain()

    async def _top_up(self) -> float | None:
        """Start devices, one at a time, while a wanted shape is short, a slot is free and no run is
        queued for one. Returns the seconds until a shape is forgotten or retried (None: nothing is due)."""
        now = self.clock.monotonic()
        for shape, at in list(self._wanted.items()):
            if now - at >= self.idle_seconds:  # no run asked for it for a while: give its slots back
                del self._wanted[shape]
                self._retry_at.pop(shape, None)
                for device_id in self._ready.pop(shape, ()):
                    self.discard(device_id)
        shapes = [self.default, *sorted(self._wanted, key=lambda s: -self._wanted[s])]
        for shape in shapes:
            while (len(self._ready.get(shape, ())) + self._starting.get(shape, 0) < self.size
                   and self.active() + self.held < self.cap
                   and self._retry_at.get(shape, 0.0) <= self.clock.monotonic()):
                if await self.store.runs.queued_runs(1, self.daemon_id):
                    return None  # admission first: its commit wakes this service again
                settling = self._claimed_at + REFILL_DELAY_SECONDS - self.clock.monotonic()
                if settling > 0:
                    return settling
                if not await self._start(shape):
                    self._retry_at[shape] = self.clock.monotonic() + RETRY_SECONDS
        due = [at + self.idle_seconds for at in self._wanted.values()]
        due += [at for at in self._retry_at.values() if at > now]
        return max(0.0, min(due) - self.clock.monotonic()) if due else None

    async def _start(self, shape: Shape) -> bool:
        """Start one pooled device of `shape`: its container first, then its record (a crash in between
        leaves a labelled container with no record, which the reconciler removes)."""
        device_id = new_id("sbx")
        spec = DeviceSpec(device_id=device_id, kind="sandbox", image=shape.image, cpus=shape.cpus,
                          memory_mb=shape.memory_mb, pids_limit=shape.pids_limit, workspace_mb=shape.workspace_mb,
                          tmp_mb=shape.tmp_mb, ephemeral=True, pool=shape.key)
        self._starting[shape] = self._starting.get(shape, 0) + 1
        try:
            await self.backend.create(spec)
            try:
                now = self.clock.now()
                async with self.store.write(now) as tx:
                    await tx.devices.insert_device({
                        "id": device_id, "kind": "sandbox", "name": None, "image": shape.image, "cpus": shape.cpus,
                        "memory_mb": shape.memory_mb, "pids_limit": shape.pids_limit,
                        "workspace_mb": shape.workspace_mb, "tmp_mb": shape.tmp_mb, "network": False, "env": {},
                        "metadata": {}, "ephemeral": True, "run_id": None, "pool": shape.key,
                        "created_by": ROOT.session_id, "created_at": now, "updated_at": now,
                        "daemon_id": self.daemon_id})
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.backend.remove(device_id)
                raise
        except errors.EngineError as exc:
            if shape not in self._retry_at:  # said once, not every retry
                log.warning("could not start a pooled sandbox (%s), retrying every %d s: %s", shape.key,
                            RETRY_SECONDS, exc.message)
            return False
        finally:
            self._starting[shape] -= 1
        self._retry_at.pop(shape, None)
        self._ready.setdefault(shape, deque()).append(device_id)
        self.store.topics.publish([topics.ADMISSION])  # a run queued meanwhile may claim it
        return True

    async def _remove(self, device_id: str) -> None:
        try:
            await self.backend.remove(device_id)
            async with self.store.write(self.clock.now()) as tx:
                await tx.devices.delete_device(device_id)
        except errors.EngineError as exc:
            log.warning("could not remove the pooled sandbox %s (the next start will): %s", device_id, exc.message)

    async def _drain(self) -> None:
        ready = [device_id for queue in self._ready.values() for device_id in queue]
        self._ready.clear()
        async with anyio.create_task_group() as tg:
            for device_id in ready:
                tg.start_soon(self._remove, device_id)
