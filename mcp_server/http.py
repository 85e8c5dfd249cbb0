"""The HTTP machinery (REST with the seeds' paths and `{"data": ...}` bodies) the daemon serves.

The routes themselves live with their areas (`mcp_server.areas`); this module holds what they share:
what a request carries (body size and type, strict JSON, query, path ids) is checked here before any
handler sees it, and every error is mapped here, once, to the seeds' `{"diagnostic", "error"}` body.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from engine import errors, models
from engine.callers import ROOT, Caller

log = logging.getLogger("agentdock.http")
VERSION = "0.1.0"

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body a route takes unless it says otherwise (`Endpoint.max_body`): a run's prompt
is up to 100 KB and its env and metadata about 200 KB more."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays in a body (the body itself is level 1)."""
MAX_NUMBER_DIGITS = 64
"""Longest integer literal in a body; every numeric field has a far smaller bound."""
MAX_PATH_CHARS = 4096
"""Longest artifact path a caller may name (PATH_MAX on Linux)."""
MAX_WAIT_SECONDS = 3600
"""Longest a request may ask to wait for a run's end (`?wait=S`); a client waiting longer asks again."""


class PayloadTooLarge(errors.LimitExceeded):
    code = "payload_too_large"
    title = "Request body too large"
    http_status = 413


class UnsupportedMediaType(errors.InvalidInput):
    code = "unsupported_media_type"
    http_status = 415


class MethodNotAllowed(errors.InvalidInput):
    code = "method_not_allowed"
    http_status = 405


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped, so a string that is not valid Unicode (a lone surrogate already in a
    record) is still a response, not an encoding error."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode("ascii")


def error_response(exc: BaseException) -> JSONResponse:
    """The one mapping from exceptions to the seeds' `{"diagnostic", "error"}` body."""
    if isinstance(exc, errors.EngineError):
        diag, status = exc.diagnostic(), exc.http_status
    else:
        diag, status = errors.internal(exc), 500
        log.error("unexpected error (diagnostic %s)", diag.id, exc_info=exc)
    return SafeJSONResponse({"diagnostic": diag.model_dump(mode="json"), "error": diag.message}, status_code=status)


def data(value: BaseModel | dict[str, Any], status: int = 200) -> JSONResponse:
    body = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    if isinstance(value, BaseModel) and "data" in type(value).model_fields:
        return SafeJSONResponse(body, status_code=status)  # a page: already {"data": [...], ...}
    return SafeJSONResponse({"data": body}, status_code=status)


# ---------------------------------------------------------------- what a request carries


async def body(request: Request) -> dict[str, Any]:
    """The JSON object a request carries (`{"data": {...}}` or the object itself); `{}` when empty."""
    raw = await request.body()
    if not raw:
        return {}
    parsed = parse_json(raw)
    if not isinstance(parsed, dict):
        raise errors.InvalidInput("body", "must be a JSON object")
    parsed = parsed.get("data", parsed) if set(parsed) == {"data"} else parsed
    if not isinstance(parsed, dict):
        raise errors.InvalidInput("data", "must be a JSON object")
    _check_tree(parsed)
    return parsed


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no number too long or too large, no key twice in one object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InvalidInput("body", f"not valid UTF-8 (byte {exc.start}); send JSON encoded as UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_int=_int,
                          parse_float=_float)
    except RecursionError:
        raise _too_deep("body") from None
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput("body", f"not valid JSON ({exc.msg} at position {exc.pos})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise errors.InvalidInput(_printable(twice), "appears twice in one JSON object; send each field once")
    return obj


def _no_constant(name: str) -> Any:
    raise errors.InvalidInput("body", f"{name} is not JSON; send a finite number")


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise errors.InvalidInput("body", f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(literal)


def _float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise errors.InvalidInput("body", f"{literal[:40]} is too large for a number; send a finite number")
    return value


def _too_deep(field: str) -> errors.InvalidInput:
    return errors.InvalidInput(field, f"nested more than {MAX_JSON_DEPTH} levels deep")


def _check_tree(value: dict[str, Any]) -> None:
    """Every string and key is valid Unicode (no lone surrogate from a `\\ud800` escape) and nothing is
    nested too deep; walked without recursion, naming the field as pydantic would (`metadata.a.0`)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where or "body")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(where or "body")
        for key, child in item.items() if isinstance(item, dict) else enumerate(item):
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str):
                _check_text(key, name)
            stack.append((child, depth + 1, name))


def _check_text(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidInput(_printable(field), "is not valid Unicode (a lone surrogate such as \\ud800); "
                                         "send text as UTF-8") from None


def _printable(field: str) -> str:
    """A field name fit for a diagnostic even when it is the bad key itself (`\\ud800` spelled out)."""
    return field.encode("utf-8", "backslashreplace").decode("utf-8")


def with_idempotency_key(request: Request, fields: dict[str, Any]) -> dict[str, Any]:
    """The body's fields with the `Idempotency-Key` header's key, which must be given once and agree."""
    keys = request.headers.getlist("idempotency-key")
    if len(keys) > 1:
        raise errors.InvalidInput("idempotency_key", "the Idempotency-Key header is given more than once")
    if keys:
        if fields.get("idempotency_key") not in (None, keys[0]):
            raise errors.InvalidInput("idempotency_key", "differs from the Idempotency-Key header; send one")
        fields["idempotency_key"] = keys[0]
    return fields


def params(request: Request, model: type[models.M]) -> models.M:
    """The path's parameters (record ids, checked by shape) and the query string, as one `model`.
    A parameter the route does not take, or one given twice, is refused, not silently ignored."""
    query = request.query_params
    for key in query:
        if len(query.getlist(key)) > 1 or key in request.path_params:
            raise errors.InvalidInput(key, "given more than once; send each parameter once")
    return models.parse(model, {**dict(query), **request.path_params})


def check_body_headers(request: Request, max_body: int) -> None:
    """Refuse a body before reading it: too large by its Content-Length, or not JSON."""
    length = request.headers.get("content-length")  # h11 has refused one that is not digits
    if length is not None and (len(length) > 18 or int(length) > max_body):
        raise _too_large(max_body)
    has_body = (length is not None and int(length) > 0) or "transfer-encoding" in request.headers
    if has_body and not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("Content-Type", "a request body must be JSON; send Content-Type: application/json",
                                   evidence={"content_type": request.headers.get("content-type", "")[:100]})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _too_large(max_body: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {max_body} bytes; send less",
                           evidence={"field": "body", "limit_bytes": max_body})


def limited(receive: Receive, max_body: int) -> Receive:
    """`receive`, counting body bytes as they stream in (chunked bodies have no Content-Length):
    past `max_body` it raises instead of letting the body be buffered further."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_body:
                raise _too_large(max_body)
        return message

    return receive_limited


Handler = Callable[[Request, Caller], Awaitable[Response]]
"""A route's handler: the request (body bounded, JSON checked on reading) and who is asking."""
Authenticate = Callable[[Request], Awaitable[Caller]]
"""Who is asking, from the request (a socket's owner, a session's bearer token)."""


async def local_user(request: Request) -> Caller:
    """`control.sock` is the local user's (mode 0600): every request on it is the root session."""
    return ROOT


def one_authorization(request: Request) -> None:
    """Refuse a request with more than one `Authorization` header: which one counts would be a choice a
    proxy in front and the daemon could make differently (the first one used to win, silently)."""
    given = len(request.headers.getlist("authorization"))
    if given > 1:
        raise errors.InvalidInput("Authorization", f"the header is given {given} times; send one, "
                                  "`Authorization: Bearer $AGENTDOCK_TOKEN`", evidence={"count": given})


def bearer(authenticate_token: Callable[[str | None], Awaitable[Caller]]) -> Authenticate:
    """`agent.sock`: every request is the session whose bearer token it carries, or refused (401)."""

    async def session(request: Request) -> Caller:
        one_authorization(request)  # `guarded` checked it already; an authenticator stands on its own
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return await authenticate_token(token.strip() if scheme.lower() == "bearer" else None)

    return session


def guarded(fn: Handler, max_body: int = MAX_BODY_BYTES, authenticate: Authenticate = local_user,
            ) -> Callable[[Request], Awaitable[Response]]:
    """The handler with its request's body bounded and typed, its caller known, and every exception
    mapped to a diagnostic. (Starlette's own body limit answers in plain text, so it is not used.)"""

    async def handler(request: Request) -> Response:
        try:
            check_body_headers(request, max_body)
            one_authorization(request)
            caller = await authenticate(request)  # nothing else a request sends says who it is or what it may do
            return await fn(Request(request.scope, limited(request.receive, max_body)), caller)
        except Exception as exc:
            return error_response(exc)

    return handler


class Endpoint(NamedTuple):
    path: str
    fn: Handler
    methods: list[str]
    max_body: int = MAX_BODY_BYTES
    """A route that takes larger bodies (a group dispatch of many runs) raises its own bound here."""


class IdSegment(StringConvertor):
    """One path segment that may be empty, so `/agent-runs/` is an empty run id (an `invalid_input`
    naming it), not a redirect to the list."""

    regex = "[^/]*"


register_url_convertor("id", IdSegment())


class WaitQuery(models.Input):
    wait: float = Field(default=0, ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)
    """Seconds to wait for the run to end before answering (0: answer at once)."""


def create_app(endpoints: Iterable[Endpoint], *, authenticate: Authenticate = local_user,
               started: float | None = None) -> Starlette:
    """The app serving `endpoints` (the areas' routes) and the health route, every one guarded."""
    started = started or time.time()

    async def health(request: Request, caller: Caller) -> Response:
        params(request, models.Input)
        return data({"status": "ok", "pid": os.getpid(), "version": VERSION, "uptime_seconds": time.time() - started})

    table = [Endpoint("/api/v1/health", health, ["GET"]), *endpoints]
    routes = [Route(e.path, guarded(e.fn, e.max_body, authenticate), methods=e.methods) for e in table]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    app.router.redirect_slashes = False  # a redirect is not an answer a client of this API can act on
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(errors.NotFound("route", request.url.path[:200]))


async def _not_allowed(request: Request, exc: Exception) -> Response:
    resp = error_response(MethodNotAllowed("method", f"{request.method} is not allowed on {request.url.path}"))
    if isinstance(exc, HTTPException) and exc.headers:
        resp.headers.update(exc.headers)
    return resp
