"""The Docker backend's one way to call Docker: docker-py is blocking, so every call goes through
`anyio.to_thread.run_sync` under a bounded limiter (streams get their own limiter, because a follower
holds a thread for a run's lifetime), each container has a share of the threads of its own, and
Docker's errors are translated here, once, into the engine's."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import docker
import docker.errors
import requests.exceptions

from engine import errors

T = TypeVar("T")
CALL_TIMEOUT_SECONDS = 30.0
"""The longest one Docker call may take before it is abandoned (setting `docker_call_timeout_seconds`)."""
DEVICE_CALLS = 8
"""Docker calls on one container at once."""


class DockerCalls:
    """The base of `DockerBackend`'s parts: its home, the Docker client, and the bounded calls on it."""

    def __init__(self, home: Path, *, client: docker.DockerClient | None = None, threads: int = 16,
                 call_timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self.home = str(home)
        self._client = client
        self._calls = anyio.CapacityLimiter(threads)
        self.call_timeout = call_timeout
        self._per_device: dict[str, anyio.CapacityLimiter] = {}
        """Per container: at most DEVICE_CALLS of the calls at once, so a device that stopped answering
        holds only its own share of the threads."""
        self._streams = anyio.CapacityLimiter(1024)

    @property
    def api(self) -> docker.APIClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=60)
            except docker.errors.DockerException as exc:
                raise errors.SandboxUnavailable(
                    f"cannot reach the Docker engine: {exc}", suggested_command="docker info") from exc
        return self._client.api

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """One blocking Docker call on a worker thread, bounded: a call that Docker does not answer in
        `call_timeout` is abandoned (its thread ends with the HTTP timeout) and raises
        `SandboxUnavailable`, so one stuck container never holds the runs of another, or the daemon."""
        name = args[0] if args and isinstance(args[0], str) and args[0].startswith("agentdock-") else None
        limiter = self._per_device.setdefault(name, anyio.CapacityLimiter(DEVICE_CALLS)) if name else None
        call = functools.partial(translated, fn, *args, **kw)
        try:
            with anyio.fail_after(self.call_timeout):
                if limiter is None:
                    return await anyio.to_thread.run_sync(call, limiter=self._calls, abandon_on_cancel=True)
                async with limiter:
                    return await anyio.to_thread.run_sync(call, limiter=self._calls, abandon_on_cancel=True)
        except TimeoutError:
            what = getattr(fn, "__name__", "a call")
            raise errors.SandboxUnavailable(
                f"Docker did not answer {what}{' on ' + name if name else ''} within {self.call_timeout:g} s "
                "(the engine is overloaded, or the container is stuck)", suggested_command="docker info") from None


def translated(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Call docker-py and translate its errors into the engine's, once, here."""
    try:
        return fn(*args, **kw)
    except docker.errors.ImageNotFound as exc:
        raise errors.InvalidInput(
            "image", f"image not found ({exc.explanation}); build the agentdock images or name a local image",
            suggested_command="agentdock image build") from exc
    except docker.errors.NotFound as exc:
        raise errors.NotFound("container", str(exc.explanation or exc)) from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise errors.Conflict(f"Docker refused: {exc.explanation}") from exc
        raise errors.SandboxUnavailable(f"Docker error: {exc.explanation or exc}", suggested_command="docker info") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise errors.SandboxUnavailable(f"cannot reach the Docker engine: {exc}", suggested_command="docker info") from exc
