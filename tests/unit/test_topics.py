"""`topics.until`, the engine's one bounded wait, on the fake clock (time moves only when told)."""

from __future__ import annotations

import anyio
import pytest

from engine import topics
from engine.clock import FakeClock

pytestmark = pytest.mark.anyio


async def test_a_commit_between_a_look_and_its_wait_still_wakes_the_waiter():
    watched, clock, looks = topics.Topics(), FakeClock(), []

    async def look() -> tuple[bool, int]:
        looks.append(len(looks))
        if len(looks) == 1:
            watched.publish(["t"])  # committed after the look read, before it waits
        return len(looks) == 2, len(looks)

    with anyio.fail_after(5):  # the clock never moves: only the commit can end the wait
        assert await topics.until(watched, clock, "t", 30, look) == 2


async def test_what_becomes_due_without_a_commit_is_looked_at_when_due_and_time_ends_the_wait():
    watched, clock, looks, between = topics.Topics(), FakeClock(), [], []

    async def look() -> tuple[bool, int]:
        looks.append(clock.monotonic())
        return False, len(looks)

    async def due() -> float:
        return 3.0

    async def check() -> None:
        between.append(True)

    async with anyio.create_task_group() as tg:
        result: list[int] = []

        async def wait() -> None:
            result.append(await topics.until(watched, clock, "t", 10, look, due=due, between=check))

        tg.start_soon(wait)
        for _ in range(4):
            await clock.until_sleepers(1)
            clock.advance(3)
    assert looks == [0, 3, 6, 9, 12] and result == [5]  # every 3 s, then the 10 s bound
    assert len(between) == 4
