"""`AgentDockAPI` over the daemon's HTTP API on its control socket; what `serve` (MCP) and the CLI use.

The daemon's diagnostics come back as `RemoteError`, an `EngineError` carrying the daemon's
diagnostic, so the MCP layer maps them the same way as local errors.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any
from urllib.parse import quote

import httpx

from engine import errors, ids
from engine.settings import Settings
from mcp_server import ops


class RemoteError(errors.EngineError):
    def __init__(self, diagnostic: errors.Diagnostic, status: int) -> None:
        super().__init__(diagnostic.message)
        self.remote = diagnostic
        self.http_status = status

    def diagnostic(self) -> errors.Diagnostic:
        return self.remote


class DaemonUnavailable(errors.SandboxUnavailable):
    code = "daemon_unavailable"
    title = "The agentdock daemon is not running"


class DaemonClient:
    """As the local user over `control.sock`; or, given a session token (`AGENTDOCK_TOKEN` inside a
    sandbox), as that session over the agent socket (`AGENTDOCK_SOCKET`)."""

    def __init__(self, settings: Settings, *, timeout: float = 120, token: str | None = None,
                 socket: str | None = None) -> None:
        self.settings = settings
        token = token if token is not None else os.environ.get("AGENTDOCK_TOKEN")
        if token:
            self.socket = socket or os.environ.get("AGENTDOCK_SOCKET") or str(settings.agent_socket)
            headers = {"Authorization": f"Bearer {token}"}
        else:
            self.socket, headers = socket or str(settings.control_socket), {}
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=self.socket),
            base_url="http://agentdock", timeout=timeout, headers=headers,
        )

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None, timeout: float | None = None,
                      accept: Collection[int] = ()) -> Any:
        """`path` under /api/v1 unless it is a full /api/ path (the agent API: /api/agent/...); a status in
        `accept` is an answer (a soul found invalid: 422), any other failure a `RemoteError`."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        url = path if path.startswith("/api/") else "/api/v1" + path
        try:
            resp = await self._http.request(method, url, json=json, params=params,
                                            headers=headers,
                                            timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise DaemonUnavailable(
                f"cannot reach the daemon at {self.socket} ({exc.__class__.__name__})",
                suggested_command="agentdock daemon start") from exc
        except httpx.TransportError as exc:  # the connection broke or timed out with the request under way
            raise DaemonUnavailable(
                f"lost the daemon at {self.socket} during {method} {url} ({exc.__class__.__name__}); the request "
                "may or may not have been carried out: check before repeating it",
                suggested_command="agentdock daemon status") from exc
        if resp.headers.get("content-type", "").startswith("application/json"):
            payload = resp.json()
        else:
            payload = resp.content
        if not resp.is_success and resp.status_code not in accept:
            diag = payload.get("diagnostic") if isinstance(payload, dict) else None
            if diag is None:
                diag = errors.internal(RuntimeError(resp.text[:200])).model_dump()
            raise RemoteError(errors.Diagnostic.model_validate(diag), resp.status_code)
        return payload

    async def call(self, op: ops.Op[ops.I, ops.O], inp: ops.I | None = None, /, **fields: Any) -> ops.O:
        """A declared operation over the daemon's HTTP API: its method and path, the ids in the path
        (checked by shape, escaped), the rest as the query or the JSON body, the answer from its envelope."""
        inp = op.parse(inp, **fields)
        rest = op.rest(inp)
        reads = op.method in ("GET", "DELETE")
        payload = await self.request(op.method, op.url(inp), json=None if reads else rest,
                                     params=rest if reads else None, timeout=op.timeout(inp),
                                     accept=(422,) if op.invalid else ())
        key = op.wrapped()
        return op.output.model_validate(payload if key is None else payload[key])

    async def health(self) -> dict[str, Any]:
        return (await self.request("GET", "/health", timeout=5))["data"]

    async def artifact_content(self, run_id: str, path: str) -> bytes:
        return await self.request("GET", _run_path(run_id, "/artifacts/content"), params={"path": path})


def _seg(shape: ids.Shape, value: str, field: str) -> str:
    """`value` as one escaped path segment, once it has the shape of an id."""
    return quote(shape.check(value, field), safe="")


def _run_path(run_id: str, rest: str = "") -> str:
    """An id is checked by shape before it goes into a path, and escaped there: one path segment, never
    `../other-route` or a query string."""
    return f"/agent-runs/{_seg(ids.RUN, run_id, 'run_id')}{rest}"
