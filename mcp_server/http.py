"""The HTTP app (REST with the seeds' paths and `{"data": ...}` bodies) served by the daemon.

Handlers are thin: parse, call one service method, wrap. Errors are mapped in one place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import errors, models
from engine.devices import DeviceService
from engine.runs import RunService

log = logging.getLogger("agentdock.http")
VERSION = "0.1.0"


def error_response(exc: BaseException) -> JSONResponse:
    """The one mapping from exceptions to the seeds' `{"diagnostic", "error"}` body."""
    if isinstance(exc, errors.EngineError):
        diag, status = exc.diagnostic(), exc.http_status
    else:
        diag, status = errors.internal(exc), 500
        log.error("unexpected error (diagnostic %s)", diag.id, exc_info=exc)
    return JSONResponse({"diagnostic": diag.model_dump(mode="json"), "error": diag.message}, status_code=status)


def data(value: BaseModel | dict[str, Any], status: int = 200) -> JSONResponse:
    body = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    if isinstance(value, BaseModel) and "data" in type(value).model_fields:
        return JSONResponse(body, status_code=status)  # a page: already {"data": [...], ...}
    return JSONResponse({"data": body}, status_code=status)


async def body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise errors.InvalidInput("body", f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(parsed, dict):
        raise errors.InvalidInput("body", "must be a JSON object")
    return parsed.get("data", parsed) if set(parsed) == {"data"} else parsed


def query(request: Request, model: type[models.M]) -> models.M:
    return models.parse(model, dict(request.query_params))


Handler = Callable[[Request], Awaitable[Response]]


def guarded(fn: Handler) -> Handler:
    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return error_response(exc)

    return handler


def create_app(devices: DeviceService, runs: RunService, *, started: float | None = None) -> Starlette:
    started = started or time.time()

    async def health(request: Request) -> Response:
        return data({"status": "ok", "pid": os.getpid(), "version": VERSION, "uptime_seconds": time.time() - started})

    async def sandbox_create(request: Request) -> Response:
        return data(await devices.create(models.parse(models.DeviceCreate, await body(request))), 201)

    async def sandbox_list(request: Request) -> Response:
        return data(await devices.list())

    async def sandbox_get(request: Request) -> Response:
        return data(await devices.get(request.path_params["id"]))

    async def sandbox_delete(request: Request) -> Response:
        return data(await devices.delete(request.path_params["id"]))

    async def run_create(request: Request) -> Response:
        fields = await body(request)
        key = request.headers.get("idempotency-key")
        if key is not None:
            if fields.get("idempotency_key") not in (None, key):
                raise errors.InvalidInput("idempotency_key", "differs from the Idempotency-Key header; send one")
            fields["idempotency_key"] = key
        wait = models.parse(WaitQuery, dict(request.query_params)).wait
        run = await runs.create(models.parse(models.RunCreate, fields))
        if wait:
            run = await runs.wait(run.id, wait)
        return data(run, 201)

    async def run_list(request: Request) -> Response:
        return data(await runs.list(query(request, models.RunListQuery)))

    async def run_get(request: Request) -> Response:
        return data(await runs.get(request.path_params["id"]))

    async def run_cancel(request: Request) -> Response:
        return data(await runs.cancel(request.path_params["id"]))

    async def run_events(request: Request) -> Response:
        return data(await runs.events(request.path_params["id"], query(request, models.EventsQuery)))

    async def run_artifacts(request: Request) -> Response:
        return data(await runs.artifacts(request.path_params["id"]))

    async def run_artifact_content(request: Request) -> Response:
        path = models.parse(ArtifactQuery, dict(request.query_params)).path
        content = await runs.artifact_bytes(request.path_params["id"], path)
        return Response(content, media_type="application/octet-stream")

    table = [
        ("/api/v1/health", health, ["GET"]),
        ("/api/v1/sandboxes", sandbox_create, ["POST"]),
        ("/api/v1/sandboxes", sandbox_list, ["GET"]),
        ("/api/v1/sandboxes/{id}", sandbox_get, ["GET"]),
        ("/api/v1/sandboxes/{id}", sandbox_delete, ["DELETE"]),
        ("/api/v1/agent-runs", run_create, ["POST"]),
        ("/api/v1/agent-runs", run_list, ["GET"]),
        ("/api/v1/agent-runs/{id}", run_get, ["GET"]),
        ("/api/v1/agent-runs/{id}/cancel", run_cancel, ["POST"]),
        ("/api/v1/agent-runs/{id}/events", run_events, ["GET"]),
        ("/api/v1/agent-runs/{id}/artifacts", run_artifacts, ["GET"]),
        ("/api/v1/agent-runs/{id}/artifacts/content", run_artifact_content, ["GET"]),
    ]
    routes = [Route(path, guarded(fn), methods=methods) for path, fn, methods in table]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})
    return app


class WaitQuery(models.Input):
    wait: float = Field(default=0, ge=0, le=3600)
    """Seconds to wait for the run to end before answering (0: answer at once)."""


class ArtifactQuery(models.Input):
    path: str


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(errors.NotFound("route", request.url.path))


class MethodNotAllowed(errors.InvalidInput):
    code = "method_not_allowed"
    http_status = 405


async def _not_allowed(request: Request, exc: Exception) -> Response:
    resp = error_response(MethodNotAllowed("method", f"{request.method} is not allowed on {request.url.path}"))
    if isinstance(exc, HTTPException) and exc.headers:
        resp.headers.update(exc.headers)
    return resp
