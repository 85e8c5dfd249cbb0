"""The composition root: one place builds the engine from settings, a sandbox backend, the runtime
harnesses, a clock and the model gateway's egress, and runs its background services in one task group. The daemon, the
tests, the demo and the benchmarks all build it here; swap the backend, keep the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc

from engine.admission import Admission
from engine.approvals.service import ApprovalService
from engine.channels.service import ChannelService
from engine.clock import SystemClock
from engine.context import ContextService
from engine.devices.service import DeviceService
from engine.gateway import Egress, Gateway
from engine.groups.service import GroupService
from engine.masking import Masking
from engine.devices.pool import Pool
from engine.ports import Clock, Harness, SandboxBackend
from engine.profiles.service import ProfileService
from engine.quotas.service import Quotas
from engine.runs.service import RunService
from engine.sessions.service import SessionService
from engine.sessions.models import MAX_ACTIVE_TASK_LEASES
from engine.secrets import SecretStore
from engine.settings import Settings
from engine.daemons.leadership import Leadership
from engine.daemons.service import DaemonService
from engine.souls.service import SoulService
from engine.store import open_store
from engine.tasks.service import TaskService
from engine.tokens import Tokens
from engine.topics import Topics


class Engine:
    """The services over one store and one backend. Use `async with engine.running():`."""

    def __init__(self, settings: Settings, *, backend: SandboxBackend, harnesses: Callable[[str], Harness],
                 clock: Clock | None = None, egress: Egress | None = None) -> None:
        self.settings = settings
        self.egress = egress
        self.backend = backend
        self.clock = clock or SystemClock()
        self.topics = Topics()
        self.store = open_store(settings, self.topics)
        self.secrets = SecretStore(settings.secrets_dir)
        self.quotas = Quotas(self.store, settings)
        self.masks = Masking(self.store, self.secrets)
        self.profiles = ProfileService(self.store, self.secrets, self.clock, masks=self.masks)
        self.leadership = Leadership()
        """Whether this daemon leads (always on SQLite): the reapers work while it does."""
        self.approvals = ApprovalService(self.store, self.clock, settings, leadership=self.leadership)
        self.devices = DeviceService(self.store, backend, self.clock, settings, self.profiles, self.approvals,
                                     quotas=self.quotas, masks=self.masks)
        self.tokens = Tokens(settings.home)
        self.gateway = Gateway(self.store, self.secrets, self.tokens, self.clock, enabled=egress is not None)
        self.runs = RunService(self.store, backend, self.devices, harnesses, self.clock, settings, self.tokens,
                               self.secrets, self.profiles, masks=self.masks, gateway=self.gateway)
        self.groups = GroupService(self.store, self.runs, self.clock, settings, self.approvals, masks=self.masks)
        self.pool = Pool(self.store, backend, self.clock, settings, active=lambda: self.runs.active)
        self.admission = Admission(self.store, self.runs, self.clock, settings.max_active_runs, groups=self.groups,
                                   pool=self.pool)
        self.souls = SoulService(self.store, self.clock, settings)
        self.daemons = DaemonService(self.store, self.clock, settings, on_lost=self.runs.abandon_settled,
                                     leadership=self.leadership)
        self.tasks = TaskService(self.store, self.clock, settings, max_active_leases=MAX_ACTIVE_TASK_LEASES,
                                 quotas=self.quotas, masks=self.masks, leadership=self.leadership)
        self.channels = ChannelService(self.store, self.clock, settings, self.quotas, self.masks)
        self.sessions = SessionService(self.store, self.runs, self.souls, self.tokens, self.clock, settings,
                                       leases=self.tasks.active_leases, channels=self.channels.list_records,
                                       profiles=self.profiles, leadership=self.leadership)
        self.context = ContextService(self.sessions, self.souls, self.channels, self.tasks, self.clock)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Engine] = anyio.TASK_STATUS_IGNORED) -> None:
        """`running()` as a task: ready once every service is, then until cancelled."""
        async with self.running():
            task_status.started(self)
            await anyio.sleep_forever()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Open the store, reconcile, start every background service (each reports ready before the
        next starts), and stop them all on the way out."""
        async with self.store, anyio.create_task_group() as tg:
            await tg.start(self.store.serve)
            await tg.start(self.daemons.serve)  # recorded before it resumes the runs it started
            if self.egress is not None:  # before runs resume: they need its address
                await tg.start(self.egress.serve, self.gateway)
            await tg.start(self.runs.serve)
            await tg.start(self.pool.serve)  # after the reconcile: it starts the pool afresh
            await tg.start(self.admission.serve)
            await tg.start(self.sessions.serve)
            await tg.start(self.tasks.serve)
            await tg.start(self.approvals.serve)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
