"""Whether this daemon leads: the reapers (session TTLs, task leases, approval expiries) work only while
it holds the leader's lease, so one daemon of those sharing a database reaps for all. On one SQLite file
the one daemon always leads."""

from __future__ import annotations

import anyio


class Leadership:
    def __init__(self, held: bool = True) -> None:
        self.held = held
        self._flipped = anyio.Event()

    def set(self, held: bool) -> None:
        if held != self.held:
            self.held = held
            self._flipped.set()
            self._flipped = anyio.Event()

    async def wait_held(self) -> None:
        """Return once this daemon leads (at once while it does)."""
        while not self.held:
            await self._flipped.wait()
