"""Shared fixtures: a short-pathed home, the engine wired to real Docker, and a real daemon process."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import docker
import pytest

from engine import ports
from engine.devices import DeviceService
from engine.runs import RunService
from engine.settings import Settings
from engine.store import Store
from mcp_server import daemon as daemon_mod
from runtimes import harness
from runtimes.docker_backend import DockerBackend

SMALL = "agentdock-small:latest"
FULL = "agentdock-full:latest"
ROOT = Path(__file__).resolve().parent.parent
AGENTDOCK = str(ROOT / ".venv" / "bin" / "agentdock")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home() -> Iterator[Path]:
    """A short path: Unix socket paths are limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ad-", dir="/tmp"))
    yield path
    remove_owned_containers(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, image=SMALL, cancel_grace_seconds=1.0)


def remove_owned_containers(home: Path) -> None:
    client = docker.from_env()
    for c in client.containers.list(all=True, filters={"label": f"agentdock.home={home}"}):
        c.remove(force=True, v=True)
    for v in client.volumes.list(filters={"label": f"agentdock.home={home}"}):
        v.remove(force=True)


def owned_containers(home: Path) -> list[docker.models.containers.Container]:
    return docker.from_env().containers.list(all=True, filters={"label": f"agentdock.home={home}"})


@dataclass
class Engine:
    settings: Settings
    store: Store
    backend: DockerBackend
    devices: DeviceService
    runs: RunService


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    """The engine's services on real SQLite and the real Docker engine, supervisors running."""
    async with Store(settings.db_path) as store:
        backend = DockerBackend(settings.home)
        clock = ports.SystemClock()
        devices = DeviceService(store, backend, clock, settings)
        runs = RunService(store, backend, devices, harness.get, clock, settings)
        async with anyio.create_task_group() as tg:
            await tg.start(runs.serve)
            yield Engine(settings, store, backend, devices, runs)
            tg.cancel_scope.cancel()


@dataclass
class Daemon:
    settings: Settings
    env: dict[str, str]

    def start(self) -> int:
        return daemon_mod.start(self.settings)

    def pid(self) -> int | None:
        return daemon_mod.running_pid(self.settings)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENTDOCK, *args], env=self.env, capture_output=True, text=True, timeout=120,
                              check=check)


@pytest.fixture
def daemon(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A real daemon process for a fresh home (small image, short cancel grace)."""
    env = {**os.environ, "AGENTDOCK_HOME": str(settings.home), "AGENTDOCK_IMAGE": SMALL,
           "AGENTDOCK_CANCEL_GRACE_SECONDS": "1"}
    for k in ("AGENTDOCK_HOME", "AGENTDOCK_IMAGE", "AGENTDOCK_CANCEL_GRACE_SECONDS"):
        monkeypatch.setenv(k, env[k])
    d = Daemon(settings, env)
    d.start()
    yield d
    daemon_mod.stop(settings)
