"""Time, injected: `now`, `monotonic`, `sleep` and bounded waits all come from a clock, so leases,
TTLs, run timeouts, the cancel grace and backoff are testable without real waiting.
`FakeClock` ships with the package: time moves only when a test advances it."""

from __future__ import annotations

import heapq
import itertools
import time
from datetime import UTC, datetime, timedelta

import anyio


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(seconds, 0))

    async def wait(self, event: anyio.Event, timeout: float) -> bool:
        """Wait for `event` at most `timeout` seconds; True if it was set."""
        with anyio.move_on_after(max(timeout, 0)):
            await event.wait()
        return event.is_set()


class FakeClock:
    """A clock whose time moves only by `advance()`; sleepers wake when it passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event, int]] = []
        """(deadline, order, its event, the sleeping task's id)"""
        self._order = itertools.count()
        self._changed = anyio.Event()

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), woken,
                                        anyio.get_current_task().id))
        self._poke()
        await woken.wait()

    async def wait(self, event: anyio.Event, timeout: float) -> bool:
        if event.is_set():
            return True
        # The deadline counts from the call, not from when a timer task first runs: time advanced in
        # between must not push it later.
        woken = anyio.Event()
        entry = (self._elapsed + max(timeout, 0), next(self._order), woken, anyio.get_current_task().id)
        heapq.heappush(self._sleepers, entry)
        self._poke()
        try:
            async with anyio.create_task_group() as tg:
                async def timer() -> None:
                    await woken.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(timer)
                await event.wait()
                tg.cancel_scope.cancel()
        finally:
            if not woken.is_set():
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has come."""
        self._elapsed += seconds
        while self._sleepers and self._sleepers[0][0] <= self._elapsed:
            heapq.heappop(self._sleepers)[2].set()

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    async def until_asleep(self, task_id: int) -> None:
        """Wait (in real time, bounded by the caller) until the task `task_id` sleeps on this clock."""
        while not any(entry[3] == task_id for entry in self._sleepers):
            changed = self._changed
            await changed.wait()

    async def until_sleepers(self, count: int) -> None:
        """Wait (in real time, bounded by the caller) until `count` tasks sleep on this clock."""
        while len(self._sleepers) < count:
            changed = self._changed
            await changed.wait()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
