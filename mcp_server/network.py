"""The TCP listener (issue 20), off unless `AGENTDOCK_LISTEN` names `host:port`: the HTTP API of
`control.sock` and MCP over streamable HTTP at `/mcp`, for MCP clients and people on other machines or
in a browser. Every request carries the bearer token of `home/http.token` (made on first use, mode
0600), which stands for the local user, as `control.sock`'s owner does; a request from a browser whose
`Origin` is not the listener's own (or `AGENTDOCK_ALLOWED_ORIGINS`) is refused before anything else, so
a web page cannot drive the daemon (DNS rebinding included)."""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlencode

import anyio
import anyio.abc
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from engine import errors
from engine.app import Engine
from engine.callers import ROOT
from engine.settings import Settings
from mcp_server import areas, dashboard, http, mcp_app
from mcp_server.api import InProcessAPI


def token(settings: Settings) -> str:
    """The listener's bearer token, made (32 random bytes, mode 0600) the first time it is asked for."""
    path = settings.http_token_path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def address(settings: Settings) -> tuple[str, int]:
    """`AGENTDOCK_LISTEN` as (host, port); IPv6 in brackets."""
    assert settings.listen is not None
    host, _, port = settings.listen.rpartition(":")
    if not 0 < int(port) < 65_536:
        raise errors.InvalidInput("AGENTDOCK_LISTEN", f"port {port} is not one (1-65535)")
    return host.strip("[]"), int(port)


def url(settings: Settings) -> str:
    host, port = address(settings)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def origins(settings: Settings) -> frozenset[str]:
    """The origins a browser request may come from: the listener's own address, `localhost` for a
    loopback one, and `AGENTDOCK_ALLOWED_ORIGINS`."""
    host, port = address(settings)
    own = {url(settings)}
    if host in ("127.0.0.1", "::1", "localhost"):
        own |= {f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"}
    return frozenset(own | {o.strip().rstrip("/") for o in settings.allowed_origins.split(",") if o.strip()})


class Gate:
    """The listener's door, in front of everything it serves: the Origin, then the token (the bearer
    header, or a browser's dashboard cookie), each refused with the diagnostic shape (403, 401) before
    the request reaches anything else; a browser asking for a dashboard page without it is sent to the
    login form instead."""

    def __init__(self, app: ASGIApp, token: str, origins: frozenset[str]) -> None:
        self.app = app
        self.token = token.encode()
        self.origins = origins

    def token_ok(self, presented: str) -> bool:
        return hmac.compare_digest(presented.strip().encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        origin = [v for k, v in headers if k == "origin"]
        if origin and (len(origin) > 1 or origin[0].rstrip("/") not in self.origins):
            await _refuse(send, errors.PermissionDenied(
                f"Origin: {origin[0][:200]!r} may not use this listener; add it to AGENTDOCK_ALLOWED_ORIGINS to let "
                "pages from it in", evidence={"field": "Origin"}))
            return
        path = scope.get("path", "")
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in dashboard.PUBLIC):
            await self.app(scope, receive, send)
            return
        given = [v for k, v in headers if k == "authorization"]
        scheme, _, presented = (given[0] if len(given) == 1 else "").partition(" ")
        if not given:  # a browser: the dashboard's cookie
            scheme, presented = ("bearer", found) if (found := _cookie(headers, dashboard.COOKIE)) else ("", "")
        if scheme.lower() != "bearer" or not self.token_ok(presented):
            if scope["method"] == "GET" and (path == "/" or path.startswith("/ui")) and not given:
                target = "/ui/login?" + urlencode({"next": path + ("?" + scope["query_string"].decode("latin-1")
                                                                   if scope.get("query_string") else "")})
                await send({"type": "http.response.start", "status": 303, "headers": [(b"location", target.encode())]})
                await send({"type": "http.response.body", "body": b""})
                return
            await _refuse(send, errors.Unauthenticated(
                "Authorization: send `Authorization: Bearer <token>`, the token in the daemon's home (http.token)",
                suggested_command="agentdock daemon token", evidence={"field": "Authorization"}))
            return
        await self.app(scope, receive, send)


def _cookie(headers: list[tuple[str, str]], name: str) -> str | None:
    """One cookie's value, read by hand: the host's other web apps put their cookies in the same header
    (cookies are not bound to a port), and the standard parser gives up on the first it cannot read."""
    for header in (v for k, v in headers if k == "cookie"):
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
    return None


async def _refuse(send: Send, exc: errors.EngineError) -> None:
    response = http.error_response(exc)
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": [(b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer")] if response.status_code == 401 else
                           [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": response.body})


MAX_TOOL_CHOICES = 32
"""Distinct `?toolsets=` choices served at once (each is an MCP server of its own)."""


class McpServers:
    """`/mcp`, with the tools `?toolsets=` names (as `agentdock serve --toolsets`; default: all): one MCP
    server per choice, made on its first request and kept (its sessions' manager running in `tg`)."""

    def __init__(self, engine: Engine, settings: Settings, tg: anyio.abc.TaskGroup) -> None:
        self.engine, self.settings, self.tg = engine, settings, tg
        self.apps: dict[frozenset[str], ASGIApp] = {}
        self._making = anyio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("toolsets")
            toolsets = [t for t in ",".join(asked).split(",") if t] if asked else None
            app = await self.app_for(mcp_app.chosen_tools(toolsets), toolsets)
        except errors.EngineError as exc:
            await _refuse(send, exc)
            return
        await app(scope, receive, send)

    async def app_for(self, names: frozenset[str], toolsets: list[str] | None) -> ASGIApp:
        async with self._making:
            if names not in self.apps:
                if len(self.apps) >= MAX_TOOL_CHOICES:
                    raise errors.LimitExceeded(f"toolsets: {MAX_TOOL_CHOICES} different choices are served already; "
                                               "use one of them (or none: every toolset)")
                server = mcp_app.build(InProcessAPI(self.engine, ROOT), self.settings, toolsets)
                # Origin and token are the Gate's; the SDK's own check would refuse a host it was not told of.
                app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=TransportSecuritySettings(
                    enable_dns_rebinding_protection=False))

                async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    async with server.session_manager.run():
                        task_status.started()
                        await anyio.sleep_forever()

                await self.tg.start(run)
                self.apps[names] = app
            return self.apps[names]


def _paths(mcp: ASGIApp, pages: ASGIApp, rest: ASGIApp) -> ASGIApp:
    """`/mcp` to the MCP servers, the dashboard's pages and files to it, everything else to the HTTP API."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path == "/mcp":
            await mcp(scope, receive, send)
        elif path in ("/", "/ui") or path.startswith(("/ui/", "/static/")):
            await pages(scope, receive, send)
        else:
            await rest(scope, receive, send)

    return app


@asynccontextmanager
async def listener_app(engine: Engine, settings: Settings) -> AsyncIterator[ASGIApp]:
    """The app the TCP listener serves while this is entered (the MCP sessions' managers run meanwhile)."""
    api = http.create_app(areas.endpoints(engine))  # as control.sock: the token stands for its owner
    pages = dashboard.app(engine)
    async with anyio.create_task_group() as tg:
        gate = Gate(_paths(McpServers(engine, settings, tg), pages, api), token(settings), origins(settings))
        pages.state.token_ok = gate.token_ok  # the login form checks what it is given against the same token
        yield gate
        tg.cancel_scope.cancel()


def describe(settings: Settings) -> dict[str, Any]:
    """What `daemon status` says of the listener."""
    if settings.listen is None:
        return {"listen": None}
    return {"listen": url(settings), "mcp": url(settings) + "/mcp", "token_file": str(settings.http_token_path)}


