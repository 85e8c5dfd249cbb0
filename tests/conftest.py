"""Shared fixtures: a short-pathed home, the engine wired to real Docker, and a real daemon process."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from mcp_types import CallToolResult, TextContent

from engine import app as app_mod
from engine import store as store_mod
from engine.app import Engine
from engine.store import Store
from engine.topics import Topics
from engine.settings import Settings
from mcp_server import areas
from mcp_server import daemon as daemon_mod
from mcp_server import http as http_app
from runtimes import disks, gateway, small_image
from runtimes.wiring import docker_engine
from tests import pgcluster

os.environ["AGENTDOCK_POOL_SIZE"] = "0"
"""The warm pool is off unless a test turns it on (tests/*/test_pool.py): the rest of the suite counts
containers and starts, and a pool would add its own."""

SMALL = small_image.small_tag()
"""agentdock-small for this checkout's fakes (`latest` may be another checkout's on a shared engine)."""
FULL = "agentdock-full:latest"
ROOT = Path(__file__).resolve().parent.parent
AGENTDOCK = str(ROOT / ".venv" / "bin" / "agentdock")
LOGGED_ERROR = re.compile(r"Traceback|\b(?:ERROR|CRITICAL)\b")


def logged_errors(text: str) -> list[str]:
    """The lines of a log or a stderr that show an exception or an error logged: what a user must never see."""
    return [line for line in text.splitlines() if LOGGED_ERROR.search(line)]


def tool_error(result: CallToolResult) -> dict:
    """The diagnostic of an MCP tool result that must be an error, after checking the shape every client
    accepts: `isError`, no structured content (it would have to match the tool's output schema), and one
    text content holding the seeds' `{"diagnostic": ..., "error": ...}` as JSON."""
    assert result.is_error, f"unexpectedly succeeded: {result.structured_content}"
    assert result.structured_content is None, result.structured_content
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent), result.content
    try:
        body = json.loads(result.content[0].text)
    except ValueError:
        raise AssertionError(f"a tool error that is not the diagnostic JSON: {result.content[0].text[:500]!r}") from None
    assert set(body) == {"diagnostic", "error"}, body
    diag = body["diagnostic"]
    assert {"code", "category", "severity", "title", "message", "evidence", "id"} <= set(diag), diag
    assert diag["message"] and body["error"] == diag["message"], body
    assert "Traceback" not in result.content[0].text
    return diag


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


STORE = os.environ.get("AGENTDOCK_TEST_STORE", "sqlite")
"""The store the suite runs on: `sqlite` (each home's file) or `postgres` (a fresh database per test in a
throwaway cluster: `AGENTDOCK_TEST_STORE=postgres pytest tests/unit`)."""


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgcluster.Cluster]:
    """A throwaway PostgreSQL cluster for the session (unix socket, no fsync)."""
    if pgcluster.bindir() is None:
        pytest.fail("PostgreSQL is not installed: run scripts/setup.sh (it installs Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="ad-pg-", dir="/tmp"))
    cluster = pgcluster.Cluster(root).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: pgcluster.Cluster) -> Iterator[str]:
    """The URL of a new empty database, dropped after the test."""
    name = f"t_{secrets.token_hex(6)}"
    yield pg_cluster.create_database(name)
    pg_cluster.drop_database(name)


@pytest.fixture(autouse=True)
def store_under_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """On `AGENTDOCK_TEST_STORE=postgres`, every engine a test makes keeps its state in PostgreSQL: a
    database per home, as each home has its SQLite file (`pgcluster.Homes`), unless it names one."""
    if STORE != "postgres":
        yield
        return
    homes = pgcluster.HOMES = pgcluster.Homes(request.getfixturevalue("pg_cluster"))

    def per_home(settings: Settings, notifier: Topics) -> Store:
        return store_mod.open_store(settings.model_copy(update={"database_url": settings.database_url or
                                                                 homes.url(settings.home)}), notifier)

    monkeypatch.setattr(app_mod, "open_store", per_home)
    yield
    homes.drop_all()
    pgcluster.HOMES = None


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
    for attempt in range(10):
        # a daemon killed at the end of its grace may have had a container created a moment before: look
        # again until the network has no one left on it
        for c in client.containers.list(all=True, filters={"label": f"agentdock.home={home}"}):
            try:
                c.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
        try:
            gateway.remove_egress(str(home))  # the model gateway's network, once no device is on it
            break
        except docker.errors.APIError:
            if attempt == 9:
                raise
            time.sleep(0.5)
    for v in client.volumes.list(filters={"label": f"agentdock.home={home}"}):
        v.remove(force=True)
    for device_id in disks.owned(home):  # the workspaces' mounts outlive the daemon
        disks.DeviceDisks.of(home, device_id).remove()


def owned_containers(home: Path) -> list[docker.models.containers.Container]:
    return docker.from_env().containers.list(all=True, filters={"label": f"agentdock.home={home}"})


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    """The engine on real SQLite and the real Docker engine, built by the composition root, running."""
    async with docker_engine(settings).running() as running:
        yield running


@pytest.fixture
async def app_client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """The daemon's control app in this process (httpx's ASGI transport) over the real engine: for
    validation and status-code tests, which need neither a socket nor a second process. What only the
    socket shows (its mode, uvicorn's framing, streams) stays on `daemon`."""
    transport = httpx.ASGITransport(app=http_app.create_app(areas.endpoints(engine)))
    async with httpx.AsyncClient(transport=transport, base_url="http://agentdock", timeout=60) as client:
        yield client


@dataclass
class Daemon:
    settings: Settings
    env: dict[str, str]

    def start(self) -> int:
        return daemon_mod.start(self.settings)

    def pid(self) -> int | None:
        return daemon_mod.running_pid(self.settings)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI as a user runs it; whatever it answers, it never shows a traceback."""
        done = subprocess.run([AGENTDOCK, *args], env=self.env, capture_output=True, text=True, timeout=120,
                              check=check)
        assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
        return done

    def logged_errors(self) -> list[str]:
        """What its log shows of exceptions and errors logged (nothing, for a daemon that did its work well)."""
        path = daemon_mod.log_path(self.settings)
        return logged_errors(path.read_text(errors="replace")) if path.exists() else []


@pytest.fixture
def daemon(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A real daemon process for a fresh home (small image, short cancel grace)."""
    env = {**os.environ, "AGENTDOCK_HOME": str(settings.home), "AGENTDOCK_IMAGE": SMALL,
           "AGENTDOCK_CANCEL_GRACE_SECONDS": "1"}
    if pgcluster.HOMES is not None:  # the suite on PostgreSQL: the daemon process uses its home's schema
        env["AGENTDOCK_DATABASE_URL"] = pgcluster.HOMES.url(settings.home)
    for k in ("AGENTDOCK_HOME", "AGENTDOCK_IMAGE", "AGENTDOCK_CANCEL_GRACE_SECONDS", "AGENTDOCK_DATABASE_URL"):
        if k in env:
            monkeypatch.setenv(k, env[k])
    d = Daemon(settings, env)
    d.start()
    yield d
    daemon_mod.stop(settings)


@dataclass
class Listening:
    """A daemon serving on TCP too (AGENTDOCK_LISTEN): its listener's URL and bearer token."""

    daemon: Daemon
    url: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listening]:
    """A real daemon process for a fresh home with its TCP listener on a free loopback port; its log must
    show no error once it has stopped."""
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "AGENTDOCK_HOME": str(settings.home), "AGENTDOCK_IMAGE": SMALL,
           "AGENTDOCK_CANCEL_GRACE_SECONDS": "1", "AGENTDOCK_LISTEN": listen}
    if pgcluster.HOMES is not None:
        env["AGENTDOCK_DATABASE_URL"] = pgcluster.HOMES.url(settings.home)
    for k in ("AGENTDOCK_HOME", "AGENTDOCK_IMAGE", "AGENTDOCK_CANCEL_GRACE_SECONDS", "AGENTDOCK_DATABASE_URL",
              "AGENTDOCK_LISTEN"):
        if k in env:
            monkeypatch.setenv(k, env[k])
    d = Daemon(settings.model_copy(update={"listen": listen}), env)
    d.start()
    token = d.cli("daemon", "token").stdout.strip()
    yield Listening(d, f"http://{listen}", token)
    daemon_mod.stop(settings)
    assert d.logged_errors() == []


@pytest.fixture
def quiet_daemon(daemon: Daemon) -> Iterator[Daemon]:
    """`daemon`, whose log must show no exception or error when the test is over: checked once it has
    stopped, so its shutdown counts (a failure shows as an error at teardown)."""
    yield daemon
    daemon_mod.stop(daemon.settings)
    assert daemon.logged_errors() == []
