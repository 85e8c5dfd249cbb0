"""The engine on the real Docker engine: the backend, harnesses and model gateway this package implements."""

from __future__ import annotations

from engine.app import Engine
from engine.ports import Clock
from engine.settings import Settings
from runtimes import adapters
from runtimes.docker_backend import DockerBackend
from runtimes.gateway import Egress


def docker_engine(settings: Settings, *, clock: Clock | None = None) -> Engine:
    backend = DockerBackend(
        settings.home, threads=settings.docker_threads, call_timeout=settings.docker_call_timeout_seconds,
        workspace_mb={"sandbox": settings.sandbox_workspace_mb, "computer": settings.computer_workspace_mb},
        tmp_mb={"sandbox": settings.sandbox_tmp_mb, "computer": settings.computer_tmp_mb})
    return Engine(settings, backend=backend, harnesses=adapters.resolver(settings), clock=clock,
                  egress=Egress(backend, settings))
