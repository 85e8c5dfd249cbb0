"""This daemon among others on one database (PostgreSQL): each records itself and beats; the one that
holds the leader's lease declares lost a daemon that stopped beating and settles its runs.

A daemon is its home: `home/daemon.id` names it across restarts, so a daemon that comes back before the
leader gives up on it resumes its runs (the reconcile), and one that comes back after finds them
settled `process_lost` (a group retries such an entry elsewhere) and removes their containers. On one
SQLite file there is one daemon: it beats and leads alone.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from engine import models
from engine.daemons.identity import identity
from engine.daemons.leadership import Leadership
from engine.ports import Clock
from engine.settings import Settings
from engine.store import Store

log = logging.getLogger("agentdock.daemons")

LEADER = "leader"
"""The lease whose holder settles the runs of lost daemons."""


class DaemonService:
    def __init__(self, store: Store, clock: Clock, settings: Settings, *,
                 on_lost: Callable[[], Awaitable[Any]] | None = None, leadership: Leadership | None = None) -> None:
        self.store = store
        self.leadership = leadership or Leadership()
        """Set at each beat: the reapers work while this daemon leads."""
        self.on_lost = on_lost
        """Called when this daemon finds it was declared lost: stop what it still runs of runs settled without it."""
        self.clock = clock
        self.settings = settings
        self.id = identity(settings.home)
        self.leader = False
        """Whether this daemon held the leader's lease at its last beat."""

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with self.store.write(self.clock.now()) as tx:
            await tx.daemons.register_daemon(self.id, str(self.settings.home), socket.gethostname(), os.getpid())
        if not self.store.shared:
            self.leader = True  # the one daemon of a SQLite file: nobody to beat for
            task_status.started()
            return
        await self.beat()  # whether it leads is known before the reapers start
        task_status.started()
        while True:
            # Real time, not the engine's clock (a test's fake clock moves only when told): the beat is
            # what other processes see. Its stamps are the engine's clock, which tests move to lose it.
            await anyio.sleep(self.settings.daemon_heartbeat_seconds)
            try:
                await self.beat()
            except Exception:  # a database hiccup must not end the daemon's beat; the next one retries
                log.exception("daemon heartbeat failed")

    async def beat(self) -> None:
        """Say this daemon is alive, take or renew the leader's lease, and as leader settle the lost."""
        now = self.clock.now()
        lease_until = now + timedelta(seconds=self.settings.daemon_lost_after_seconds)
        async with self.store.write(now) as tx:
            alive = await tx.daemons.beat(self.id)
            if not alive:  # declared lost while it was away (paused, cut off): its runs were settled
                await tx.daemons.register_daemon(self.id, str(self.settings.home), socket.gethostname(), os.getpid())
            self.leader = await tx.daemons.hold_lease(LEADER, self.id, lease_until)
        self.leadership.set(self.leader)
        if not alive:
            log.warning("this daemon (%s) had been declared lost; its runs were settled by the leader", self.id)
            if self.on_lost is not None:
                await self.on_lost()
        if self.leader:
            await self.settle_lost()

    async def settle_lost(self) -> list[str]:
        """Declare lost every other daemon silent for `daemon_lost_after_seconds`, ending its running runs
        `process_lost` (their groups retry those entries, here or on another daemon). Returns the runs."""
        now = self.clock.now()
        before = now - timedelta(seconds=self.settings.daemon_lost_after_seconds)
        settled: list[str] = []
        for daemon in await self.store.daemons.silent_daemons(self.id, before):
            async with self.store.write(now) as tx:
                if not await tx.daemons.declare_lost(daemon.id, before):
                    continue  # it beat meanwhile
                for run in await tx.daemons.running_on(daemon.id):
                    error = (f"its daemon {daemon.id} ({daemon.host}, {daemon.home}) stopped answering for "
                             f"{self.settings.daemon_lost_after_seconds:g} s")
                    if not await tx.runs.transition_run(run["id"], [models.RunStatus.running], status="failed",
                                                   failure_kind="process_lost", error=error, finished_at=now):
                        continue
                    await tx.runs.fold_output(run["id"])
                    await tx.append_events(run["id"], [("run_finished", "Run failed", {
                        "status": "failed", "exit_code": None, "failure_kind": "process_lost"})],
                        group_id=run["agent_run_group_id"])
                    if run["ephemeral"]:
                        await tx.devices.delete_device(run["target_id"])  # its container goes when that daemon returns
                    settled.append(run["id"])
            log.warning("daemon %s stopped answering; %d of its runs ended process_lost", daemon.id, len(settled))
        return settled
