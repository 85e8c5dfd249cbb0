"""The model gateway on Docker: an HTTP reverse proxy in the daemon's process, on the host's address of
an internal network every device joins, forwarding a run's requests to its model provider with the
real credential put on them (`engine.gateway` decides who may, `engine.providers` says where).

Reaching it: the network is `internal` (no route out) with traffic between its containers off, so a
device reaches nothing but the host's address on it. A host process listening there is reachable,
but so would be every other port of the host (a packet to any of the host's addresses is the host's
to take), so a firewall chain on the network's interface lets in only the gateway's port and refuses
the rest. Devices given `network` keep Docker's default bridge and reach the gateway's address
through the host as they reach anything.

Only `/<provider>/...` is forwarded, to that provider's upstream: no CONNECT, no absolute URIs, no
other host. Answers stream through chunk by chunk as they come (SSE included), metered on the way.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine import errors, providers
from engine.gateway import Gateway, Grant, Usage
from engine.settings import Settings
from runtimes import egress_network

log = logging.getLogger("agentdock.gateway")
MAX_REQUEST_BYTES = 32 * 1_048_576
"""The largest request body forwarded (prompts with images and long histories stay well under it); a
larger one is refused as it arrives, never held whole in the daemon's memory."""
MAX_IN_FLIGHT_PER_RUN = 16
"""Requests one run may have open through the gateway at once (a CLI with its sub-agents keeps a few);
more are answered 429, which the CLIs' SDKs retry with backoff. A run hammering the gateway so holds
at most this many upstream connections and store writes at a time."""
HOP = frozenset({"host", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                 "te", "trailer", "transfer-encoding", "upgrade", "content-length", "accept-encoding"})
"""Request headers not passed on: the connection's own, and the body's length and encodings (httpx sets them)."""
KEYS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
"""Where a client may have put its key: never passed on (the credential replaces it)."""
ANSWER_HOP = frozenset({"connection", "keep-alive", "transfer-encoding"})
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def placeholder_of(request: Request) -> str | None:
    """The key a client sent: `x-api-key`, or `Authorization: Bearer ...` (the SDKs use one or the other)."""
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def refusal(exc: errors.EngineError) -> JSONResponse:
    return JSONResponse({"diagnostic": exc.diagnostic().model_dump(), "error": exc.message}, status_code=exc.http_status)


async def bounded_body(request: Request) -> bytes:
    """The request's body, refused (`LimitExceeded`) once it passes `MAX_REQUEST_BYTES`, before or as it
    arrives."""
    too_big = errors.LimitExceeded(f"a request to the model gateway is at most {MAX_REQUEST_BYTES} bytes",
                                   evidence={"limit_bytes": MAX_REQUEST_BYTES})
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise too_big
    return bytes(body)


def create_app(gateway: Gateway, upstreams: dict[str, str], client: httpx.AsyncClient) -> Starlette:
    in_flight: dict[str, int] = {}
    """Open requests per run: taken once a request is admitted, given back when its answer has ended."""

    async def forward(request: Request) -> Response:
        name = request.path_params["provider"]
        if name not in upstreams:
            return await unknown(request)
        try:
            grant = await gateway.admit(name, placeholder_of(request))
        except errors.EngineError as exc:
            return refusal(exc)
        if in_flight.get(grant.run_id, 0) >= MAX_IN_FLIGHT_PER_RUN:
            return refusal(errors.TooManyRequests(
                f"run {grant.run_id} has {MAX_IN_FLIGHT_PER_RUN} requests open through the model gateway; "
                "wait for one to end", evidence={"limit": MAX_IN_FLIGHT_PER_RUN}))
        in_flight[grant.run_id] = in_flight.get(grant.run_id, 0) + 1
        relaying = False
        try:
            answer = await send(request, name, grant)
            relaying = isinstance(answer, Relay)
            return answer
        finally:
            if not relaying:
                release(grant.run_id)

    def release(run_id: str) -> None:
        if (left := in_flight.pop(run_id, 1) - 1) > 0:
            in_flight[run_id] = left

    async def send(request: Request, name: str, grant: Grant) -> Response:
        try:
            body = await bounded_body(request)
        except errors.EngineError as exc:
            return refusal(exc)
        raw = request.scope.get("raw_path") or request.url.path.encode()
        path = raw.decode("latin-1")[len(name) + 1:]  # `/<provider>` off, the rest exactly as sent
        query = request.scope.get("query_string", b"").decode("latin-1")
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP and k not in KEYS]
        headers += [(grant.provider.header, grant.provider.scheme + grant.credential), ("accept-encoding", "identity")]
        url = upstreams[name] + path + (f"?{query}" if query else "")
        try:
            answer = await client.send(client.build_request(request.method, url, headers=headers, content=body),
                                       stream=True)
        except httpx.HTTPError as exc:
            await gateway.account(grant, Usage(502, None, None))
            return refusal(errors.SandboxUnavailable(f"{grant.provider.name}'s API did not answer: "
                                                     f"{type(exc).__name__}"))
        meter = providers.Meter(answer.headers.get("content-type", ""))

        async def relay() -> AsyncIterator[bytes]:
            async for chunk in answer.aiter_raw():
                meter.feed(chunk)
                yield chunk
            meter.end()

        async def ended() -> None:
            release(grant.run_id)
            await answer.aclose()
            await gateway.account(grant, Usage(answer.status_code, meter.input_tokens, meter.output_tokens))

        kept = {k: v for k, v in answer.headers.items() if k not in ANSWER_HOP}
        return Relay(relay(), ended, status_code=answer.status_code, headers=kept)

    async def unknown(request: Request) -> Response:
        return refusal(errors.NotFound("gateway route", request.url.path, evidence={
            "routes": [f"/{p}/..." for p in providers.CATALOG]}))

    return Starlette(routes=[Route("/{provider}/{path:path}", forward, methods=METHODS),
                             Route("/{path:path}", unknown, methods=METHODS)])


class Relay(StreamingResponse):
    """An upstream's answer streamed to the client; `ended` runs once it is over, however it ended (the
    client gone before the first byte or mid-answer included), so the answer counts and is closed."""

    def __init__(self, content: AsyncIterator[bytes], ended: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.ended = ended

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.ended()


class _Server(uvicorn.Server):
    """uvicorn inside the engine's task group: the daemon handles signals, not this server."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class Egress:
    """Implements `engine.gateway.Egress`: the network, the firewall on it, and the proxy."""

    def __init__(self, backend: egress_network.EgressNetwork, settings: Settings) -> None:
        self.backend = backend
        self.port = settings.gateway_port
        self.upstreams = providers.upstreams(settings.gateway_upstreams)

    async def serve(self, gateway: Gateway, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            network, iface, address = await self.backend.egress_network()
            await anyio.to_thread.run_sync(firewall, iface, address, self.port)
            listener = tcp_listener(address, self.port)
        except (errors.EngineError, OSError, FirewallError) as exc:
            # Devices then stay without any network, and runs given a provider's credential fail at launch.
            log.warning("the model gateway cannot serve: %s", getattr(exc, "message", exc))
            with anyio.CancelScope(shield=True):
                await self.backend.remove_egress_network()
            task_status.started()
            return
        self.backend.join_egress(network)
        gateway.address = f"http://{address}:{self.port}"
        timeout = httpx.Timeout(connect=10, read=600, write=60, pool=30)
        try:
            async with httpx.AsyncClient(timeout=timeout, trust_env=False, limits=httpx.Limits(
                    max_connections=256, max_keepalive_connections=64)) as client:
                server = _Server(uvicorn.Config(create_app(gateway, self.upstreams, client), log_level="warning",
                                                lifespan="off", access_log=False, timeout_graceful_shutdown=1))

                async def run() -> None:
                    with anyio.CancelScope(shield=True):  # stopped by `should_exit`, so it closes its connections
                        await server.serve(sockets=[listener])

                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    task_status.started()
                    try:
                        await anyio.sleep_forever()
                    finally:
                        server.should_exit = True
        finally:
            gateway.address = None
            listener.close()
            with anyio.CancelScope(shield=True):
                if await self.backend.remove_egress_network():  # no device is left on it
                    await anyio.to_thread.run_sync(remove_firewall, iface)


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket that says it is TCP (`socket.create_server`'s says protocol 0): asyncio
    turns Nagle off only on such sockets, and with it on, a streamed answer's first chunk waits for the
    client's delayed ACK of the headers (about 40 ms)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    return sock


class FirewallError(Exception):
    pass


def _chain(iface: str) -> str:
    return "AGENTDOCK-" + iface.upper()


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30)


REFUSE = (["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
          ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"])
"""How the rest is refused: at once (a reset, an unreachable), so a CLI trying a host it cannot reach
fails in a moment, where a dropped packet keeps it waiting for its timeout (a minute for some)."""
HOOKS = (("INPUT", "1"), ("DOCKER-USER", "1"))
"""Where the chain is hooked: what devices send the host, and what they send through it (the internet:
Docker's isolation rules drop that after DOCKER-USER, which Docker keeps first in FORWARD)."""


def firewall(iface: str, address: str, port: int) -> None:
    """Let in from `iface` only TCP to the gateway's `address:port`; refuse the rest of what devices send
    the host or through it. Idempotent: rules already there are left as they are."""
    chain = _chain(iface)
    accept = ["-p", "tcp", "-d", address, "--dport", str(port), "-j", "ACCEPT"]
    try:
        if _iptables("-n", "-L", chain).returncode != 0:
            _check(_iptables("-N", chain))
        if any(_iptables("-C", chain, *rule).returncode != 0 for rule in (accept, *REFUSE)):
            _check(_iptables("-F", chain))
            for rule in (accept, *REFUSE):
                _check(_iptables("-A", chain, *rule))
        for hook, at in HOOKS:
            if hook == "DOCKER-USER" and _iptables("-n", "-L", hook).returncode != 0:
                continue  # Docker without its iptables rules: nothing forwards for devices anyway
            if _iptables("-C", hook, "-i", iface, "-j", chain).returncode != 0:
                _check(_iptables("-I", hook, at, "-i", iface, "-j", chain))
    except (OSError, subprocess.SubprocessError) as exc:
        raise FirewallError(f"cannot set the firewall on {iface} (iptables, as root): {exc}") from exc


def remove_firewall(iface: str) -> None:
    chain = _chain(iface)
    try:
        for hook, _ in HOOKS:
            while _iptables("-D", hook, "-i", iface, "-j", chain).returncode == 0:
                pass
        _iptables("-F", chain)
        _iptables("-X", chain)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not remove the firewall chain %s: %s", chain, exc)


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise FirewallError(f"iptables {' '.join(done.args[3:])}: {done.stderr.strip()}")


def remove_egress(home: str) -> None:
    """Remove a home's network and its firewall chain (tests, after its containers are gone)."""
    import docker

    name, iface = egress_network.egress_names(home)
    try:
        docker.from_env().networks.get(name).remove()
    except docker.errors.NotFound:
        pass
    remove_firewall(iface)
