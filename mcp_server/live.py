"""Following a group at a terminal: `agent-run-groups show --watch` and `events --stream`.

In a terminal, a live `rich` display: a progress bar of the group's entries by status and its latest
events. Elsewhere (a pipe, a file, CI), plain lines, one per event (JSON lines with `--json`). Both
are fed by the server-side long-poll of the group's events, so a new event shows at once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from engine.groups import models as gm
from mcp_server import commands

POLL_SECONDS = 30
PROGRESS_WAIT_SECONDS = 10
"""One wait for the group's next event while a dispatch is followed."""
LATEST = 8
"""Events shown under the progress bar."""


class Source(Protocol):
    """Where the display reads one group from (the groups area gives it, over the API)."""

    group_id: str

    async def events(self, after: int, wait: float) -> gm.GroupEventList: ...

    async def group(self) -> gm.Group: ...

    async def dispatch(self, dispatch_id: str) -> gm.DispatchResult: ...


async def pages(source: Source, after: int) -> AsyncIterator[gm.GroupEventList]:
    """The group's events page by page as they come, until it has ended and every event was read."""
    page = await source.events(after, 0)
    while True:
        yield page
        if not page.data and not page.is_active:
            return
        page = await source.events(page.next_after_sequence, POLL_SECONDS)


def line(ev: gm.GroupEvent) -> str:
    who = ev.agent_run_id or "group"
    return commands.safe(f"{ev.sequence:>6}  {ev.type:<16} {who:<24} {ev.message or json.dumps(ev.payload)[:120]}")


def _view(group: gm.Group, latest: deque[str]) -> Group:
    c = group.entry_counts
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} ended"), expand=False)
    ended = c.succeeded + c.failed + c.canceled
    bar.add_task(group.name or group.id, total=max(c.total, group.expected_runs or 0, 1), completed=ended)
    counts = Text.assemble(("queued ", "dim"), str(c.queued), ("  running ", "cyan"), str(c.running),
                           ("  succeeded ", "green"), str(c.succeeded), ("  failed ", "red"), str(c.failed),
                           ("  canceled ", "yellow"), str(c.canceled), f"   {group.status.value}")
    events = Table.grid()
    for text in latest:
        events.add_row(Text(text, overflow="ellipsis", no_wrap=True))
    return Group(bar, counts, events)


async def watch(source: Source, *, as_json: bool = False, after: int = 0, show_events: bool = False) -> gm.Group:
    """Follow the group until it has ended; returns its final record."""
    group = await source.group()
    if sys.stdout.isatty() and not as_json:
        latest: deque[str] = deque(maxlen=LATEST)
        console = Console()
        with Live(_view(group, latest), console=console, refresh_per_second=8) as live:
            async for page in pages(source, after):
                latest.extend(line(ev) for ev in page.data)
                group = await source.group()
                live.update(_view(group, latest))
        return group
    status = None
    async for page in pages(source, after):
        for ev in page.data:
            if show_events or as_json:
                print(ev.model_dump_json() if as_json else line(ev), flush=True)
        group = await source.group()
        if not as_json and not show_events and group.status_message != status:
            status = group.status_message
            print(commands.safe(f"{group.id}  {group.status.value}  {status}"), flush=True)
    return group


async def dispatch(source: Source, result: gm.DispatchResult) -> gm.DispatchResult:
    """A synchronous dispatch at a terminal: a progress bar of its entries ended, with the group's latest
    events under it (plain lines elsewhere), until every entry of this dispatch has ended."""
    total, after = len(result.entries), result.next_after_sequence
    tty = sys.stdout.isatty()
    latest: deque[str] = deque(maxlen=LATEST)
    bar = Progress(TextColumn("[bold]dispatch {task.fields[dispatch]}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} ended"), expand=False)
    task = bar.add_task("dispatch", total=total, completed=len(result.results), dispatch=result.dispatch_id)
    with Live(Group(bar, Table.grid()), console=Console(), refresh_per_second=8, transient=False) if tty \
            else _quiet() as view:
        while not result.done:
            page = await source.events(after, PROGRESS_WAIT_SECONDS)
            after = page.next_after_sequence
            result = await source.dispatch(result.dispatch_id)
            if tty:
                latest.extend(line(ev) for ev in page.data)
                bar.update(task, completed=len(result.results))
                events = Table.grid()
                for text in latest:
                    events.add_row(Text(text, overflow="ellipsis", no_wrap=True))
                view.update(Group(bar, events))
            elif page.data:
                print(commands.safe(f"{result.dispatch_id}  {len(result.results)}/{total} ended"), flush=True)
            if not page.data and not page.is_active:
                break
    return result


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    yield None


async def stream(source: Source, after: int, *, as_json: bool = False) -> None:
    """`events --stream`: every event from the cursor on, live, until the group has ended."""
    await watch(source, as_json=as_json, after=after, show_events=True)
