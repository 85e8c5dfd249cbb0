"""The daemon: the only writer of the database, owner of the Docker client and the run supervisors,
serving HTTP on `control.sock` (mode 0600). One per home, enforced by a lock file."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import IO, Any

import anyio
import httpx
import uvicorn

from engine import errors
from engine.settings import Settings
from mcp_server import areas, http, network
from runtimes.wiring import docker_engine

log = logging.getLogger("agentdock.daemon")


class AlreadyRunning(errors.Conflict):
    code = "daemon_already_running"
    title = "A daemon is already running for this home"


def pid_path(settings: Settings) -> Path:
    return settings.home / "daemon.pid"


def log_path(settings: Settings) -> Path:
    return settings.home / "daemon.log"


def private_home(settings: Settings) -> Path:
    """The home, created or tightened to 0700: it holds the database, the log and the control socket."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.home, 0o700)
    return settings.home


def private_file(path: Path, mode: str) -> IO[Any]:
    """Open (creating if needed) a file only its owner can read, tightening one that exists."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | (os.O_APPEND if "a" in mode else 0), 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def hold_lock(settings: Settings) -> IO[str]:
    """Take the home's daemon lock (held for the process's life) and record our pid in it."""
    private_home(settings)
    f = private_file(pid_path(settings), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(f"a daemon is already running for {settings.home} (pid {pid})",
                             suggested_command="agentdock daemon status") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def running_pid(settings: Settings) -> int | None:
    """The pid of the daemon holding this home's lock, or None."""
    try:
        f = open(pid_path(settings))
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT just ask it to exit (no re-raise after shutdown)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def stop(*_: object) -> None:
            self.should_exit = True

        old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


async def serve(settings: Settings) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    lock = hold_lock(settings)
    os.umask(0o077)
    try:
        async with docker_engine(settings).running() as engine:
            control = _Server(_config(http.create_app(areas.endpoints(engine))))
            agent = _Server(_config(http.create_app(areas.endpoints(engine),
                                                    authenticate=http.bearer(engine.sessions.authenticate))))
            control_listener = bind_private(settings.control_socket)
            agent_listener = bind_agent_socket(settings.agent_socket)
            log.info("daemon %s serving on %s and %s", os.getpid(), settings.control_socket, settings.agent_socket)
            async with contextlib.AsyncExitStack() as stack:
                servers = [(control, control_listener), (agent, agent_listener)]
                if settings.listen is not None:  # off unless asked: the HTTP API and /mcp on TCP, behind a token
                    app = await stack.enter_async_context(network.listener_app(engine, settings))
                    servers.append((_Server(_config(app)), bind_tcp(settings)))
                    log.info("daemon %s also serving on %s (HTTP API, MCP at /mcp)", os.getpid(), network.url(settings))
                async with anyio.create_task_group() as tg:
                    async def serve_one(server: _Server, listener: socket.socket) -> None:
                        await server.serve(sockets=[listener])
                        for other, _ in servers:  # one stops, all stop
                            other.should_exit = True

                    for server, listener in servers:
                        tg.start_soon(serve_one, server, listener)
    finally:
        settings.control_socket.unlink(missing_ok=True)
        settings.agent_socket.unlink(missing_ok=True)
        lock.close()


def _config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=3)


def bind_tcp(settings: Settings) -> socket.socket:
    """The TCP listener's socket (`AGENTDOCK_LISTEN`); an address in use or not this machine's is refused."""
    host, port = network.address(settings)
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise errors.InvalidInput("AGENTDOCK_LISTEN", f"cannot listen on {settings.listen}: {exc.strerror}",
                                  suggested_command="ss -ltn") from None


def bind_agent_socket(path: Path) -> socket.socket:
    """The sessions' socket: any local process may connect (its directory is mounted into every
    device, where runs use other uids), and every request must carry a session's token."""
    path.parent.mkdir(mode=0o755, exist_ok=True)
    os.chmod(path.parent, 0o755)
    client = path.parent / "agentdock-agent"  # the stdlib client a run calls it with
    client.write_bytes(resources.files("mcp_server").joinpath("agent_client.py").read_bytes())
    os.chmod(client, 0o755)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)
    sock.listen(128)
    return sock


def bind_private(path: Path) -> socket.socket:
    """A Unix socket that is 0600 before anyone can connect (uvicorn's own binding makes it 0666)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def healthy(settings: Settings, timeout: float = 2) -> bool:
    try:
        transport = httpx.HTTPTransport(uds=str(settings.control_socket))
        with httpx.Client(transport=transport, base_url="http://agentdock", timeout=timeout) as c:
            return c.get("/api/v1/health").status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def start(settings: Settings, *, wait: float = 30) -> int:
    """Start a daemon in the background for this home; returns its pid. Refuses if one runs."""
    pid = running_pid(settings)
    if pid is not None:
        raise AlreadyRunning(f"a daemon is already running for {settings.home} (pid {pid})",
                             suggested_command="agentdock daemon status")
    private_home(settings)
    logfile = private_file(log_path(settings), "ab")
    env = {**os.environ, "AGENTDOCK_HOME": str(settings.home)}
    proc = subprocess.Popen([sys.executable, "-m", "mcp_server.cli", "daemon", "run"], env=env,
                            stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if healthy(settings, timeout=1):
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path(settings).read_text(errors="replace")[-1500:]
    raise errors.SandboxUnavailable(f"the daemon did not come up; its log ends with:\n{tail}",
                                    suggested_command=f"cat {log_path(settings)}")


def ensure(settings: Settings) -> None:
    """Make sure a daemon serves this home, starting one if none runs."""
    if healthy(settings):
        return
    try:
        start(settings)
    except AlreadyRunning:  # another client started it a moment ago
        deadline = time.monotonic() + 30
        while not healthy(settings):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(settings: Settings, *, grace: float = 15) -> int | None:
    """Stop the home's daemon (TERM, then KILL after the grace). Returns the pid it stopped."""
    pid = running_pid(settings)
    if pid is None or pid <= 0:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while running_pid(settings) is not None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            break
        time.sleep(0.05)
    return pid


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
