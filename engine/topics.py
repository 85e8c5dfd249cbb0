"""Topics: one notifier keyed by topic (`run:<id>`, `group:<id>`, `admission`, later a channel or a
task queue) that wakes exactly the waiters of a topic when a transaction that touched it commits.

A waiter takes `watch(topic)` before it reads state and waits on it after: a commit between the
read and the wait still wakes it, so nothing is missed and nobody polls. `until` is that loop, once,
for every bounded wait of the engine (a run's or a group's end, events, a claim, a message, a decision).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from engine.ports import Clock

T = TypeVar("T")


def run(run_id: str) -> str:
    return f"run:{run_id}"


def group(group_id: str) -> str:
    return f"group:{group_id}"


def channel(channel_id: str) -> str:
    return f"channel:{channel_id}"


def approval(approval_id: str) -> str:
    return f"approval:{approval_id}"


ADMISSION = "admission"
"""Touched when a run is queued or an active run ends: the scheduler may admit another."""
SESSIONS = "sessions"
"""A session was spawned, stopped or expired (the TTL reaper waits on it for a sooner expiry)."""


class Topics:
    def __init__(self) -> None:
        self._waiting: dict[str, anyio.Event] = {}

    def watch(self, topic: str) -> anyio.Event:
        """The event set by the next commit that touches `topic`."""
        return self._waiting.setdefault(topic, anyio.Event())

    def publish(self, topics: Iterable[str]) -> None:
        """Wake the waiters of each topic (called by the store once a transaction has committed)."""
        for topic in topics:
            event = self._waiting.pop(topic, None)
            if event is not None:
                event.set()

    @staticmethod
    async def wait(event: anyio.Event, timeout: float) -> bool:
        """Wait for `event` at most `timeout` seconds; True if it was set."""
        with anyio.move_on_after(timeout):
            await event.wait()
            return True
        return False
TASKS = "tasks"
"""A task was created, claimed, released, failed, completed or its lease changed (claim waiters and the
lease reaper wait on it)."""
APPROVALS = "approvals"
"""The approvals' event stream (the audit of who asked for what and who decided), touched by every change
to an approval: the expiry reaper waits on it for a sooner expiry."""


async def until(watched: Topics, clock: Clock, topic: str, seconds: float,
                look: Callable[[], Awaitable[tuple[bool, T]]], *,
                due: Callable[[], Awaitable[float | None]] | None = None,
                between: Callable[[], Awaitable[None]] | None = None) -> T:
    """What `look` gives once it says it is done, or when `seconds` have passed. Between looks it waits
    for the next commit that touches `topic` (watched before each look, so a commit made between a look
    and its wait still wakes it), or at most the seconds `due` gives (something that becomes so without
    a commit: a task out of its backoff, an approval's expiry). `between` runs after each wait (is the
    waiter's session still live?)."""
    deadline = clock.monotonic() + seconds
    while True:
        changed = watched.watch(topic)
        done, value = await look()
        left = deadline - clock.monotonic()
        if done or left <= 0:
            return value
        if due is not None and (soon := await due()) is not None:
            left = min(left, max(soon, 0.001))
        await clock.wait(changed, left)
        if between is not None:
            await between()
