"""Server-sent events for an event stream (a run's, a group's): replay from the cursor, then live.

Each event goes out with its sequence as its SSE id, so a client that reconnects with `Last-Event-ID`
resumes after the last one it saw. The stream closes once its run or group has ended and every event
was sent; heartbeat comments go out while the server waits for the next event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from engine import errors, models

POLL_SECONDS = 30
"""One server-side wait for the next event (heartbeats go out meanwhile)."""


class Page(Protocol):
    @property
    def data(self) -> list[Any]: ...

    @property
    def next_after_sequence(self) -> int: ...


def resume_from(request: Request, after: int) -> int:
    """Where a client resumes: its `Last-Event-ID` (the last sequence it saw) over the query's cursor."""
    given = request.headers.getlist("last-event-id")
    if not given:
        return after
    if len(given) > 1 or not given[0].isdigit() or len(given[0]) > 16 or int(given[0]) > models.MAX_SEQUENCE:
        raise errors.InvalidInput("Last-Event-ID", "must be one event sequence number (digits) this stream sent")
    return int(given[0])


def response(first: Page, more: Callable[[int, float], Awaitable[Page]], ended: Callable[[Page], bool],
             heartbeat: float) -> EventSourceResponse:
    """The stream from `first` on: `more(after, wait)` reads the next page (waiting up to `wait` s);
    the stream closes after an empty page for which `ended` holds."""
    return EventSourceResponse(_events(first, more, ended), ping=heartbeat)


async def _events(page: Page, more: Callable[[int, float], Awaitable[Page]],
                  ended: Callable[[Page], bool]) -> AsyncIterator[ServerSentEvent]:
    try:
        while True:
            for ev in page.data:
                yield ServerSentEvent(data=ev.model_dump_json(), id=str(ev.sequence))
            if not page.data and ended(page):
                return
            page = await more(page.next_after_sequence, POLL_SECONDS)
    except errors.EngineError as exc:
        diag = exc.diagnostic()
        yield ServerSentEvent(data=json.dumps({"diagnostic": diag.model_dump(mode="json"), "error": diag.message}),
                              event="error")
